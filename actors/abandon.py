"""Abandon a suspended coroutine: drop it without running any more of its code.

An evicted workflow instance is a set of coroutines suspended at durable awaits. Python
closes a suspended coroutine when it is collected, by throwing ``GeneratorExit`` into it,
so its ``finally`` blocks and ``except BaseException`` handlers run wherever the collector
happens to run: during another execution's step (where a workflow call in that ``finally``
records a command in the *other* execution), on the outer event loop (``aclose()`` of an
async generator: "asynchronous generator is already running"), or at interpreter exit.
Measured before this module: every evicted instance ran its ``finally`` blocks, an activity
called there ran directly in the runtime, and a SIGTERM printed one ``aclose()`` traceback
per open async generator (tests/test_teardown.py). The workflow never reached those lines:
its history says it is still waiting, and the run that resumes it runs them for real.

Temporal's SDK cancels the tasks of an evicted run and drops the commands their ``finally``
blocks issue, but a plain side effect there still happens. We run no user code at all:
CPython itself drops a suspended frame without unwinding it when nothing could observe the
difference (3.12+ ``gen_close`` sets the frame state to "completed" and clears the locals);
``abandon()`` sets the same state on each coroutine, generator and async generator of an
evicted instance, after which ``close()`` is a no-op and deallocation only releases locals.
The byte to write and its offset are found by probing sample coroutines, not assumed, and a
self-test checks the whole technique once; where it does not hold (another interpreter or
layout), ``supported()`` is False and the caller falls back to closing the coroutines with
every workflow call refused (the Temporal way).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import types
import weakref
from collections.abc import AsyncGenerator, Generator, Iterator
from typing import Any


class _Park:
    def __await__(self) -> Generator[None, None, None]:
        yield


async def _coro(flag: list[int]) -> None:
    try:
        await _Park()
    finally:
        flag.append(1)


def _gen(flag: list[int]) -> Generator[None, None, None]:
    try:
        yield
    finally:
        flag.append(1)


async def _agen(flag: list[int]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        flag.append(1)


# CPython's frame states (Include/internal/pycore_frame.h, 3.11 to 3.13): created and
# suspended are negative, executing 0, "completed" 1 (finished, locals not yet released:
# deallocation releases them), "cleared" 4 (locals released). Only "cleared" can be seen
# from Python (a coroutine closed before it started), so the probe checks that the byte
# it found holds it, and writes "completed"; the self-test then checks that an abandoned
# coroutine's locals are released and that its ``finally`` did not run.
_COMPLETED, _CLEARED = 1, 4


def _state_offset(samples: list[tuple[Any, Any, Any]]) -> int | None:
    """Offset of the frame-state byte: the one byte that differs between a created, a closed
    and a suspended object in every sample, and holds the known values."""
    offsets: set[int] | None = None
    for created, closed, suspended in samples:
        size = type(created).__basicsize__
        a, b, c = (ctypes.string_at(id(o), size) for o in (created, closed, suspended))
        found = {
            i
            for i in range(2 * ctypes.sizeof(ctypes.c_void_p), size)
            if b[i] == _CLEARED and a[i] >= 0x80 and c[i] >= 0x80 and a[i] != c[i]  # negative, distinct
        }
        offsets = found if offsets is None else offsets & found
    if offsets is None or len(offsets) != 1:
        return None
    return next(iter(offsets))


def _samples(kind: type) -> list[tuple[Any, Any, Any]]:
    out: list[tuple[Any, Any, Any]] = []
    created: Any
    completed: Any
    suspended: Any
    for _ in range(2):
        if kind is types.CoroutineType:
            created, completed, suspended = _coro([]), _coro([]), _coro([])
            completed.close()
            suspended.send(None)
        elif kind is types.GeneratorType:
            created, completed, suspended = _gen([]), _gen([]), _gen([])
            completed.close()
            next(suspended)
        else:
            created, completed, suspended = _agen([]), _agen([]), _agen([])
            _drive(completed.aclose())
            _drive(suspended.asend(None))
        out.append((created, completed, suspended))
    return out


def _drive(awaitable: Any) -> None:
    with contextlib.suppress(StopIteration):
        awaitable.send(None)


def _probe() -> dict[type, int]:
    if sys.implementation.name != "cpython":
        return {}  # id() is an address, and objects have CPython's layout, only there
    found: dict[type, int] = {}
    for kind in (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType):
        samples = []
        try:
            samples = _samples(kind)
            offset = _state_offset(samples)
        except Exception:
            offset = None
        finally:
            for created, _, suspended in samples:
                for obj in (created, suspended):
                    if isinstance(obj, types.AsyncGeneratorType):
                        _drive(obj.aclose())
                    else:
                        obj.close()
        if offset is None:
            return {}
        found[kind] = offset
    return found


_STATE = _probe()


def _mark(obj: Any) -> None:
    ctypes.c_uint8.from_address(id(obj) + _STATE[type(obj)]).value = _COMPLETED


class _Local:
    """A local of the self-test's samples: it must be released when they are dropped."""


