"""The `flopwatch` command. Exit codes: 0 ok, 1 a failed check, 2 usage or configuration error."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import click

from . import __version__, sdnotify
from . import config as config_mod
from .config import Config, ConfigError
from .doctor_cli import doctor_command
from .history_cli import history
from .report_cli import report_command

log = logging.getLogger("flopwatch")


class UsageError(click.ClickException):
    exit_code = 2


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


def load_config(path: str | None, overrides: dict[tuple[str, str], Any]) -> Config:
    try:
        config = config_mod.load(path)
        for (section, key), value in overrides.items():
            if value is not None:
                config_mod.override(config, section, key, value)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return config


def build_agent(config: Config, *, clock: Callable[[], float] = time.monotonic,
                wall_clock: Callable[[], float] = time.time, sinks: list | None = None) -> Built:
    from .daemon import Agent
    from .exporter import Exporter
    from .sources.nvml import NvmlSource, NvmlUnavailable

    a = config.agent
    if a.simulate:
        from .sources.simulated import SimulatedHost, SimulatedNvml, UnknownScenario

        try:
            lib = SimulatedNvml(a.simulate, gpus=max(a.simulate_gpus, 1) * len(a.simulate),
                                processes_per_gpu=a.simulate_processes, seed=a.seed, clock=clock,
                                wall_clock=wall_clock)
        except UnknownScenario as e:
            raise UsageError(str(e)) from None
        host = SimulatedHost(lib, a.counter_interval_seconds)
    else:
        from .sources.host import HostSource
        from .sources.identity import BadJobRule

        lib = None
        try:
            host = HostSource(clock=clock, job_rules=config.attribution.job_rules,
                              counter_interval_seconds=a.counter_interval_seconds)
        except BadJobRule as e:
            raise UsageError(str(e)) from None
    from .sources.tokens import ListenRefused, TokenSource

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
        from .sources.stacks import StackSampler

        # Simulated GPUs' processes do not exist: their findings say so rather than sample a stranger.
        stacks = StackSampler(config.stacks, unavailable="simulated" if a.simulate else None, clock=clock,
                              wall_clock=wall_clock)
    pods = _pod_reader(config)
    agent = Agent(config, source, host, sinks or [], tokens=tokens, stacks=stacks, pods=pods, clock=clock,
                  wall_clock=wall_clock)
    exporter = Exporter(lambda: agent.state, extra=[tokens, *(s for s in agent.sinks if hasattr(s, "collect"))],
                        top_processes=config.attribution.top_processes, currency=config.tokens.currency,
                        pod_labels=pods is not None and config.kubernetes.pod_labels)
    return Built(agent, exporter, source.lib)


def _pod_reader(config: Config) -> Any:
    """The kubelet pod-resources reader when on, with its first answer read: the first tick has it."""
    from .sources.pod_resources import PodResourcesReader

    pods = PodResourcesReader.from_config(config.kubernetes)
    if pods is not None:
        pods.refresh()
    return pods


def run_sinks(config: Config) -> list:
    """The sinks `run` writes to: the history store unless disabled, systemd's watchdog, and
    Alertmanager when configured."""
    sinks = []
    if config.history.url.lower() != "none":
        from .store import HistoryStore

        try:
            sinks.append(HistoryStore.from_config(config.history, config.agent.node_name()))
        except ConfigError as e:
            raise UsageError(str(e)) from None
    if os.environ.get("NOTIFY_SOCKET"):
        # Under systemd (Type=notify) every completed tick pets the watchdog.
        sinks.append(sdnotify.Notifier())
    if config.alerting.alertmanager_urls:
        from .alerting import AlertmanagerSink, StoreOutbox

        store = next((s for s in sinks if s.name == "store"), None)
        outbox = StoreOutbox(store) if store is not None else None
        sinks.append(AlertmanagerSink(config, outbox=outbox).start())
    return sinks


def _simulate_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _config_option(f: Callable) -> Callable:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="TOML configuration (default /etc/flopwatch/config.toml if present).")(f)


def _simulate_options(f: Callable) -> Callable:
    f = click.option("--simulate-gpus", type=click.IntRange(min=1), help="Repeat the scenarios N times.")(f)
    f = click.option("--simulate", help="Simulated GPUs, one per scenario: healthy,input_starved,…")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """flopwatch: what your GPUs really do, why they idle, and the fix."""


@main.command()
@_config_option
@click.option("--listen", help="HOST:PORT for /metrics and the status API (default 0.0.0.0:9765).")
@click.option("--interval", type=float, help="Seconds between ticks (default 1).")
@click.option("--history", help="SQLAlchemy URL of the history store, or 'none'.")
@_simulate_options
@click.option("--simulate-processes", type=click.IntRange(min=1), help="Processes per simulated GPU.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: str | None, listen: str | None, interval: float | None, history: str | None,
        simulate: str | None, simulate_gpus: int | None, simulate_processes: int | None, log_level: str | None) -> None:
    """Run the agent: sample every interval, serve /metrics, keep history, send alerts."""
    overrides = {
        ("agent", "listen"): listen, ("agent", "interval_seconds"): interval, ("history", "url"): history,
        ("agent", "simulate"): _simulate_list(simulate), ("agent", "simulate_gpus"): simulate_gpus,
        ("agent", "simulate_processes"): simulate_processes, ("agent", "log_level"): log_level,
    }
    config = load_config(config_path, overrides)
    logging.basicConfig(level=config.agent.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per tick is noise
    from .daemon import schedule
    from .server import ListenError, MetricsServer
    from .sources.tokens import ListenRefused
    from .status import status_document

    try:
        web = _load_web(config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    built = build_agent(config, sinks=run_sinks(config))
    agent = built.agent
    try:
        agent.tokens.start()
    except ListenRefused as e:
        raise UsageError(str(e)) from None
    try:
        server = MetricsServer(config.agent.listen, built.exporter.registry(),
                               lambda: status_document(agent.state, agent.hostname), web=web,
                               version=lambda: agent.state)
    except (ListenError, ValueError) as e:
        agent.tokens.close()
        raise UsageError(f"{e} (set with --listen or [agent].listen)") from None
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    agent.tick()
    # What exists now (modules, configuration, static facts) lives as long as the process: keep
    # it out of the collector's full passes, which then only walk the window's recent ticks.
    gc.freeze()
    scheduler = schedule(agent, config.agent.interval_seconds)
    server.start()
    log.info("flopwatch %s serving %s/metrics, %d GPU(s)%s", __version__, server.url, len(agent.state.gpus),
             " (simulated)" if config.agent.simulate else "")
    if agent.tokens.push is not None:
        log.info("token push endpoint %s (POST /v1/tokens)", agent.tokens.push.url)
    sdnotify.ready()
    while not stop.wait(1.0):
        if reload.is_set():
            reload.clear()
            _reload(config_path, overrides, agent, server)
    log.info("stopping")
    sdnotify.stopping()
    scheduler.shutdown(wait=not agent.blocked)  # a tick blocked in NVML may never return
    server.shutdown()
    agent.close()
    if agent.blocked:
        # Everything is closed and flushed; only a thread inside NVML is left, which Python's
        # exit would wait for.
        log.warning("an NVML call has not returned; exiting without it")
        os._exit(0)


def _load_web(config: Config) -> Any:
    from . import webconfig

    path = config.agent.web_config_file
    return webconfig.load(path) if path else webconfig.WebConfig()


def _reload(config_path: str | None, overrides: dict, agent: Any, server: Any) -> None:
    """SIGHUP: apply a re-read configuration, or log why not and keep the running one."""
    sdnotify.reloading()
    try:
        new = load_config(config_path, overrides)
        server.set_web(_load_web(new))
    except (UsageError, ConfigError) as e:
        log.error("reload failed, keeping the running configuration: %s", getattr(e, "message", e))
    else:
        old = agent.config
        live = {"web_config_file": "", "log_level": ""}
        if (dataclasses.replace(new.agent, **live), new.history, new.kubernetes) != \
                (dataclasses.replace(old.agent, **live), old.history, old.kubernetes):
            log.warning("reload: [agent], [history] and [kubernetes] changes other than web_config_file and "
                        "log_level take effect at the next restart")
        logging.getLogger().setLevel(new.agent.log_level.upper())
        agent.config = dataclasses.replace(new, agent=old.agent, history=old.history, kubernetes=old.kubernetes)
        log.info("configuration reloaded")
    sdnotify.ready()


@main.command()
@_config_option
@click.option("--from", "from_url", help="Read a running agent, e.g. http://127.0.0.1:9765.")
@click.option("--window", type=float, default=5.0, show_default=True, help="Seconds to sample when not --from.")
@_simulate_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the status document).")
def status(config_path: str | None, from_url: str | None, window: float, simulate: str | None,
           simulate_gpus: int | None, as_json: bool) -> None:
    """One look at every GPU: utilization, figures, the finding and its advice."""
    from .status import status_document

    if from_url:
        doc = _fetch_status(from_url)
    else:
        config = load_config(config_path, {("agent", "simulate"): _simulate_list(simulate),
                                           ("agent", "simulate_gpus"): simulate_gpus})
        config.diagnosis.min_window_seconds = min(config.diagnosis.min_window_seconds, window)
        # One look is one verdict on the whole window: the last tick's, held back by nothing earlier.
        config.diagnosis.evaluation_interval_seconds = 0.0
        config.diagnosis.switch_after_seconds = 0.0
        doc = status_document(_sample(config, window))
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        from .tables import status_table

        click.echo(status_table(doc))


def _sample(config: Config, window: float) -> Any:
    interval = config.agent.interval_seconds
    if config.agent.simulate:
        clock, wall = VirtualClock(0.0), VirtualClock(time.time())
        agent = build_agent(config, clock=clock, wall_clock=wall).agent
        for _ in range(max(int(round(window / interval)), 1)):
            clock.now += interval
            wall.now += interval
            state = agent.tick()
    else:
        agent = build_agent(config).agent
        deadline = time.monotonic() + window
        state = agent.tick()
        while time.monotonic() < deadline:
            time.sleep(interval)
            state = agent.tick()
        if agent.stacks is not None and agent.stacks.busy:
            # Stacks asked for late in the window are the strongest evidence status can show:
            # worth the seconds of one more sample.
            agent.stacks.wait(config.stacks.timeout_seconds)
            state = agent.tick()
    agent.close()
    return state


def _fetch_status(url: str) -> dict:
    target = url.rstrip("/") + "/api/v1/status"
    try:
        with urllib.request.urlopen(target, timeout=10) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UsageError(f"cannot read {target}: {getattr(e, 'reason', e)}") from None


main.add_command(doctor_command)
main.add_command(history)
main.add_command(report_command)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"flopwatch {__version__}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
