"""``@workflow`` and ``@activity``: what user code declares, and what calling it means.

Inside a workflow, calling an activity schedules it (a durable command) and awaiting the
call gives its result. Outside a workflow, calling an activity runs the function directly,
which is handy in unit tests.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from perdure.runtime.codec import PayloadCodec
from perdure.runtime.errors import ConfigurationError
from perdure.runtime.events import DEFAULT_RETRY, ActivityOptions, RetryPolicy
from perdure.runtime.naming import check_name

if TYPE_CHECKING:
    from .handles import ActivityHandle, ChildHandle

InputT = TypeVar("InputT")
R = TypeVar("R")

Duration = timedelta | float | int


def seconds(value: Duration | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class _Signature:
    """What a user function takes: an optional input, an optional ActivityContext."""

    def __init__(self, fn: Callable[..., Any], *, allow_ctx: bool) -> None:
        from .context import ActivityContext

        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        self.takes_ctx = False
        if (
            allow_ctx
            and params
            and (hints.get(params[-1].name) is ActivityContext or params[-1].name == "ctx")
        ):
            self.takes_ctx = True
            params = params[:-1]
        if len(params) > 1:
            raise ConfigurationError(
                f"{fn.__qualname__} takes {len(params)} inputs; Perdure functions take one input "
                "(use a msgspec Struct or dataclass to carry several values)"
            )
        self.takes_input = bool(params)
        self.input_type: Any = hints.get(params[0].name, Any) if params else type(None)
        result = hints.get("return", Any)
        self.result_type: Any = Any if result is None and "return" not in hints else result
        if self.result_type is type(None):
            self.result_type = Any


class ActivityDefinition(Generic[InputT, R]):
    """An activity: a side-effecting step, run by activity actors from its work subject."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None, options: ActivityOptions) -> None:
        self.fn = fn
        self.name = check_name("activity", name or fn.__name__)
        self.options = options
        sig = _Signature(fn, allow_ctx=True)
        self.takes_input, self.takes_ctx = sig.takes_input, sig.takes_ctx
        self.input_type, self.result_type = sig.input_type, sig.result_type
        self.input_codec = PayloadCodec(self.input_type)
        self.result_codec = PayloadCodec(self.result_type)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __repr__(self) -> str:
        return f"<activity {self.name}>"

    def merged_options(
        self,
        *,
        timeout: Duration | None = None,
        heartbeat: Duration | None = None,
        schedule_to_close: Duration | None = None,
        retry: RetryPolicy | None = None,
        schedule_to_start: Duration | None = None,
    ) -> ActivityOptions:
        """Per-call options override the declared ones: the workflow decides how long it waits.
        The retry policy is recorded resolved (``DEFAULT_RETRY`` when none is declared), so what
        history says never depends on a default."""
        base = self.options
        policy = retry if retry is not None else base.retry
        return ActivityOptions(
            timeout=seconds(timeout) if timeout is not None else base.timeout,
            heartbeat=seconds(heartbeat) if heartbeat is not None else base.heartbeat,
            schedule_to_close=(
                seconds(schedule_to_close) if schedule_to_close is not None else base.schedule_to_close
            ),
            retry=policy.resolved() if policy is not None else DEFAULT_RETRY,
            schedule_to_start=(
                seconds(schedule_to_start) if schedule_to_start is not None else base.schedule_to_start
            ),
        )

    def __call__(
        self,
        input: InputT = None,  # type: ignore[assignment]
        *,
        timeout: Duration | None = None,
        heartbeat: Duration | None = None,
        schedule_to_close: Duration | None = None,
        retry: RetryPolicy | None = None,
        schedule_to_start: Duration | None = None,
    ) -> Awaitable[R]:
        from .replay_loop import current_instance

        instance = current_instance()
        if instance is None:
            return self._run_directly(input)
        handle = self.start(
            input,
            timeout=timeout,
            heartbeat=heartbeat,
            schedule_to_close=schedule_to_close,
            retry=retry,
            schedule_to_start=schedule_to_start,
        )
        return handle.result()

    def start(
        self,
        input: InputT = None,  # type: ignore[assignment]
        *,
        timeout: Duration | None = None,
        heartbeat: Duration | None = None,
        schedule_to_close: Duration | None = None,
        retry: RetryPolicy | None = None,
        schedule_to_start: Duration | None = None,
    ) -> ActivityHandle[R]:
        """Schedule the activity from a workflow and return a handle (result, progress)."""
        from .handles import ActivityHandle
        from .replay_loop import require_instance

        instance = require_instance(f"{self.name}.start()")
        raw = self.input_codec.check(input, what=f"input of activity {self.name!r}")
        options = self.merged_options(
            timeout=timeout,
            heartbeat=heartbeat,
            schedule_to_close=schedule_to_close,
            retry=retry,
            schedule_to_start=schedule_to_start,
        )
        return ActivityHandle(self, instance, raw, options)

    async def _run_directly(self, input: Any) -> R:
        if self.takes_ctx:
            raise ConfigurationError(
                f"activity {self.name!r} takes an ActivityContext: call it from a workflow, "
                "or call .fn(input, ctx) directly"
            )
        args = (input,) if self.takes_input else ()
        if self.is_async:
            return typing.cast(R, await self.fn(*args))
        return typing.cast(R, await asyncio.to_thread(self.fn, *args))

    async def complete(self, client: Any, token: str, result: R) -> None:
        """Typed shortcut for ``client.complete_activity``: checks ``result`` against the declared type."""
        raw = self.result_codec.check(result, what=f"result of activity {self.name!r}")
        await client.complete_activity(token, raw)


