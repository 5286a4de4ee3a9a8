"""The fleet judge's /metrics: its last pass's verdicts as Prometheus series, which the Grafana
job dashboard (dashboards/jobs.dashboard.py) draws — each rank's utilization and waiting over the
judge's window, the straggler with its own cause, the job's verdict — and the judge's own health.

The verdict is made once, by the judge, and these series are how Prometheus and Grafana see it:
no rule re-derives it from the agents' series. The workload's name is the label ``job``, as on the
agents' series, so Prometheus stores it as ``exported_job`` beside the scrape job. Scraping only
renders the last pass; it never queries the database.
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from flopwatch.judge.jobs import JobVerdict

RANK_LABELS = ["job", "rank", "host", "gpu"]


class JobExporter:
    """A prometheus-client custom collector over the judge's last pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verdicts: Sequence[JobVerdict] = ()
        self._last_pass: tuple[float, float, bool] | None = None  # when, query seconds, history read

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    @property
    def verdicts(self) -> Sequence[JobVerdict]:
        return self._verdicts

    def update(self, now: float, verdicts: Sequence[JobVerdict] | None, query_seconds: float) -> None:
        """A pass's verdicts; None where the history could not be read (the last ones are kept)."""
        with self._lock:
            if verdicts is not None:
                self._verdicts = tuple(verdicts)
            self._last_pass = (now, query_seconds, verdicts is not None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            verdicts, last_pass = self._verdicts, self._last_pass
        verdict = GaugeMetricFamily("flopwatch_job_verdict", "1 for each multi-GPU job's verdict in the judge's "
                                    "last pass (straggler, communication_bound, healthy, unknown) and the cause "
                                    "that routes its page.", labels=["job", "verdict", "cause"])
        utilization = GaugeMetricFamily("flopwatch_job_rank_utilization_ratio", "A rank's mean utilization over "
                                        "the judge's window (absent while the rank is unknown).", labels=RANK_LABELS)
        waiting = GaugeMetricFamily("flopwatch_job_rank_waiting_ratio", "Share of a rank's diagnosed ticks over the "
                                    "judge's window that waited in collectives (communication_bound).",
                                    labels=RANK_LABELS)
        straggler = GaugeMetricFamily("flopwatch_job_straggler", "1 for each rank the judge names as holding its "
                                      "job back, with the rank's own cause.", labels=RANK_LABELS + ["cause"])
        held = GaugeMetricFamily("flopwatch_job_held_gpu_seconds", "GPU-seconds the job's ranks waited in "
                                 "collectives over the judge's window.", labels=["job"])
        for v in verdicts:
            verdict.add_metric([v.job, v.verdict, v.cause], 1)
            held.add_metric([v.job], v.held_gpu_seconds)
            for r in v.ranks:
                labels = [v.job, "" if r.rank is None else str(r.rank), r.host, str(r.gpu)]
                if r.state != "unknown" and r.utilization is not None:
                    utilization.add_metric(labels, r.utilization)
                if r.waiting_share is not None:
                    waiting.add_metric(labels, r.waiting_share)
                if r in v.stragglers:
                    straggler.add_metric(labels + [r.cause or "unknown"], 1)
        yield from (verdict, utilization, waiting, straggler, held)
        if last_pass is not None:
            when, query_seconds, read = last_pass
            yield GaugeMetricFamily("flopwatch_judge_last_pass_timestamp_seconds",
                                    "When the judge's last pass ran (Unix time).", value=when)
            yield GaugeMetricFamily("flopwatch_judge_query_seconds",
                                    "Seconds the last pass's queries of the history took.", value=query_seconds)
            yield GaugeMetricFamily("flopwatch_judge_history_up",
                                    "1 if the last pass read the history, 0 if the database failed.", value=int(read))
