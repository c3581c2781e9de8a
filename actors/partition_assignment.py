"""Which live runtime gets which inbox partition: the same answer on every runtime.

Each runtime computes the assignment from the membership alone, without talking to the
others (``ownership.py`` then claims its share through leases); a joining or leaving runtime
moves little more than its share.
"""

from __future__ import annotations

import hashlib


def _score(member: str, partition: int) -> int:
    # A real hash: FNV-1a over "<member>/<partition>" leaves the suffix badly mixed, and with
    # names that differ in one character one member used to win 10 partitions of 12.
    digest = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(members: list[str], partitions: int) -> dict[int, str]:
    """Rendezvous hashing with bounded loads: the same answer on every runtime.

    Every (member, partition) pair gets a score; pairs are taken best first, and a
    partition goes to the member of its best pair that still has room. Room is
    ``partitions // members`` each, plus one for the first ``partitions % members`` members
    to fill up, so the loads differ by at most one.
    """
    ordered = sorted(set(members))
    if not ordered:
        return {}
    base, extra = divmod(partitions, len(ordered))
    load = dict.fromkeys(ordered, 0)
    out: dict[int, str] = {}
    pairs = sorted(((_score(m, p), m, p) for m in ordered for p in range(partitions)), reverse=True)
    for _, member, partition in pairs:
        if partition in out:
            continue
        n = load[member]
        if n < base or (n == base and extra > 0):
            if n == base:
                extra -= 1
            load[member] = n + 1
            out[partition] = member
            if len(out) == partitions:
                break
    return out
