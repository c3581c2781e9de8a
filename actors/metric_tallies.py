"""Counters and histograms for the hot path, exposed through ``prometheus_client`` at scrape time.

``prometheus_client``'s own ``Counter.inc`` and ``Histogram.observe`` take a lock and check
their state on every call: with the handful a step does, measured at 1.5% of a runtime's CPU
per workflow. These are plain numbers, updated only from the event loop (steps, attempts'
ends and timers are all recorded there), and ``TallyCollector`` turns them into the same
metric families when ``/metrics`` is scraped, with the same names, help and buckets.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Tally:
    """A counter, optionally by label values (a child per combination, made on first use)."""

    __slots__ = ("children", "help", "labels", "name", "value")

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self.value = 0.0
        self.children: dict[tuple[str, ...], Tally] = {}

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def child(self, *values: str) -> Tally:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Tally(self.name, self.help)
        return child

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        if self.labels:
            for values, child in self.children.items():
                family.add_metric(list(values), child.value)
        else:
            family.add_metric([], self.value)
        return family


class Timings:
    """A histogram (cumulative ``le`` buckets at scrape time), optionally by label values."""

    __slots__ = ("bounds", "children", "counts", "help", "labels", "name", "total")

    def __init__(self, name: str, help: str, bounds: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.bounds = tuple(bounds)
        self.labels = tuple(labels)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: over every bound (+Inf)
        self.total = 0.0
        self.children: dict[tuple[str, ...], Timings] = {}

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: "le"
        self.total += value

    def child(self, *values: str) -> Timings:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Timings(self.name, self.help, self.bounds)
        return child

    def _buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        members = self.children.items() if self.labels else [((), self)]
        for values, member in members:
            family.add_metric(list(values), member._buckets(), member.total)
        return family


class TallyCollector(Collector):
    """Registered in a runtime's registry: its tallies and timings, read at scrape time."""

    def __init__(self, metrics: Sequence[Tally | Timings]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.family()


__all__ = ["Tally", "TallyCollector", "Timings"]