class WorkflowDefinition(Generic[InputT, R]):
    """A workflow: an async function whose every decision is recorded and replayed."""

    def __init__(
        self, fn: Callable[..., Awaitable[R]], *, name: str | None, signals: Mapping[str, Any] | None = None
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"workflow {fn.__qualname__} must be an async function")
        self.fn = fn
        self.name = check_name("workflow", name or fn.__name__)
        sig = _Signature(fn, allow_ctx=False)
        self.takes_input = sig.takes_input
        self.input_type, self.result_type = sig.input_type, sig.result_type
        self.input_codec = PayloadCodec(self.input_type)
        self.result_codec = PayloadCodec(self.result_type)
        # Declared signal types: a client holding this definition refuses a wrong payload
        # when sending, and ``wait_signal(name)`` decodes as this type by default.
        self.signal_codecs = {signal: PayloadCodec(type_) for signal, type_ in (signals or {}).items()}
        # Set in this process once a step of this workflow ran past the inline slice: its
        # steps hop to workflow threads from then on (actors/inline_steps.py).
        self.steps_in_threads = False
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"

    def __call__(self, input: InputT = None, *, id: str | None = None) -> ChildHandle[R]:  # type: ignore[assignment]
        """Inside a workflow: start this workflow as a child; awaiting the handle gives its result."""
        from .handles import ChildHandle
        from .replay_loop import require_instance

        instance = require_instance(f"calling workflow {self.name!r}")
        raw = self.input_codec.check(input, what=f"input of workflow {self.name!r}")
        return ChildHandle(self, instance, raw, id)


def activity(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout: Duration | None = None,
    heartbeat: Duration | None = None,
    schedule_to_close: Duration | None = None,
    retry: RetryPolicy | None = None,
    schedule_to_start: Duration | None = None,
) -> Any:
    """Declare an activity, with default timeouts and retry policy a workflow may override per
    call. Without ``retry``, failed attempts are retried with ``DEFAULT_RETRY`` (Temporal's
    defaults); ``RetryPolicy(maximum_attempts=1)`` says "no retry"."""
    options = ActivityOptions(
        timeout=seconds(timeout),
        heartbeat=seconds(heartbeat),
        schedule_to_close=seconds(schedule_to_close),
        retry=retry,
        schedule_to_start=seconds(schedule_to_start),
    )

    def wrap(f: Callable[..., Any]) -> ActivityDefinition[Any, Any]:
        return ActivityDefinition(f, name=name, options=options)

    return wrap(fn) if fn is not None else wrap


def define_workflow(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, signals: Mapping[str, Any] | None = None
) -> Any:
    def wrap(f: Callable[..., Any]) -> WorkflowDefinition[Any, Any]:
        return WorkflowDefinition(f, name=name, signals=signals)

    return wrap(fn) if fn is not None else wrap
