"""The systems bench/run.py measures, in table order. Each is a small adapter (base.System).

The floor runs first: it is the reference every other column is read against.
"""

from __future__ import annotations

from .base import RunConfig, System, Unavailable
from .dbos import Dbos
from .floor import Floor
from .perdure import Perdure
from .restate import Restate
from .temporal import Temporal

PEERS: list[System] = [Temporal(), Restate(), Dbos()]

# ---- PERDURE REGISTRATION ------------------------------------------------------------
# Perdure is measured in the same run as the peers; its adapter lives in
# bench/systems/perdure.py (a stub until the engine is wired in).
PERDURE: System = Perdure()
# ---------------------------------------------------------------------------------------

SYSTEMS: list[System] = [Floor(), PERDURE, *PEERS]

__all__ = ["PEERS", "PERDURE", "SYSTEMS", "RunConfig", "System", "Unavailable"]
