"""UnhostedWork: work items of an activity that no runtime consumes are reported, not silent.

A workflow may call an activity that no running runtime hosts (not deployed yet, a typo in
a deployment, a runtime that was removed). Its work items wait on ``<ns>.work.<activity>``
for a runtime that hosts it, which is what should happen when one is deployed later, so
they are not dead-lettered: the attempt's ``timeout``/``schedule_to_close`` (if any) bound
the workflow's wait, and a deployment picks the items up without an operator. What must not
happen is silence: every ``CHECK_INTERVAL`` each runtime looks at the work stream, and an
activity with items waiting and no consumer asking for them (no consumer at all, or one
with no pull request outstanding and nothing in progress) is logged once as
``activity.unhosted`` with the number waiting, and again only after it was picked up.
"""

from __future__ import annotations

import asyncio

import structlog

from perdure.runtime.errors import PerdureError
from perdure.runtime.naming import Names
from perdure.runtime.nats_client import Connection
from perdure.runtime.nats_inspect import consumer_load, subject_counts

log = structlog.get_logger("perdure.activity")

CHECK_INTERVAL = 10.0  # seconds: a cheap look (one stream info, one consumer info per activity waiting)


class UnhostedWork:
    def __init__(self, conn: Connection, names: Names) -> None:
        self._conn = conn
        self._names = names
        self.reported: set[str] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                await self.check()
            except PerdureError as exc:
                log.debug("activity.unhosted_check_failed", error=str(exc))

    async def check(self) -> set[str]:
        """Activities with work waiting that nobody consumes (each logged once)."""
        names = self._names
        counts = await subject_counts(self._conn, names.work_stream, names.work_wildcard)
        unhosted: set[str] = set()
        for subject, pending in counts.items():
            activity = subject.rsplit(".", 1)[1]
            load = await consumer_load(self._conn, names.work_stream, names.work_consumer(activity))
            if pending and (load is None or (load.waiting == 0 and load.ack_pending == 0)):
                unhosted.add(activity)
                if activity not in self.reported:
                    log.warning("activity.unhosted", activity=activity, pending=pending)
        self.reported = unhosted
        return unhosted
