"""The ReplayLoop: an asyncio event loop for workflow code that never runs freely.

Workflow code is ordinary asyncio (``gather``, ``wait``, ``wait_for``, ``sleep``, tasks,
events), but it runs on this loop, which only *schedules*: the execution actor applies a
step's inputs and then calls ``run_ready()``, which runs callbacks until nothing is ready.
``time()`` is the step's recorded time, and ``call_at``/``call_later`` become durable timers
through the instance, so ``asyncio.sleep(3600)`` is a timer that survives crashes.

The loop owns its tasks (a strong set, so a task awaiting a future nobody else holds is not
collected mid-run) and the async generators workflow code starts (asyncgen hooks installed
while workflow code runs, so the outer loop never tracks, finalizes or ``aclose()``s them).
``abandon()`` drops all of them without running any of their code (see ``abandon.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import weakref
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from perdure.runtime.errors import PerdureError

from . import abandon

if TYPE_CHECKING:
    from .instance import WorkflowInstance

log = structlog.get_logger("perdure.workflow")
T = TypeVar("T")


class TimerScheduler(Protocol):
    def start_timer(self, handle: asyncio.TimerHandle) -> None: ...
    def cancel_timer(self, handle: asyncio.TimerHandle) -> None: ...


class Evicted(BaseException):
    """Raised by workflow calls made while an evicted instance's coroutines are closed (only
    where ``abandon`` is not supported): the command is dropped. A ``BaseException``, so
    ``except Exception`` in workflow code does not swallow it."""


class ReplayLoop(asyncio.AbstractEventLoop):
    def __init__(self, instance: WorkflowInstance) -> None:
        self.instance = instance
        self.now = 0.0
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._closed = False
        self.abandoned = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._roots: list[Any] = []  # what abandon() drops, kept until it is done

    # ---------------------------------------------------------------- scheduling

    def time(self) -> float:
        return self.now

    def call_soon(  # type: ignore[override]  # the callbacks' types are not checked here
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]  # the callbacks' types are not checked here
        self, delay: float, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.TimerHandle:
        return self.call_at(self.now + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]  # the callbacks' types are not checked here
        self, when: float, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        if when <= self.now:
            # A timer already due is just "soon"; a durable timer would only add a round trip.
            self._ready.append(handle)
        else:
            handle._scheduled = True  # type: ignore[attr-defined]  # so TimerHandle.cancel() tells us
            self.instance.start_timer(handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if handle._scheduled:  # type: ignore[attr-defined]
            self.instance.cancel_timer(handle)

    def fire(self, handle: asyncio.TimerHandle) -> None:
        handle._scheduled = False  # type: ignore[attr-defined]
        if not handle.cancelled():
            self._ready.append(handle)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]  # the callbacks' types are not checked here
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None, context: Context | None = None
    ) -> asyncio.Task[T]:
        if self.abandoned:
            coro.close()
            raise Evicted("the workflow instance was evicted")
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        # A workflow blocked on a durable await is dropped when its actor is evicted and
        # rebuilt by replay later: a pending task being collected is normal here, not a bug.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ async generators

    def _asyncgen_firstiter(self, agen: Any) -> None:
        self._asyncgens.add(agen)

    def _asyncgen_finalizer(self, agen: Any) -> None:
        """A workflow async generator was collected while suspended. Live, close it on this
        loop, as asyncio does on its own (its ``finally`` runs in the workflow's next step);
        abandoned, do nothing: it is then freed without running any of its code."""
        self._asyncgens.discard(agen)
        if not self.abandoned:
            self.create_task(agen.aclose(), name="aclose")

    # ------------------------------------------------------------------ teardown

    def abandon(self) -> None:
        """Drop every task and async generator of the workflow without running its code.

        Must not be called while ``run_ready()`` runs (the instance defers it). Where
        ``abandon`` is not supported, the coroutines are closed instead, with every workflow
        call refused (``Evicted``): their ``finally`` blocks run, but no command is kept.
        Interrupted (a poke for a step past its budget), it can be called again to finish.
        """
        if self._closed:
            return
        if not self.abandoned:
            tasks = [task for task in self._tasks if not task.done()]
            self._roots = [task.get_coro() for task in tasks] + list(self._asyncgens)
            self.abandoned = True
            self._ready.clear()
            self._tasks.clear()
            self._asyncgens = weakref.WeakSet()
        if abandon.supported():
            abandon.abandon(self._roots)  # marks what is still open: again is harmless
        else:
            with _Running(self):
                for root in self._roots:
                    _close_quietly(root)
        self._roots = []
        self._closed = True

    def detach(self) -> None:
        """Let go of the instance, torn down (``abandon`` first): the two point at each other,
        and a cycle waits for the cyclic garbage collector, whose collections stall the
        runtime (``WorkflowInstance._tear_down``). Nothing of the workflow runs here after."""
        self.__dict__.pop("instance", None)

    def __del__(self) -> None:
        """A safety net for an instance dropped without ``evict()``: when the garbage
        collector finalizes the loop before the coroutines it holds (it finalizes a cycle in
        the order its objects were made, and the loop is made first), they are abandoned
        here, so their own finalizers find them finished and run no workflow code. Owners
        evict on purpose; this only covers one that forgot."""
        if not self._closed and abandon.supported():
            with contextlib.suppress(Exception):
                self.abandoned = True
                roots = [task.get_coro() for task in self._tasks if not task.done()]
                abandon.abandon(roots + list(self._asyncgens))
                self._closed = True

    def run_in_workflow(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` as workflow code: a condition's predicate may use the workflow API."""
        with _Running(self):
            return fn()

    def run_ready(self) -> None:
        """Run callbacks until none is ready: the workflow is blocked on something durable."""
        with _Running(self):
            self._run_ready()

    def run_until_blocked(self, recheck: Callable[[], bool]) -> None:
        """Run callbacks until none is ready, then ``recheck()`` (a condition's predicates)
        and go on while it made more code ready; one running-loop switch for the step."""
        with _Running(self):
            self._run_ready()
            while recheck():
                self._run_ready()

    def _run_ready(self) -> None:
        ready = self._ready
        while ready:
            handle = ready.popleft()
            if not handle.cancelled():
                handle._run()

    # ------------------------------------------------------------------- plumbing

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, PerdureError) and exc.code == "workflow.nondeterministic":
            return
        instance: WorkflowInstance | None = getattr(self, "instance", None)  # None once detached
        if instance is None or instance.replaying:
            return
        log.error(
            "workflow.callback_error",
            execution_id=instance.execution_id,
            message=context.get("message"),
            error=repr(exc) if exc else None,
        )

    def get_exception_handler(self) -> None:
        return None

    # Anything that would do I/O or run freely is refused with a clear message.
    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "workflow code must be deterministic: do I/O in an activity, not on the workflow loop"
        )

    run_forever = run_until_complete = stop = _refuse
    run_in_executor = getaddrinfo = create_connection = create_server = _refuse  # type: ignore[assignment]
    subprocess_exec = subprocess_shell = add_reader = add_writer = sock_connect = _refuse  # type: ignore[assignment]


