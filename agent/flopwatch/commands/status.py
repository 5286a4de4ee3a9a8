"""`flopwatch status`: one look at every GPU, from a running agent or from a window sampled here."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import click

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.commands.options import UsageError, config_option, load_config, simulate_list, simulate_options
from flopwatch.config import Config


@click.command()
@config_option
@click.option("--from", "from_url", help="Read a running agent, e.g. http://127.0.0.1:9765.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to sample when not --from.")
@simulate_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the status document).")
def status(config_path: str | None, from_url: str | None, window: float, simulate: str | None,
           simulate_gpus: int | None, as_json: bool) -> None:
    """One look at every GPU: utilization, figures, the finding and its advice."""
    from flopwatch.outputs.status_document import status_document

    if from_url:
        doc = _fetch_status(from_url)
    else:
        config = load_config(config_path, {("agent", "simulate"): simulate_list(simulate),
                                           ("agent", "simulate_gpus"): simulate_gpus})
        doc = status_document(_sample(one_look(config, window), window))
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        from flopwatch.commands.tables import status_table

        click.echo(status_table(doc))


def one_look(config: Config, window: float) -> Config:
    """``config`` set for one verdict on a window of ``window`` seconds."""
    config.diagnosis.min_window_seconds = min(config.diagnosis.min_window_seconds, window)
    # One look is one verdict on the whole window: the last tick's, held back by nothing earlier.
    config.diagnosis.evaluation_interval_seconds = 0.0
    config.diagnosis.switch_after_seconds = 0.0
    # The costly counters (processes' SM shares, host CPU and I/O rates) read three times a window,
    # as the agent's 30 s window reads them: read every 10 s, a few seconds' window would hold one
    # read from its first tick, and a process's share one NVML sample period from before it.
    config.agent.counter_interval_seconds = min(config.agent.counter_interval_seconds, window / 3)
    # A segment that began after the window's first stack sample is judged by stacks of its own,
    # due within the window rather than ten seconds after the one taken before the change.
    config.stacks.segment_interval_seconds = min(config.stacks.segment_interval_seconds, window / 3)
    return config


def _sample(config: Config, window: float) -> Any:
    if config.agent.simulate:
        clock, wall = VirtualClock(0.0), VirtualClock(time.time())
        agent = build_agent(config, clock=clock, wall_clock=wall).agent

        def wait(seconds: float) -> None:
            clock.now += seconds
            wall.now += seconds
        state = look(agent, config, window, wait, lambda: clock.now)
    else:
        agent = build_agent(config).agent
        agent.tick()  # the counters' first reading: the window's figures are deltas from it
        state = look(agent, config, window, time.sleep, time.monotonic)
    agent.close()
    return state


def look(agent: Any, config: Config, window: float, wait: Callable[[float], None], now: Callable[[], float]) -> Any:
    """Tick ``agent`` once an interval for ``window`` seconds; its last state. A GPU whose work
    changed in the window's last seconds has no verdict yet: up to ``min_window_seconds`` more give
    its new segment one."""
    interval = config.agent.interval_seconds
    deadline = now() + window
    latest = deadline + config.diagnosis.min_window_seconds
    while True:
        wait(interval)
        state = agent.tick()
        if now() >= deadline and not (_unjudged(state) and now() < latest):
            break
    if agent.stacks is not None and agent.stacks.busy:
        # Stacks asked for late in the window are the strongest evidence status can show:
        # worth the seconds of one more sample.
        agent.stacks.wait(config.stacks.timeout_seconds)
        state = agent.tick()
    return state


def _unjudged(state: Any) -> bool:
    return any(g.figures is not None and g.window is None for g in state.gpus)


def _fetch_status(url: str) -> dict:
    target = url.rstrip("/") + "/api/v1/status"
    try:
        with urllib.request.urlopen(target, timeout=10) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UsageError(f"cannot read {target}: {getattr(e, 'reason', e)}") from None
