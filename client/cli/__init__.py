"""``perdure start|result|describe|list|history|signal|query|cancel|terminate|complete|fail|
heartbeat|watch``: the client verbs on the command line.

Built on the public ``perdure.client.Client`` only (never ``perdure.actors``): ``parser``
declares the verbs, ``verbs`` runs one, ``bulk`` runs cancel/terminate/signal over a filter,
``output`` turns descriptions and histories into tables or JSON, ``main`` connects and maps
errors to exit statuses (0 ok, 1 the operation or the execution failed, 2 usage or connection).
"""

from .parser import VERBS, add_verbs

__all__ = ["VERBS", "add_verbs", "run"]


def run(args: object) -> int:
    """Run the verb ``args`` names (parsed by a parser ``add_verbs`` extended); exit status."""
    from .main import run as _run

    return _run(args)  # type: ignore[arg-type]
