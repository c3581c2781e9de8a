"""Connect, run one verb, map the outcome to an exit status scripts can rely on.

0: done. 1: the operation failed (no such execution, a closed token, a query that failed)
or the execution it waited for failed, was cancelled or terminated, or a wait timed out.
2: usage (bad JSON, a bad filter) or the connection (bad URL, refused credentials, no answer).
Errors are one line on stderr: ``perdure: <code>: <message>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from perdure.client import Client
from perdure.runtime.connect_options import ConnectOptions
from perdure.runtime.errors import ConfigurationError, ConnectionLost, PerdureError
from perdure.runtime.settings import Settings
from perdure.runtime.urls import redact_url

from . import bulk, verbs
from .output import print_error
from .verbs import UsageError

OK, FAILED, USAGE = 0, 1, 2


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `perdure list | head`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again (Python's signal docs, SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _run(args: argparse.Namespace) -> int:
    try:
        verbs.check_usage(args)
        settings = Settings.from_env(
            url=args.url,
            namespace=args.namespace,
            connect_timeout=args.connect_timeout,
            connect=ConnectOptions.from_args(args),
        )
        client = await Client.connect(
            settings.url,
            namespace=settings.namespace,
            options=settings.connect,
            connect_timeout=settings.connect_timeout,
        )
    except UsageError as exc:
        print_error(f"usage: {exc}")
        return USAGE
    except PerdureError as exc:
        print_error(f"{exc.code}: {redact_url(str(exc))}")
        return USAGE
    try:
        if bulk.is_bulk(args):
            return await bulk.run(client, args)
        return await verbs.run(client, args)
    except UsageError as exc:
        print_error(f"usage: {exc}")
        return USAGE
    except (ConfigurationError, ConnectionLost) as exc:
        print_error(f"{exc.code}: {redact_url(str(exc))}")
        return USAGE
    except PerdureError as exc:
        print_error(f"{exc.code}: {exc}")
        return FAILED
    except TimeoutError as exc:
        print_error(f"timeout: {exc}")
        return FAILED
    finally:
        await client.close()
