"""Prometheus exposition of the last tick. Scraping never calls NVML: it renders ``Agent.state``."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from flopwatch import __version__
from flopwatch.model import NO_OWNER, OWNER_LABELS, AgentState, GpuState, Identity, owner_label
from flopwatch.sources.pod_resources import LABELS as POD_LABELS, holder_labels

GPU_LABELS = ["gpu", "uuid"]
IDENTITY_LABELS = ["container_id", "pod", "namespace", "slurm_job", "unit"]

# (metric name, help, the GpuState → value function) for the plain per-GPU gauges.
GAUGES: tuple[tuple[str, str, Callable[[GpuState], float | None]], ...] = (
    ("utilization_ratio", "Fraction of time the SMs had work (GPM SM_UTIL; NVML utilization.gpu where "
     "source_quality is coarse).", lambda g: g.figures.utilization),
    ("nvml_utilization_ratio", "NVML utilization.gpu: fraction of time any kernel ran (coarse).",
     lambda g: g.sample.nvml_utilization),
    ("sm_occupancy_ratio", "Resident warps over the SMs' maximum (GPM SM_OCCUPANCY).", lambda g: g.figures.sm_occupancy),
    ("tensor_active_ratio", "Fraction of cycles any tensor pipe was active.", lambda g: g.figures.tensor_active),
    ("fp32_active_ratio", "Fraction of cycles the FP32 pipe was active.", lambda g: g.figures.fp32_active),
    ("fp64_active_ratio", "Fraction of cycles the FP64 pipe was active.", lambda g: g.figures.fp64_active),
    ("fp16_active_ratio", "Fraction of cycles the (non-tensor) FP16 pipe was active.", lambda g: g.figures.fp16_active),
    ("dram_active_ratio", "DRAM bandwidth used over peak (GPM DRAM_BW_UTIL).", lambda g: g.figures.dram_active),
    ("flops_utilization_ratio", "Achieved FLOP/s over the card's dense tensor peak.",
     lambda g: g.figures.flops_utilization),
    ("memory_turnover_per_second", "Bytes moved through DRAM per second over memory capacity.",
     lambda g: g.figures.memory_turnover_per_second),
    ("dram_bytes_per_second", "Bytes moved through DRAM per second.", lambda g: g.figures.dram_bytes_per_second),
    ("power_watts", "Board power draw.", lambda g: g.figures.power_watts),
    ("sm_clock_hertz", "SM clock.", lambda g: g.sample.sm_clock_mhz * 1e6 if g.sample.sm_clock_mhz is not None else None),
    ("temperature_celsius", "GPU temperature.", lambda g: g.sample.temperature_celsius),
    ("pcie_tx_bytes_per_second", "PCIe traffic from the GPU.", lambda g: g.sample.pcie_tx_bytes_per_second),
    ("pcie_rx_bytes_per_second", "PCIe traffic to the GPU.", lambda g: g.sample.pcie_rx_bytes_per_second),
    ("nvlink_tx_bytes_per_second", "NVLink traffic from the GPU.", lambda g: g.sample.nvlink_tx_bytes_per_second),
    ("nvlink_rx_bytes_per_second", "NVLink traffic to the GPU.", lambda g: g.sample.nvlink_rx_bytes_per_second),
    ("memory_used_bytes", "GPU memory in use.", lambda g: g.figures.memory_used_bytes),
    ("memory_total_bytes", "GPU memory capacity.", lambda g: g.figures.memory_total_bytes),
)


class Exporter:
    """A prometheus-client custom collector over the agent's last state and its sinks' metrics."""

    def __init__(self, state: Callable[[], AgentState | None], extra: Iterable[object] = (), top_processes: int = 10,
                 currency: str = "USD", pod_labels: bool = False):
        self.state = state
        self.pod_labels = pod_labels
        self.extra = list(extra)  # sinks and sources with a collect() of their own
        self.top_processes = top_processes
        self.currency = currency

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        yield from self._agent(state)
        if state is not None:
            yield from (_with_pod_labels(self._gpus(state), state) if self.pod_labels else self._gpus(state))
        for source in self.extra:
            yield from source.collect()

    def _agent(self, state: AgentState | None) -> Iterator[Metric]:
        build = GaugeMetricFamily("flopwatch_build_info", "flopwatch version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        if state is None:
            return
        ticks = CounterMetricFamily("flopwatch_ticks", "Ticks completed.")
        ticks.add_metric([], state.ticks)
        yield ticks
        success = GaugeMetricFamily("flopwatch_collector_success", "1 if the collector's last run succeeded.",
                                    labels=["collector"])
        duration = GaugeMetricFamily("flopwatch_collector_duration_seconds", "Time the collector's last run took.",
                                     labels=["collector"])
        for name, ok in sorted(state.collector_success.items()):
            success.add_metric([name], 1 if ok else 0)
            duration.add_metric([name], state.collector_seconds.get(name, 0.0))
        yield success
        yield duration
        if state.host is not None and state.host.cpu_busy_ratio is not None:
            cpu = GaugeMetricFamily("flopwatch_host_cpu_busy_ratio", "Host CPU busy share (all cores).")
            cpu.add_metric([], state.host.cpu_busy_ratio)
            yield cpu
            iowait = GaugeMetricFamily("flopwatch_host_iowait_ratio", "Host CPU share spent waiting on I/O.")
            iowait.add_metric([], state.host.iowait_ratio or 0.0)
            yield iowait

    def _gpus(self, state: AgentState) -> Iterator[Metric]:
        up = GaugeMetricFamily("flopwatch_gpu_up", "1 if the GPU was read this tick.", labels=GPU_LABELS)
        info = GaugeMetricFamily("flopwatch_gpu_info", "Static facts about the GPU.",
                                 labels=GPU_LABELS + ["name", "driver", "cuda", "pci_bus_id", "source_quality"])
        for g in state.gpus:
            labels = _labels(g)
            up.add_metric(labels, 0 if g.figures is None else 1)
            i = g.sample.info
            info.add_metric(labels + [i.name, i.driver_version, i.cuda_driver_version or "", i.pci_bus_id,
                                      g.sample.source_quality], 1)
        yield up
        yield info
        readable = [g for g in state.gpus if g.figures is not None]
        for name, help_text, get in GAUGES:
            family = GaugeMetricFamily(f"flopwatch_{name}", help_text, labels=GPU_LABELS)
            for g in readable:
                value = get(g)
                if value is not None:
                    family.add_metric(_labels(g), value)
            yield family
        yield from self._counters(readable)
        yield from self._findings(readable)
        yield from self._processes(readable)
        yield from self._tokens(state)

    def _counters(self, gpus: list[GpuState]) -> Iterator[Metric]:
        energy = CounterMetricFamily("flopwatch_energy_joules", "Energy used since the agent started (counter).",
                                     labels=GPU_LABELS)
        throttle = CounterMetricFamily("flopwatch_throttle_seconds", "Time the clocks were held down, by reason.",
                                       labels=GPU_LABELS + ["reason"])
        wasted = CounterMetricFamily("flopwatch_wasted_gpu_seconds", "GPU-seconds spent under the utilization "
                                     "threshold, by cause.", labels=GPU_LABELS + ["cause"])
        nvlink_tx = CounterMetricFamily("flopwatch_nvlink_tx_bytes", "Bytes sent over each active NVLink link "
                                        "since the agent started (GPM).", labels=GPU_LABELS + ["link"])
        nvlink_rx = CounterMetricFamily("flopwatch_nvlink_rx_bytes", "Bytes received over each active NVLink link "
                                        "since the agent started (GPM).", labels=GPU_LABELS + ["link"])
        for g in gpus:
            labels = _labels(g)
            if g.sample.energy_joules is not None:
                energy.add_metric(labels, g.sample.energy_joules)
            for reason, seconds in sorted(g.sample.throttle_seconds.items()):
                throttle.add_metric(labels + [reason], seconds)
            for cause, seconds in sorted(g.wasted_seconds.items()):
                wasted.add_metric(labels + [cause], seconds)
            for link in g.sample.nvlink_links:
                nvlink_tx.add_metric(labels + [str(link.link)], link.tx_bytes)
                nvlink_rx.add_metric(labels + [str(link.link)], link.rx_bytes)
        yield energy
        yield throttle
        yield wasted
        yield nvlink_tx
        yield nvlink_rx

    def _findings(self, gpus: list[GpuState]) -> Iterator[Metric]:
        # The pods' owner keys ([kubernetes].owner_labels) that any holder has: the same label set on every series.
        keys = sorted({k for g in gpus if g.allocation is not None for k, _ in g.allocation.owner_metadata})
        owner_labels = [*OWNER_LABELS, *map(owner_label, keys)]
        below = GaugeMetricFamily("flopwatch_below_threshold", "1 while utilization is under the threshold, "
                                  "labelled with the likely cause.", labels=GPU_LABELS + ["cause"])
        info = GaugeMetricFamily("flopwatch_finding_info", "The current finding: cause, severity and advice, "
                                 "the Slurm job holding the GPU and the pod owner's owner_<key> labels "
                                 "(empty when none).",
                                 labels=GPU_LABELS + ["cause", "severity", "summary", "advice", *owner_labels])
        held = GaugeMetricFamily("flopwatch_gpu_allocation_info", "Who a scheduler gave the GPU to (Slurm job, "
                                 "or the kubelet's pod); no series while nobody holds it.",
                                 labels=GPU_LABELS + ["scheduler", *owner_labels])
        started = GaugeMetricFamily("flopwatch_gpu_allocation_start_time_seconds", "When the job holding the GPU "
                                    "started (Unix time; Slurm).", labels=GPU_LABELS)
        confidence = GaugeMetricFamily("flopwatch_finding_confidence", "Confidence in the current finding.",
                                       labels=GPU_LABELS + ["cause"])
        contributing = GaugeMetricFamily("flopwatch_finding_contributing", "1 for each cause contributing beside the "
                                         "current finding's (at most two a GPU).", labels=GPU_LABELS + ["cause"])
        for g in gpus:
            labels = _labels(g)
            if g.below_threshold:
                below.add_metric(labels + [g.finding.cause if g.finding else "unknown"], 1)
            else:
                below.add_metric(labels + ["none"], 0)
            owner = list(g.allocation.owner() if g.allocation is not None else NO_OWNER)
            metadata = dict(g.allocation.owner_metadata) if g.allocation is not None else {}
            owner += [metadata.get(k, "") for k in keys]
            if g.finding is not None:
                f = g.finding
                info.add_metric(labels + [f.cause, f.severity, f.summary, f.advice] + owner, 1)
                confidence.add_metric(labels + [f.cause], f.confidence)
                for c in f.contributing:
                    contributing.add_metric(labels + [c.cause], 1)
            if g.allocation is not None:
                held.add_metric(labels + [g.allocation.scheduler] + owner, 1)
                if g.allocation.started_at is not None:
                    started.add_metric(labels, g.allocation.started_at)
        yield below
        yield info
        yield confidence
        yield contributing
        yield held
        yield started

    def _processes(self, gpus: list[GpuState]) -> Iterator[Metric]:
        sm = GaugeMetricFamily("flopwatch_process_sm_ratio", "A process's share of the GPU's SM time (top N; "
                               "the rest summed as pid=\"other\").", labels=GPU_LABELS + ["pid", "job"])
        memory = GaugeMetricFamily("flopwatch_process_memory_bytes", "GPU memory a process holds (top N; the rest "
                                   "summed as pid=\"other\").", labels=GPU_LABELS + ["pid", "job"])
        count = GaugeMetricFamily("flopwatch_processes", "Processes with a context on the GPU.", labels=GPU_LABELS)
        info = GaugeMetricFamily("flopwatch_process_info", "Who runs a GPU process (top N): user, container, "
                                 "Kubernetes pod, Slurm job, systemd unit.",
                                 labels=GPU_LABELS + ["pid", "job", "user", *IDENTITY_LABELS])
        # The rank as the value, not a label: one series per process however large the job.
        rank = GaugeMetricFamily("flopwatch_process_rank", "A process's rank in its distributed job (RANK, "
                                 "SLURM_PROCID; top N, where known).", labels=GPU_LABELS + ["pid", "job"])
        for g in gpus:
            labels = _labels(g)
            count.add_metric(labels, len(g.processes))
            ranked = sorted(g.processes, key=lambda p: (p.sm_ratio or 0.0, p.memory_bytes or 0), reverse=True)
            top, rest = ranked[: self.top_processes], ranked[self.top_processes:]
            for p in top:
                ident = p.identity or Identity()
                info.add_metric(labels + [str(p.pid), p.job, p.user or ""] +
                                [getattr(ident, field) or "" for field in IDENTITY_LABELS], 1)
                if p.sm_ratio is not None:
                    sm.add_metric(labels + [str(p.pid), p.job], p.sm_ratio)
                if p.memory_bytes is not None:
                    memory.add_metric(labels + [str(p.pid), p.job], p.memory_bytes)
                if ident.rank is not None:
                    rank.add_metric(labels + [str(p.pid), p.job], ident.rank)
            if rest:
                sm.add_metric(labels + ["other", "other"], sum(p.sm_ratio or 0.0 for p in rest))
                memory.add_metric(labels + ["other", "other"], sum(p.memory_bytes or 0 for p in rest))
        yield count
        yield info
        yield sm
        yield memory
        yield rank


    def _tokens(self, state: AgentState) -> Iterator[Metric]:
        total = CounterMetricFamily("flopwatch_tokens", "Tokens attributed to the GPU since the agent started, by "
                                    "source, job and kind (prompt|generated).",
                                    labels=GPU_LABELS + ["source", "job", "kind"])
        unattributed = CounterMetricFamily("flopwatch_tokens_unattributed", "Tokens whose pid and job matched no "
                                           "GPU.", labels=["source", "job", "kind"])
        per_token = [
            (GaugeMetricFamily("flopwatch_joules_per_token", "Energy per token over the token window.",
                               labels=GPU_LABELS), lambda t: t.joules_per_token),
            (GaugeMetricFamily("flopwatch_gpu_seconds_per_1k_tokens", "GPU-seconds per 1000 tokens over the "
                               "token window.", labels=GPU_LABELS), lambda t: t.gpu_seconds_per_1k_tokens),
            (GaugeMetricFamily("flopwatch_tflop_per_token", "Achieved TFLOP per token over the token window.",
                               labels=GPU_LABELS), lambda t: t.tflop_per_token),
        ]
        cost = GaugeMetricFamily("flopwatch_cost_per_1m_tokens", "Cost of 1M tokens at the configured GPU-hour "
                                 "and kWh prices, over the token window.", labels=GPU_LABELS + ["currency"])
        for g in state.gpus:
            if g.tokens is None:
                continue
            labels = _labels(g)
            for (source, job, kind), value in sorted(_top_jobs(g.tokens.totals, self.top_processes).items()):
                total.add_metric(labels + [source, job, kind], value)
            for family, get in per_token:
                value = get(g.tokens)
                if value is not None:
                    family.add_metric(labels, value)
            if g.tokens.cost_per_1m_tokens is not None:
                cost.add_metric(labels + [self.currency], g.tokens.cost_per_1m_tokens)
        for (source, job, kind), value in sorted(state.unattributed_tokens.items()):
            unattributed.add_metric([source, job, kind], value)
        yield total
        yield unattributed
        for family, _ in per_token:
            yield family
        yield cost


def _with_pod_labels(families: Iterable[Metric], state: AgentState) -> Iterator[Metric]:
    """The families with namespace, pod and container on every per-GPU series, as dcgm-exporter
    labels them, so its dashboards and alert routes work; series of a process keep its own pod."""
    by_uuid = {g.sample.info.uuid: dict(zip(POD_LABELS, holder_labels(g.pods))) for g in state.gpus}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if "uuid" in labels and "pod" not in labels:
                labels.update(by_uuid[labels["uuid"]])
        yield family


def _top_jobs(totals: Mapping[tuple[str, str, str], float], n: int) -> dict[tuple[str, str, str], float]:
    """The n jobs with the most tokens keep their label; the rest are summed as job="other"."""
    by_job: dict[str, float] = {}
    for (_, job, _), value in totals.items():
        by_job[job] = by_job.get(job, 0.0) + value
    keep = set(sorted(by_job, key=lambda j: (-by_job[j], j))[:n])
    out: dict[tuple[str, str, str], float] = {}
    for (source, job, kind), value in totals.items():
        key = (source, job if job in keep else "other", kind)
        out[key] = out.get(key, 0.0) + value
    return out


def _labels(g: GpuState) -> list[str]:
    return [str(g.sample.info.index), g.sample.info.uuid]