def _self_test() -> bool:
    """Abandoned samples of each kind must read as closed, release their locals when dropped,
    and run nothing (their ``finally`` appends to ``flag``)."""
    if not _STATE:
        return False
    flag: list[int] = []
    coro, gen, agen = _coro(flag), _gen(flag), _agen(flag)
    coro.send(None)
    next(gen)
    _drive(agen.asend(None))
    abandon([coro, gen, agen])
    ok = _finished(coro.send, RuntimeError)  # "cannot reuse already awaited coroutine"
    ok = ok and _finished(gen.send, StopIteration)
    ok = ok and _finished(agen.asend(None).send, StopAsyncIteration)
    coro.close()
    gen.close()
    _drive(agen.aclose())
    del coro, gen, agen
    # The locals of an abandoned frame are released on deallocation (no leak).
    holder = _Local()
    probe = weakref.ref(holder)
    held = _holding(holder, flag)
    del holder
    held.send(None)
    abandon([held])
    del held
    return ok and flag == [] and probe() is None


def _finished(resume: Any, expected: type[BaseException]) -> bool:
    """Resuming an abandoned object must say it is finished."""
    try:
        resume(None)
    except expected:
        return True
    except BaseException:
        return False
    return False


async def _holding(value: _Local, flag: list[int]) -> None:
    try:
        await _Park()
    finally:
        flag.append(id(value))


def supported() -> bool:
    """Whether ``abandon`` may be used here (probed and self-tested once, at import)."""
    return _SUPPORTED


def _chain(obj: Any) -> Iterator[Any]:
    """``obj`` and what it is suspended in, innermost last (a coroutine awaiting a coroutine
    awaiting a generator-based awaitable...)."""
    seen: set[int] = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj, types.CoroutineType):
            yield obj
            obj = obj.cr_await
        elif isinstance(obj, types.GeneratorType):
            yield obj
            obj = obj.gi_yieldfrom
        elif isinstance(obj, types.AsyncGeneratorType):
            yield obj
            obj = obj.ag_await
        else:
            return


def abandon(roots: list[Any]) -> None:
    """Mark every suspended (or never started) coroutine reachable from ``roots`` through
    what it awaits as finished, so that no code of theirs ever runs again. The caller makes
    sure none of them is running (``supported()`` must be True)."""
    objects = [obj for root in roots for obj in _chain(root)]  # read every link before marking any
    for obj in objects:
        if _running(obj):
            raise RuntimeError(f"cannot abandon {obj!r}: it is running")
    for obj in objects:
        if _open(obj):
            _mark(obj)


_EXECUTING = 0


def _running(obj: Any) -> bool:
    """Its frame is executing (``ag_running`` cannot tell: it is also true for an async
    generator suspended in an ``await``)."""
    return ctypes.c_int8.from_address(id(obj) + _STATE[type(obj)]).value == _EXECUTING


def _open(obj: Any) -> bool:
    """Its frame is not released yet (created, suspended, or abandoned already)."""
    if isinstance(obj, types.CoroutineType):
        return obj.cr_frame is not None
    if isinstance(obj, types.GeneratorType):
        return obj.gi_frame is not None
    return obj.ag_frame is not None


_SUPPORTED = _self_test()
