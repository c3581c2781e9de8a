"""perdure.client.console: the web console, a client of the namespace like any service.

Imported only by ``perdure console`` and ``perdure worker --console-port`` (it needs the
``perdure[console]`` extra: Starlette, uvicorn, Jinja2); ``import perdure.client`` loads none
of it.
"""

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    from perdure.runtime.errors import ConfigurationError

    raise ConfigurationError(
        f"the console needs the perdure[console] extra ({exc.name} is missing): "
        "pip install 'perdure[console]'"
    ) from None

from .command import run_console, start_for_worker
from .pages import create_app
from .server import DEFAULT_PORT, ConsoleServer

__all__ = ["DEFAULT_PORT", "ConsoleServer", "create_app", "run_console", "start_for_worker"]
