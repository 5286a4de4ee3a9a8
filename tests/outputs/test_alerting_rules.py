"""Which GPU pages for which cause, tick by tick (the pure part of the Alertmanager sink)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from flopwatch.model import Allocation, Contribution, Finding, GpuFigures, PodContainer, ProcessView
from flopwatch.outputs.alerting import MemoryOutbox, UnderutilizationAlerts, annotations, parse_target


@dataclass
class Gpu:
    """The part of the agent's GpuState the sink reads."""

    figures: GpuFigures | None
    finding: Finding | None
    processes: tuple[ProcessView, ...] = ()
    pods: tuple[PodContainer, ...] = ()
    allocation: Allocation | None = None


def gpu(utilization: float | None, cause: str | None = None, index: int = 0, severity: str = "page") -> Gpu:
    """One GPU's tick with its finding (diagnosis pages when the window's utilization is low)."""
    figures = GpuFigures(
        index=index, uuid=f"GPU-{index}", timestamp=0.0, interval_seconds=1.0, source_quality="gpm",
        utilization=utilization, sm_occupancy=None, tensor_active=None, dram_active=None,
        fp32_active=None, fp64_active=None, fp16_active=None, flops_utilization=None,
        achieved_flops_per_second=None, dram_bytes_per_second=None, memory_turnover_per_second=None,
        power_watts=None, energy_joules=None, energy_joules_delta=None, sm_clock_ratio=None,
        memory_used_bytes=None, memory_total_bytes=80 * 2**30,
    )
    finding = Finding(cause, severity, 0.8, {}, f"fix {cause}") if cause else None
    job = ProcessView(pid=7, job="slurm:1234", user="ana", cmdline="python train.py", sm_ratio=utilization,
                      memory_bytes=2**30, cpu_ratio=1.0)
    return Gpu(figures, finding, (job,))


def tracker() -> UnderutilizationAlerts:
    return UnderutilizationAlerts(alert_after_seconds=120, static_labels={"host": "n1", "job": "flopwatch"},
                                  annotate=lambda g: {"advice": g.finding.advice if g.finding else ""})


def causes(alerts) -> list[str]:
    return [a.labels["cause"] for a in alerts]


def test_a_paging_finding_pages_only_after_alert_after_seconds():
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


def test_a_starved_gpu_busy_for_a_tick_still_pages():
    """The finding covers the window, so a busy second between idle ones does not restart the count."""
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(60, [gpu(1.0, "input_starved")])
    assert causes(t.update(120, [gpu(0.1, "input_starved")]).started) == ["input_starved"]


def test_a_tick_without_a_paging_finding_restarts_the_count():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(100, [gpu(0.9)])
    assert t.update(150, [gpu(0.1, "input_starved")]).started == []
    assert causes(t.update(270, [gpu(0.1, "input_starved")]).started) == ["input_starved"]


def test_a_healthy_gpu_never_pages():
    t = tracker()
    assert all(t.update(now, [gpu(0.95)]).started == [] for now in range(0, 600, 60))


def test_a_busy_but_inefficient_gpu_is_a_ticket_not_a_page():
    t = tracker()
    assert all(t.update(now, [gpu(0.9, "no_tensor_cores", severity="ticket")]).started == []
               for now in range(0, 600, 60))


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


def test_an_unreadable_gpu_neither_fires_nor_resolves():
    t = tracker()
    t.update(0, [gpu(0.1, "input_starved")])
    t.update(120, [gpu(0.1, "input_starved")])
    unreadable = Gpu(figures=None, finding=None)
    changes = t.update(130, [unreadable])
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


def test_a_pages_annotations_name_its_contributing_causes_and_its_labels_route_on_the_primary():
    shared = gpu(0.2, "contention")
    shared = Gpu(shared.figures, replace(shared.finding, contributing=(
        Contribution("launch_bound", "Kernels too small to keep the GPU busy (launch-bound)", {}),)), shared.processes)
    assert annotations(shared, "http://n1:9765")["contributing"] == \
        "launch_bound: Kernels too small to keep the GPU busy (launch-bound)"
    alerts = tracker()
    alerts.update(0.0, [shared])
    changes = alerts.update(121.0, [shared])
    assert [a.labels["cause"] for a in changes.started] == ["contention"]
