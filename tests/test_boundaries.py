"""The client boundary: a service that imports ``perdure.client`` never loads the engine."""

from __future__ import annotations

import subprocess
import sys

import perdure

_PROBE = """
import sys
import perdure.client
from perdure import Client, PerdureError  # the facade too, for client names
loaded = sorted(m for m in sys.modules if m == "perdure.actors" or m.startswith("perdure.actors."))
print(",".join(loaded))
"""


def test_importing_the_client_loads_no_actor_module() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"perdure.client loaded engine modules: {out.stdout.strip()}"


def test_the_facade_still_gives_every_public_name() -> None:
    for name in perdure.__all__:
        assert getattr(perdure, name) is not None, name
    assert perdure.workflow.__module__.startswith("perdure.actors")
    try:
        perdure.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
