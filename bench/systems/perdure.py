"""Perdure itself, as one more system in the table.

>>> PERDURE: NOT YET WIRED. <<<

To wire it (left to the engine's author):
1. write bench/peers/perdure_peer.py: a `common.Driver` subclass (see dbos_peer.py for the
   smallest example) whose setup() starts a nats-server in the workdir it is given
   (`self.servers.start(...)`, so it is always stopped) and a Perdure runtime, and whose
   wf1/wf10/sleep_probe/start_ballast/async_completion/heartbeats/replay use the public
   API (`Client.start`, `handle.result()`, `client.complete_activity`, ...);
2. here, turn Perdure into a PeerScript that runs that script with the project's own
   interpreter: delete `setup`/`run` below and keep

       class Perdure(PeerScript):
           name = "perdure"
           script = "perdure_peer.py"

           def python(self) -> Path:
               return Path(sys.executable)  # the project venv: perdure is installed there

           def setup(self) -> None:
               ...  # e.g. check `import perdure` works in that interpreter
"""

from __future__ import annotations

from typing import Any

from .base import RunConfig, System, Unavailable


class Perdure(System):
    name = "perdure"

    def setup(self) -> None:
        raise Unavailable("not yet wired: see bench/systems/perdure.py")

    def run(self, cfg: RunConfig) -> dict[str, Any]:
        raise Unavailable("not yet wired: see bench/systems/perdure.py")