class _Running:
    """Make ``loop`` the thread's running loop while workflow code steps.

    This is the one place we use private asyncio API (as the Temporal SDK does): with it,
    ``asyncio.get_running_loop()``, futures, tasks, ``asyncio.Event`` and friends inside
    workflow code bind to the replay loop. The outer (uvloop) loop is restored afterwards;
    nothing of the outer loop runs in between, since this is a plain synchronous call.
    A class rather than ``@contextmanager``: it is entered at least once per step, and a
    generator-based one costs a generator and four calls more each time.
    """

    __slots__ = ("_hooks", "_loop", "_outer")

    def __init__(self, loop: ReplayLoop) -> None:
        self._loop = loop

    def __enter__(self) -> None:
        loop = self._loop
        self._outer = asyncio.events._get_running_loop()
        self._hooks = sys.get_asyncgen_hooks()
        asyncio.events._set_running_loop(loop)
        sys.set_asyncgen_hooks(firstiter=loop._asyncgen_firstiter, finalizer=loop._asyncgen_finalizer)

    def __exit__(self, *exc: object) -> None:
        sys.set_asyncgen_hooks(*self._hooks)
        asyncio.events._set_running_loop(self._outer)


def _close_quietly(obj: Any) -> None:
    """Close a coroutine or async generator of an evicted instance; what its ``finally``
    blocks raise (``Evicted`` for any workflow call) is nobody's business any more."""
    try:
        if hasattr(obj, "aclose"):
            obj.aclose().send(None)
        else:
            obj.close()
    except BaseException:  # teardown of code that is no longer wanted
        pass


def current_instance() -> WorkflowInstance | None:
    """The workflow instance whose code is running now, or None outside workflow code."""
    loop = asyncio.events._get_running_loop()
    if not isinstance(loop, ReplayLoop):
        return None
    if loop.abandoned:
        raise Evicted("the workflow instance was evicted")
    return loop.instance


def require_instance(what: str) -> WorkflowInstance:
    instance = current_instance()
    if instance is None:
        raise RuntimeError(f"{what} can only be called from workflow code")
    return instance
