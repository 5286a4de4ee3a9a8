"""An agent assembled from its configuration: the GPU and host sources, the sinks and the exporter.
`run`, `status` and the metrics reference build it the same way."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from flopwatch.commands.options import UsageError
from flopwatch.config import Config, ConfigError
from flopwatch.judge.calibration import CalibrationError, Calibrations, from_document
from flopwatch.outputs import sdnotify
from flopwatch.sources.calibration_file import CalibrationFileUnreadable, read_document

log = logging.getLogger(__name__)


@dataclass
class Built:
    """An agent and what it was built from."""

    agent: Any
    exporter: Any
    lib: Any


class VirtualClock:
    """Time that moves only when told: a simulated status window needs no waiting."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def build_agent(config: Config, *, clock: Callable[[], float] = time.monotonic,
                wall_clock: Callable[[], float] = time.time, sinks: list | None = None) -> Built:
    from flopwatch.daemon import Agent
    from flopwatch.outputs.exporter import Exporter
    from flopwatch.sources.nvml import NvmlSource, NvmlUnavailable

    a = config.agent
    if a.simulate:
        from flopwatch.sources.simulated import SimulatedHost, SimulatedJob, SimulatedNvml, UnknownScenario

        try:
            gpus = max(a.simulate_gpus, 1) * len(a.simulate)
            job = SimulatedJob(a.simulate_job, a.simulate_rank, a.simulate_world_size or gpus) if a.simulate_job else None
            lib = SimulatedNvml(a.simulate, gpus=gpus, processes_per_gpu=a.simulate_processes, seed=a.seed,
                                clock=clock, wall_clock=wall_clock, job=job)
        except UnknownScenario as e:
            raise UsageError(str(e)) from None
        host = SimulatedHost(lib, a.counter_interval_seconds)
    else:
        from flopwatch.sources.host import HostSource
        from flopwatch.sources.identity import BadJobRule

        lib = None
        try:
            host = HostSource(clock=clock, job_rules=config.attribution.job_rules,
                              counter_interval_seconds=a.counter_interval_seconds)
        except BadJobRule as e:
            raise UsageError(str(e)) from None
    from flopwatch.sources.tokens import ListenRefused, TokenSource

    try:
        tokens = TokenSource.from_config(config.tokens)
    except (ListenRefused, ValueError) as e:
        raise UsageError(str(e)) from None
    try:
        source = NvmlSource(lib, counter_interval_seconds=a.counter_interval_seconds, clock=clock,
                            wall_clock=wall_clock)
    except NvmlUnavailable as e:
        raise UsageError(
            f"NVML is not available ({e}). To run on simulated GPUs instead: "
            "flopwatch run --simulate healthy,input_starved"
        ) from None
    stacks = None
    if config.stacks.enabled:
        from flopwatch.sources.stacks import StackSampler

        # Simulated GPUs' processes do not exist: their findings say so rather than sample a stranger.
        stacks = StackSampler(config.stacks, unavailable="simulated" if a.simulate else None, clock=clock,
                              wall_clock=wall_clock)
    pods = _pod_reader(config)
    calibrations, problem = read_calibrations(config.calibration.file)
    if problem:
        log.warning("flops calibration not used: %s (the shipped factors apply)", problem)
    agent = Agent(config, source, host, sinks or [], tokens=tokens, stacks=stacks, pods=pods,
                  pod_owners=_pod_owner_reader(config, pods, clock),
                  calibrations=calibrations, slurm=_slurm_reader(config), clock=clock, wall_clock=wall_clock)
    exporter = Exporter(lambda: agent.state, extra=[tokens, *(s for s in agent.sinks if hasattr(s, "collect"))],
                        top_processes=config.attribution.top_processes, currency=config.tokens.currency,
                        pod_labels=pods is not None and config.kubernetes.pod_labels)
    return Built(agent, exporter, source.lib)


def read_calibrations(path: str) -> tuple[Calibrations, str | None]:
    """The factors stored in ``[calibration].file``, and what is wrong with it if it cannot be used
    (then none are stored: a monitoring agent keeps running on the shipped factors)."""
    try:
        document = read_document(path) if path else None
        return Calibrations(from_document(document) if document is not None else {}), None
    except CalibrationFileUnreadable as e:
        return Calibrations(), str(e)
    except CalibrationError as e:
        return Calibrations(), f"{path}: {e}"


def _pod_reader(config: Config) -> Any:
    """The kubelet pod-resources reader when on, with its first answer read: the first tick has it."""
    from flopwatch.sources.pod_resources import PodResourcesReader

    pods = PodResourcesReader.from_config(config.kubernetes)
    if pods is not None:
        pods.refresh()
    return pods


def _pod_owner_reader(config: Config, pods: Any, clock: Callable[[], float]) -> Any:
    """The reader of the owner labels of the pods holding GPUs, when asked for and the kubelet is
    read, with its first answer read."""
    if not config.kubernetes.owner_labels or pods is None:
        return None
    from flopwatch.sources.kubernetes_api import KubernetesAPI
    from flopwatch.sources.pod_metadata import PodMetadataReader

    try:
        api = KubernetesAPI.from_config(config.kubernetes)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    owners = PodMetadataReader(api, config.kubernetes.owner_labels, lambda: {
        (p.namespace, p.pod) for held in pods.answer.holders.values() for p in held},
        config.kubernetes.refresh_interval_seconds, clock)
    owners.refresh()
    return owners


def _slurm_reader(config: Config) -> Any:
    """The squeue reader when on, with its first answer read: the first tick has it."""
    from flopwatch.sources.slurm import SlurmReader

    try:
        slurm = SlurmReader.from_config(config.slurm)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if slurm is not None:
        slurm.refresh()
    return slurm


def run_sinks(config: Config) -> list:
    """The sinks `run` writes to: the history store unless disabled, systemd's watchdog,
    Alertmanager and the reclaim policy when configured."""
    sinks = []
    if config.history.url.lower() != "none":
        from flopwatch.history.store import HistoryStore

        try:
            sinks.append(HistoryStore.from_config(config.history, config.agent.node_name()))
        except ConfigError as e:
            raise UsageError(str(e)) from None
    if os.environ.get("NOTIFY_SOCKET"):
        # Under systemd (Type=notify) every completed tick pets the watchdog.
        sinks.append(sdnotify.Notifier())
    if config.alerting.alertmanager_urls:
        from flopwatch.outputs.alerting import AlertmanagerSink, StoreOutbox

        store = next((s for s in sinks if s.name == "store"), None)
        outbox = StoreOutbox(store) if store is not None else None
        sinks.append(AlertmanagerSink(config, outbox=outbox).start())
    kubernetes_api = None
    if config.reclaim.kubernetes == "on" or config.kubernetes.events:
        from flopwatch.sources.kubernetes_api import KubernetesAPI

        try:
            kubernetes_api = KubernetesAPI.from_config(config.kubernetes)
        except ConfigError as e:
            raise UsageError(str(e)) from None
    if config.kubernetes.events:
        from flopwatch.outputs.pod_events import PodEvents

        sinks.append(PodEvents(config.kubernetes, kubernetes_api, node=config.agent.node_name()))
    if config.reclaim.enabled():
        from flopwatch.outputs.reclaim import Reclaimer

        store = next((s for s in sinks if s.name == "store"), None)
        sinks.append(Reclaimer(config.reclaim, history=store.record_reclaim if store is not None else None,
                               slurm_conf=config.slurm.conf, kubernetes=kubernetes_api))
    return sinks
