"""A JetStream publish sent again until a copy decides: history appends (issue 10, item 12).

An append in flight to a stream's leader when that node dies is never answered: waiting out
the ack timeout (10 s) held the execution that long after a new leader was elected. So an
append unanswered after ``resend_after`` seconds is sent again, then every ``2 * resend_after``
seconds for ``resend_for`` seconds. The expected last sequence stores at most one copy, and
the server answers in the order sent, so the first copy *stored*, or a conflict (another
writer, or an earlier copy stored by a leader that died before answering: the caller
reloads and sees it), decides. A copy refused meanwhile (no leader yet: 503) or never
answered is not an answer while other copies may still be: only when none is outstanding
and the window is over does the last refusal become the outcome.

Cost on the hot path (every step appends): one small object and one heap push; the copies'
answers go through the connection's ack mux into ``answered``, and one timer for all
publishes (``ResendSchedule``) looks at the oldest at most four times per ``resend_after``
(copies go out up to a quarter interval late), instead of a timer,
a waiter future and its callbacks per append (measured: those were 4% of a runtime's CPU per
workflow).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from .errors import HistoryConflict


class ResentPublish:
    """One logical publish and its copies; ``fut`` resolves with the deciding answer."""

    __slots__ = (
        "data",
        "fut",
        "headers",
        "last_error",
        "next_send",
        "outstanding",
        "resend_after",
        "send_until",
        "subject",
    )

    def __init__(
        self,
        fut: asyncio.Future[Any],
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        *,
        now: float,
        resend_after: float,
        resend_for: float,
    ) -> None:
        self.fut = fut
        self.subject = subject
        self.data = data
        self.headers = headers
        self.resend_after = resend_after
        self.next_send: float | None = now + resend_after
        self.send_until = now + resend_for
        self.outstanding = 0  # copies sent and not answered
        self.last_error: BaseException | None = None

    def answered(self, outcome: Any) -> None:
        """A copy's answer: an ``Ack``, or the exception it got (refused, timed out)."""
        self.outstanding -= 1
        if self.fut.done():
            return  # an earlier copy decided
        if not isinstance(outcome, BaseException):
            self.fut.set_result(outcome)
        elif isinstance(outcome, HistoryConflict):
            self.fut.set_exception(outcome)
        else:
            self.last_error = outcome
            self.give_up_if_over()

    def give_up_if_over(self) -> None:
        """Fail with the last refusal once no copy is outstanding and none will be sent."""
        if self.next_send is None and self.outstanding <= 0 and not self.fut.done():
            error = self.last_error or TimeoutError(f"no copy of the publish to {self.subject} was answered")
            self.fut.set_exception(error)


SendCopy = Callable[[ResentPublish], Coroutine[Any, Any, None]]


class ResendSchedule:
    """The publishes that may need another copy, soonest first, and one timer for them all."""

    def __init__(self, send_copy: SendCopy) -> None:
        self._send_copy = send_copy
        self._heap: list[tuple[float, int, ResentPublish]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()  # copies being written (rare): owned here

    def add(self, publish: ResentPublish) -> None:
        assert publish.next_send is not None
        heapq.heappush(self._heap, (publish.next_send, next(self._order), publish))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(publish.next_send, self._due)

    def _due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, publish = heapq.heappop(heap)
            if publish.fut.done():
                continue  # the common case: answered long ago
            if now < publish.send_until:
                publish.next_send = now + 2 * publish.resend_after
                heapq.heappush(heap, (publish.next_send, next(self._order), publish))
                task = loop.create_task(self._send_copy(publish))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            else:
                publish.next_send = None  # no more copies: the outstanding ones decide
                publish.give_up_if_over()
        if heap:
            # Not before a quarter of the head's interval from now: under load, the head is
            # due every few hundred microseconds, and a timer each time would cost one per
            # publish; a copy sent up to a quarter interval late changes nothing.
            head = heap[0][2]
            self._timer = loop.call_at(max(heap[0][0], now + head.resend_after / 4), self._due)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._sending:
            task.cancel()
        self._heap.clear()


__all__ = ["ResendSchedule", "ResentPublish"]
