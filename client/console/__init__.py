"""perdure.client.console: the web console, a client of the namespace like any service.

Imported only by ``perdure console`` and ``perdure worker --console-port`` (it needs the
``perdure[console]`` extra: Starlette, uvicorn, Jinja2); ``import perdure.client`` loads none
of it.
"""

from .command import run_console, start_for_worker
from .pages import create_app
from .server import DEFAULT_PORT, ConsoleServer

__all__ = ["DEFAULT_PORT", "ConsoleServer", "create_app", "run_console", "start_for_worker"]
