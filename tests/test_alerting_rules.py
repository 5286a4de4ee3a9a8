"""Which GPU pages for which cause, tick by tick (the pure part of the Alertmanager sink)."""

from __future__ import annotations

from dataclasses import dataclass

from flopwatch.alerting import MemoryOutbox, UnderutilizationAlerts, parse_target
from flopwatch.model import Finding, GpuFigures


@dataclass
class Gpu:
    figures: GpuFigures
    finding: Finding | None
    sample: object = None


def gpu(utilization: float | None, cause: str | None = None, index: int = 0) -> Gpu:
    figures = GpuFigures(
        index=index, uuid=f"GPU-{index}", timestamp=0.0, interval_seconds=1.0, source_quality="gpm",
        utilization=utilization, sm_occupancy=None, tensor_active=None, dram_active=None,
        fp32_active=None, fp64_active=None, fp16_active=None, flops_utilization=None,
        achieved_flops_per_second=None, dram_bytes_per_second=None, memory_turnover_per_second=None,
        power_watts=None, energy_joules=None, energy_joules_delta=None, sm_clock_ratio=None,
        memory_used_bytes=None, memory_total_bytes=80 * 2**30,
    )
    finding = Finding(cause, "page", 0.8, {}, f"fix {cause}") if cause else None
    return Gpu(figures, finding)


def tracker() -> UnderutilizationAlerts:
    return UnderutilizationAlerts(0.6, alert_after_seconds=120, static_labels={"host": "n1", "job": "flopwatch"},
                                  annotate=lambda g: {"advice": g.finding.advice if g.finding else ""})


def causes(alerts) -> list[str]:
    return [a.labels["cause"] for a in alerts]


def test_a_gpu_under_the_threshold_pages_only_after_alert_after_seconds():
    t = tracker()
    assert t.update(0, [gpu(0.1, "input_starved")]).started == []
    assert t.update(119, [gpu(0.1, "input_starved")]).started == []
    started = t.update(120, [gpu(0.1, "input_starved")]).started
    assert [a.labels for a in started] == [{
        "alertname": "GPUUnderutilized", "severity": "page", "cause": "input_starved",
        "gpu": "0", "uuid": "GPU-0", "host": "n1", "job": "flopwatch",
    }]
    assert started[0].starts_at == 120
    assert started[0].annotations == {"advice": "fix input_starved"}


def test_a_firing_alert_is_started_once():
    t = tracker()
    for now in (0, 120):
        t.update(now, [gpu(0.1, "input_starved")])
    assert t.update(121, [gpu(0.1, "input_starved")]).started == []
    assert causes(t.firing) == ["input_starved"]


def test_a_busy_tick_restarts_the_count():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(100, [gpu(0.9)])
    assert t.update(150, [gpu(0.1, "input_starved")]).started == []
    assert causes(t.update(270, [gpu(0.1, "input_starved")]).started) == ["input_starved"]


def test_a_healthy_gpu_never_pages():
    t = tracker()
    assert all(t.update(now, [gpu(0.95)]).started == [] for now in range(0, 600, 60))


def test_a_changed_cause_resolves_the_old_alert_and_fires_the_new():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(120, [gpu(0.1, "input_starved")])
    changes = t.update(130, [gpu(0.1, "held_idle")])
    assert causes(changes.resolved) == ["input_starved"]
    assert causes(changes.started) == ["held_idle"]


def test_a_gpu_back_to_work_resolves():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(120, [gpu(0.1, "input_starved")])
    assert causes(t.update(125, [gpu(0.8)]).resolved) == ["input_starved"]
    assert t.firing == []


def test_no_finding_under_the_threshold_pages_as_unknown():
    t = tracker()
    t.update(0, [gpu(0.1)])
    assert causes(t.update(120, [gpu(0.1)]).started) == ["unknown"]


def test_an_unreadable_gpu_neither_fires_nor_resolves():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(120, [gpu(0.1, "input_starved")])
    changes = t.update(130, [gpu(None)])
    assert (changes.started, changes.resolved) == ([], [])
    assert causes(t.firing) == ["input_starved"]


def test_each_gpu_pages_on_its_own():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved", 0), gpu(0.9, index=1)])
    started = t.update(120, [gpu(0.1, "input_starved", 0), gpu(0.2, "held_idle", 1)]).started
    assert [(a.labels["gpu"], a.labels["cause"]) for a in started] == [("0", "input_starved")]


def test_the_outbox_keeps_the_newest_message_per_alert_and_url():
    outbox = MemoryOutbox()
    outbox.put("am1", "GPU-0/input_starved", {"v": 1})
    outbox.put("am1", "GPU-0/input_starved", {"v": 2})
    outbox.put("am2", "GPU-0/input_starved", {"v": 2})
    assert outbox.pending("am1") == [("GPU-0/input_starved", {"v": 2})]
    outbox.done("am1", ["GPU-0/input_starved"])
    assert (outbox.pending("am1"), len(outbox)) == ([], 1)


def test_an_alertmanager_url_posts_to_the_v2_api_and_is_named_without_credentials():
    target = parse_target("http://pager:s3cret@am.example:9093/")
    assert target.post_url == "http://am.example:9093/api/v2/alerts"
    assert target.name == "http://am.example:9093"
    assert target.authorization == "Basic cGFnZXI6czNjcmV0"
