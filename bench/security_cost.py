"""What security costs: the 1-activity workflow's p50 plain, with TLS, with payload encryption
(AES-GCM), and with both, side by side with the raw JetStream floor (one publish awaited for
its ack) on the same servers (issue 12, "the bench records the cost of TLS and encryption").

    .venv/bin/python bench/security_cost.py [--n 300] [--warmup 30] [--out results.json]

Each configuration gets a nats-server of its own (file storage, loopback; TLS with
certificates made by ``trustme``, as tests/secure_nats.py does), one in-process runtime
(``Worker``) and a client in the same process, on uvloop when installed; starts run one
after another (start, then ``result()``), so the p50 is the latency of one workflow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # secure_nats

import nats

from perdure import Client, ConnectOptions, Settings, Worker, activity, workflow
from perdure.runtime.logs import configure
from perdure.runtime.payload_cipher import AesGcmKeys

from secure_nats import SecureServer, make_certificates, tls_block


@activity
async def add_one(n: int) -> int:
    return n + 1


@workflow
async def one_activity(n: int) -> int:
    return await add_one(n)


@dataclass
class Case:
    name: str
    tls: bool
    encrypted: bool


CASES = [
    Case("plain", tls=False, encrypted=False),
    Case("tls", tls=True, encrypted=False),
    Case("encrypted", tls=False, encrypted=True),
    Case("tls+encrypted", tls=True, encrypted=True),
]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def floor(url: str, ctx: ssl.SSLContext | None, n: int) -> float:
    """Median ms of one JetStream publish awaited for its ack (file storage)."""
    nc = await nats.connect(url, tls=ctx) if ctx else await nats.connect(url)
    js = nc.jetstream()
    stream = f"FLOOR{uuid.uuid4().hex[:6].upper()}"
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    payload = b"x" * 128
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await js.publish(f"{stream.lower()}.{i % 10}", payload)
        samples.append((time.perf_counter() - t0) * 1000)
    await js.delete_stream(stream)
    await nc.close()
    return statistics.median(samples)


async def workflow_latency(
    url: str, options: ConnectOptions, cipher: Any, n: int, warmup: int
) -> list[float]:
    namespace = "sec" + uuid.uuid4().hex[:8]
    settings = Settings(url=url, namespace=namespace, connect=options, payload_cipher=cipher, name=namespace)
    async with Worker([one_activity, add_one], settings=settings):
        client = await Client.connect(url, namespace=namespace, options=options, payload_cipher=cipher)
        try:
            samples = []
            for i in range(warmup + n):
                t0 = time.perf_counter()
                handle = await client.start(one_activity, i, id=f"w{i}")
                assert await handle.result(timeout=60) == i + 1
                if i >= warmup:
                    samples.append((time.perf_counter() - t0) * 1000)
            return samples
        finally:
            await client.close()


async def run_case(case: Case, tmp: Path, n: int, warmup: int) -> dict[str, Any]:
    certs = make_certificates(tmp / "certs")
    server = SecureServer(tmp, tls_block(certs) if case.tls else "", name=case.name.replace("+", "_")).start()
    try:
        options = ConnectOptions(tls_ca=str(certs.ca)) if case.tls else ConnectOptions()
        ctx = ssl.create_default_context(cafile=str(certs.ca)) if case.tls else None
        url = server.url.replace("nats://", "tls://") if case.tls else server.url
        cipher = AesGcmKeys({"bench": os.urandom(32)}) if case.encrypted else None
        floor_ms = await floor(url, ctx, max(n, 300))
        samples = await workflow_latency(url, options, cipher, n, warmup)
    finally:
        server.stop()
    return {
        "case": case.name,
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(percentile(samples, 0.9), 3),
        "floor_publish_ack_ms": round(floor_ms, 3),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    configure("WARNING")
    rows = []
    with tempfile.TemporaryDirectory(prefix="perdure-security-bench-") as tmp:
        for case in CASES:
            row = await run_case(case, Path(tmp) / case.name.replace("+", "_"), args.n, args.warmup)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["p50_ms"]
    print(f"\n{'case':<15} {'p50 ms':>8} {'vs plain':>9} {'p90 ms':>8} {'floor ms':>9}")
    for row in rows:
        extra = row["p50_ms"] - base
        print(
            f"{row['case']:<15} {row['p50_ms']:>8.2f} {extra:>+9.2f} {row['p90_ms']:>8.2f} "
            f"{row['floor_publish_ack_ms']:>9.3f}"
        )
    print(f"(load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="workflows measured per case")
    parser.add_argument("--warmup", type=int, default=30, help="workflows run first, not measured")
    parser.add_argument("--out", help="write the rows as JSON here")
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(main(arguments))
    if arguments.out:
        Path(arguments.out).write_text(json.dumps(result, indent=2))
