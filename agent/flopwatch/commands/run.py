"""`flopwatch run`: the daemon. Samples every interval, serves /metrics and the status API, keeps
the history and sends alerts until SIGTERM; SIGHUP re-reads the configuration."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import threading
from typing import Any

import click

from flopwatch import __version__
from flopwatch.commands.build import build_agent, run_sinks
from flopwatch.commands.options import UsageError, config_option, load_config, simulate_list, simulate_options
from flopwatch.config import Config, ConfigError
from flopwatch.outputs import sdnotify

log = logging.getLogger("flopwatch")


@click.command()
@config_option
@click.option("--listen", help="HOST:PORT for /metrics and the status API (default 0.0.0.0:9765).")
@click.option("--interval", type=float, help="Seconds between ticks (default 1).")
@click.option("--history", help="SQLAlchemy URL of the history store, or 'none'.")
@simulate_options
@click.option("--simulate-processes", type=click.IntRange(min=1), help="Processes per simulated GPU.")
@click.option("--simulate-job", metavar="SLURM_JOB_ID",
              help="Simulated GPUs run ranks of this Slurm job (start several agents to play one multi-node job).")
@click.option("--simulate-rank", type=click.IntRange(min=0), help="Rank of simulated GPU 0's process (GPU i: +i).")
@click.option("--simulate-world-size", type=click.IntRange(min=1), help="Ranks in the simulated job, over all agents.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: str | None, listen: str | None, interval: float | None, history: str | None,
        simulate: str | None, simulate_gpus: int | None, simulate_processes: int | None, simulate_job: str | None,
        simulate_rank: int | None, simulate_world_size: int | None, log_level: str | None) -> None:
    """Run the agent: sample every interval, serve /metrics, keep history, send alerts."""
    overrides = {
        ("agent", "listen"): listen, ("agent", "interval_seconds"): interval, ("history", "url"): history,
        ("agent", "simulate"): simulate_list(simulate), ("agent", "simulate_gpus"): simulate_gpus,
        ("agent", "simulate_processes"): simulate_processes, ("agent", "simulate_job"): simulate_job,
        ("agent", "simulate_rank"): simulate_rank, ("agent", "simulate_world_size"): simulate_world_size,
        ("agent", "log_level"): log_level,
    }
    config = load_config(config_path, overrides)
    logging.basicConfig(level=config.agent.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per tick is noise
    from flopwatch.daemon import schedule
    from flopwatch.httpbase import ListenError
    from flopwatch.outputs.server import MetricsServer
    from flopwatch.sources.tokens import ListenRefused
    from flopwatch.outputs.status_document import status_document

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
    from flopwatch.outputs import webconfig

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
