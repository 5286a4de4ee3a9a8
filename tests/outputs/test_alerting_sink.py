"""The Alertmanager sink against a real Alertmanager: delivery, HA pairs, outages, bad URLs."""

from __future__ import annotations

import logging
import socket

from prometheus_client.core import Metric

from flopwatch.outputs.alerting import AlertmanagerSink
from flopwatch.config import Config
from tests.servers import free_port
from tests.servers.prometheus import eventually, start_alertmanager
from tests.outputs.test_alerting_rules import gpu


class State:
    def __init__(self, *gpus):
        self.gpus = list(gpus)


def sink_for(*urls: str, clock=None) -> AlertmanagerSink:
    config = Config()
    config.agent.hostname = "gpu-node-1"
    config.alerting.alertmanager_urls = list(urls)
    config.alerting.resend_interval_seconds = 1.0
    config.alerting.timeout_seconds = 1.0
    config.diagnosis.alert_after_seconds = 0.0
    sink = AlertmanagerSink(config, **({"clock": clock} if clock else {}))
    sink.start()
    return sink


def metric(sink: AlertmanagerSink, name: str) -> dict[tuple, float]:
    family: Metric = next(m for m in sink.collect() if m.name == name)
    return {tuple(s.labels.values()): s.value for s in family.samples if not s.name.endswith("_created")}


def test_a_starved_gpu_reaches_alertmanager_with_cause_and_advice(alertmanager):
    sink = sink_for(alertmanager.url)
    try:
        sink.record(State(gpu(0.1, "input_starved")))
        [alert] = eventually(lambda: alertmanager.alerts(alertname="GPUUnderutilized"))
    finally:
        sink.close()
    assert alert["labels"]["cause"] == "input_starved"
    assert alert["labels"]["host"] == "gpu-node-1"
    assert alert["annotations"]["advice"] == "fix input_starved"
    assert alert["annotations"]["jobs"] == "slurm:1234"
    assert alert["generatorURL"] == "http://gpu-node-1:9765/api/v1/status"


def test_every_alertmanager_of_an_ha_pair_gets_the_alert(tmp_path, webhook):
    with start_alertmanager(tmp_path, webhook.url) as am1, start_alertmanager(tmp_path) as am2:
        sink = sink_for(am1.url, am2.url)
        try:
            sink.record(State(gpu(0.1, "input_starved")))
            eventually(lambda: am1.alerts() and am2.alerts(), what="the alert in both")
        finally:
            sink.close()


def test_a_resolved_gpu_sends_ends_at_and_the_alert_leaves_alertmanager(alertmanager, webhook):
    sink = sink_for(alertmanager.url)
    try:
        sink.record(State(gpu(0.1, "input_starved")))
        eventually(lambda: alertmanager.alerts(), what="the alert")
        sink.record(State(gpu(0.9)))
        eventually(lambda: not alertmanager.alerts(), what="the alert to resolve")
        eventually(lambda: webhook.alerts("resolved"), what="a resolved notification")
    finally:
        sink.close()
    assert len(webhook.alerts("firing")) == 1


def test_alerts_wait_while_alertmanager_is_down_and_page_once_when_it_returns(alertmanager, webhook):
    alertmanager.stop()
    sink = sink_for(alertmanager.url)
    try:
        sink.record(State(gpu(0.1, "input_starved")))
        eventually(lambda: metric(sink, "flopwatch_alerts_send_failures")[(alertmanager.url,)] >= 2,
                   what="failed posts")
        assert metric(sink, "flopwatch_alerts_pending") == {(): 1.0}
        alertmanager.start()
        eventually(lambda: webhook.alerts("firing"), what="the page")
        eventually(lambda: metric(sink, "flopwatch_alerts_pending") == {(): 0.0}, what="an empty outbox")
        eventually(lambda: sink.targets[0].sent >= 3, what="two re-sends")  # which must not page again
    finally:
        sink.close()
    assert len(webhook.alerts("firing")) == 1


def test_an_unreachable_or_malformed_alertmanager_url_is_a_warning_and_a_metric(caplog):
    unreachable = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="flopwatch.outputs.alerting"):
        sink = sink_for(unreachable, "not a url")
        try:
            for _ in range(3):
                sink.record(State(gpu(0.1, "input_starved")))
            eventually(lambda: set(metric(sink, "flopwatch_alerts_send_failures").values()) == {2.0},
                       what="two failed posts to each")
        finally:
            sink.close()
    assert metric(sink, "flopwatch_alertmanager_up") == {(unreachable,): 0.0, ("not a url",): 0.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # once per URL going down, not once per retry
    assert unreachable in warnings[0]


def test_record_returns_while_a_post_hangs():
    blackhole = socket.create_server(("127.0.0.1", 0))
    sink = sink_for(f"http://127.0.0.1:{blackhole.getsockname()[1]}")
    sink.timeout = 60.0
    try:
        sink.record(State(gpu(0.1, "input_starved")))
        connection, _ = blackhole.accept()  # the sender now waits for an answer that never comes
        for _ in range(100):
            sink.record(State(gpu(0.1, "held_idle")))
        assert sink.targets[0].sent == sink.targets[0].failed == 0  # that post is still in flight
        connection.close()
    finally:
        blackhole.close()
        sink.close()


def test_store_outbox_keeps_unsent_alerts_across_a_restart(tmp_path):
    from flopwatch.outputs.alerting import StoreOutbox
    from flopwatch.history.store import HistoryStore

    url = f"sqlite:///{tmp_path}/h.db"
    first = StoreOutbox(HistoryStore(url, "node1"))
    first.put("am1", "GPU-0/input_starved", {"labels": {"cause": "input_starved"}})
    first.put("am1", "GPU-1/held_idle", {"labels": {"cause": "held_idle"}})
    first.done("am1", ["GPU-1/held_idle"])
    again = StoreOutbox(HistoryStore(url, "node1"))
    assert again.pending("am1") == [("GPU-0/input_starved", {"labels": {"cause": "input_starved"}})]


def test_store_outbox_keeps_only_the_newest_message_per_alert(tmp_path):
    from flopwatch.outputs.alerting import StoreOutbox
    from flopwatch.history.store import HistoryStore

    url = f"sqlite:///{tmp_path}/h.db"
    box = StoreOutbox(HistoryStore(url, "node1"))
    box.put("am1", "GPU-0/input_starved", {"v": 1})
    box.put("am1", "GPU-0/input_starved", {"v": 2})
    assert StoreOutbox(HistoryStore(url, "node1")).pending("am1") == [("GPU-0/input_starved", {"v": 2})]
