"""Alerting end to end: a simulated agent, a real Alertmanager 0.25 and a real Prometheus 2.42.

The agents run as `python -m flopwatch run --simulate …` subprocesses with short durations from
FLOPWATCH_* variables; the shipped rules run with their `for:` cut to one second.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flopwatch.outputs.alerting import AlertmanagerSink
from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import Config
from tests.servers.prometheus import (
    WebhookReceiver,
    eventually,
    free_port,
    start_alertmanager,
    start_prometheus,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "flopwatch.rules.yml"
FAST = {
    "FLOPWATCH_DIAGNOSIS_ALERT_AFTER_SECONDS": "2",
    "FLOPWATCH_ALERTING_RESEND_INTERVAL_SECONDS": "1",
    "FLOPWATCH_ALERTING_TIMEOUT_SECONDS": "1",
    "FLOPWATCH_AGENT_HOSTNAME": "gpu-node-1",
}

pytestmark = pytest.mark.slow


class RunningAgent:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics, keyed by name and sorted label pairs."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))


@contextmanager
def agent(tmp_path: Path, scenarios: str, *alertmanager_urls: str) -> Iterator[RunningAgent]:
    port = free_port()
    env = {**os.environ, **FAST, "PYTHONPATH": str(ROOT / "agent"),
           "FLOPWATCH_ALERTING_ALERTMANAGER_URLS": ",".join(alertmanager_urls)}
    log = tmp_path / f"agent-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flopwatch", "run", "--simulate", scenarios,
             "--listen", f"127.0.0.1:{port}", "--history", "none", "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    running = RunningAgent(process, f"http://127.0.0.1:{port}", log)
    try:
        eventually(lambda: process.poll() is not None or _answers(running.url), what="the agent")
        assert process.poll() is None, log.read_text()
        yield running
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("alerting")


@pytest.fixture(scope="module")
def pager(module_tmp) -> Iterator:
    """An Alertmanager that the shared agent pushes to."""
    with start_alertmanager(module_tmp) as am:
        yield am


@pytest.fixture(scope="module")
def node(module_tmp, pager) -> Iterator[RunningAgent]:
    """One agent with a healthy GPU 0 and an input-starved GPU 1."""
    with agent(module_tmp, "healthy,input_starved", pager.url) as running:
        yield running


def test_a_starved_gpu_pages_through_alertmanager_with_its_cause_and_advice(pager, node):
    [alert] = eventually(lambda: pager.alerts(alertname="GPUUnderutilized", gpu="1"), what="the page")
    assert alert["labels"]["cause"] == "input_starved"
    assert alert["labels"]["severity"] == "page"
    assert alert["labels"]["host"] == "gpu-node-1"
    assert "num_workers" in alert["annotations"]["advice"]
    assert alert["annotations"]["summary"] == "GPU starved by a CPU-bound input pipeline"
    assert alert["generatorURL"].endswith("/api/v1/status")


def test_a_healthy_gpu_does_not_page(pager, node):
    eventually(lambda: pager.alerts(alertname="GPUUnderutilized", gpu="1"), what="the starved GPU's page")
    assert pager.alerts(gpu="0") == []


def test_the_shipped_rules_page_the_same_through_prometheus(tmp_path, node):
    rules = tmp_path / "flopwatch.rules.yml"
    rules.write_text(re.sub(r"(?m)^(\s+for:) \S+$", r"\1 1s", RULES.read_text()))
    target = node.url.removeprefix("http://")
    with start_alertmanager(tmp_path) as am, start_prometheus(tmp_path, [target], [rules], am.url) as prom:
        [alert] = eventually(lambda: am.alerts(alertname="GPUUnderutilized"), what="Prometheus's page")
    assert alert["generatorURL"].startswith(prom.url)
    assert {k: alert["labels"][k] for k in ("cause", "gpu", "host", "job", "severity")} == {
        "cause": "input_starved", "gpu": "1", "host": "127.0.0.1", "job": "flopwatch", "severity": "page"}
    assert "num_workers" in alert["annotations"]["advice"]


def test_an_alert_raised_while_alertmanager_is_down_arrives_once_when_it_returns(tmp_path):
    webhook = WebhookReceiver()
    try:
        with start_alertmanager(tmp_path, webhook.url) as am:
            am.stop()
            down_since = time.monotonic()
            with agent(tmp_path, "input_starved", am.url) as running:
                eventually(lambda: running.metric("flopwatch_alerts_pending") == 1.0, what="a queued alert")
                assert running.metric("flopwatch_alertmanager_up", url=am.url) == 0.0
                time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))  # the outage the issue specifies
                am.start()
                eventually(lambda: webhook.alerts("firing"), what="the page")
                sent = running.metric("flopwatch_alerts_sent_total", url=am.url)
                eventually(lambda: running.metric("flopwatch_alerts_sent_total", url=am.url) >= sent + 2,
                           what="two re-sends")
                assert running.metric("flopwatch_alerts_pending") == 0.0
    finally:
        webhook.close()
    assert [a["labels"]["cause"] for a in webhook.alerts("firing")] == ["input_starved"]


def test_a_gpu_that_turns_healthy_resolves_its_alert(tmp_path, alertmanager, webhook):
    config = Config()
    config.agent.simulate = ["input_starved"]
    config.agent.hostname = "gpu-node-1"
    config.diagnosis.alert_after_seconds = 2
    config.alerting.alertmanager_urls = [alertmanager.url]
    config.alerting.resend_interval_seconds = 120
    # Virtual time runs in the recent past: a firing alert is valid for 4 resend intervals past it
    # (still ahead of real time), and the resolve's endsAt is already over.
    clock, wall = VirtualClock(0.0), VirtualClock(time.time() - 300)
    sink = AlertmanagerSink(config, clock=wall).start()
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=[sink])

    def tick_until(condition, limit: int = 120) -> None:
        for _ in range(limit):
            clock.now += 1
            wall.now += 1
            built.agent.tick()
            if condition():
                return
        pytest.fail("the simulated GPU never got there")

    try:
        tick_until(lambda: sink.alerts.firing)
        eventually(lambda: alertmanager.alerts(alertname="GPUUnderutilized"), what="the page")
        built.lib.set_scenario(0, "healthy")
        tick_until(lambda: not sink.alerts.firing)
        eventually(lambda: not alertmanager.alerts(), what="the alert to resolve")
        [resolved] = eventually(lambda: webhook.alerts("resolved"), what="the resolved notification")
    finally:
        built.agent.close()
    assert resolved["labels"]["cause"] == "input_starved"


def test_unreachable_or_malformed_alertmanager_urls_never_stop_sampling(tmp_path):
    unreachable = f"http://127.0.0.1:{free_port()}"
    with agent(tmp_path, "input_starved", unreachable, "not a url") as running:
        eventually(lambda: running.metric("flopwatch_alerts_send_failures_total", url=unreachable),
                   what="a failed post")
        ticks = running.metric("flopwatch_ticks_total")
        eventually(lambda: running.metric("flopwatch_ticks_total") > ticks + 2, what="ticks going on")
        assert running.metric("flopwatch_alertmanager_up", url="not a url") == 0.0
    log = running.log.read_text()
    assert f"WARNING flopwatch.outputs.alerting: cannot send 1 alert(s) to Alertmanager {unreachable}" in log
    assert "Traceback" not in log
