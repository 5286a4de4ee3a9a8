"""Alertmanager down, slow (10 s answers) or answering 500 while a running agent pages: the page
arrives once the fault ends, exactly once, and sampling never waits for Alertmanager."""

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flopwatch.outputs.alerting import AlertmanagerSink
from tests.faults import live
from tests.servers.prometheus import start_alertmanager

SLOW_SECONDS = 10.0


class FaultyProxy:
    """Passes requests to a real Alertmanager, or answers them slowly, or with a 500."""

    def __init__(self, target: str):
        self.mode = "pass"
        self.in_flight = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.in_flight += 1
                try:
                    self._forward(body)
                finally:
                    proxy.in_flight -= 1

            def _forward(self, body: bytes) -> None:
                if proxy.mode == "500":
                    return self._answer(500, b"internal error\n")
                if proxy.mode == "slow":
                    time.sleep(SLOW_SECONDS)
                request = urllib.request.Request(target + self.path, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        self._answer(response.status, response.read())
                except urllib.error.HTTPError as e:
                    self._answer(e.code, e.read())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def alerting_metric(agent: live.LiveAgent, name: str) -> float:
    return sum(value for (sample, _), value in agent.metrics().items() if sample == name)


@pytest.mark.parametrize("fault", ["down", "slow", "500"])
def test_a_page_raised_during_an_alertmanager_fault_arrives_once_and_sampling_never_waits(tmp_path, webhook, fault):
    with start_alertmanager(tmp_path, webhook.url) as alertmanager:
        proxy = FaultyProxy(alertmanager.url)
        if fault == "down":
            alertmanager.stop()
        else:
            proxy.mode = fault
        config = live.simulated_config(["input_starved", "healthy"], interval=0.2)
        config.diagnosis.alert_after_seconds = 0.0
        config.alerting.alertmanager_urls = [proxy.url]
        # A firing alert is valid for 4 re-send intervals: Alertmanager expires it (resolves, and a
        # later re-send pages again) if no fresh post lands in that time. A post held 10 s arrives
        # with 10 s of that used, so the slow case re-sends every 5 s (20 s valid; 240 s by default).
        config.alerting.resend_interval_seconds = 5.0 if fault == "slow" else 1.0
        config.alerting.timeout_seconds = 2.0  # under the slow answers
        agent = live.start(config, sinks=[AlertmanagerSink(config).start()])
        try:
            assert live.wait_for(lambda: alerting_metric(agent, "flopwatch_alerts_send_failures_total") >= 2)
            assert alerting_metric(agent, "flopwatch_alertmanager_up") == 0
            assert alerting_metric(agent, "flopwatch_alerts_pending") >= 1
            assert all(errors[0] is None for errors in agent.wait_ticks(10))  # sampling goes on
            if fault == "down":
                alertmanager.start()
            proxy.mode = "pass"
            assert live.wait_for(lambda: webhook.alerts("firing"), timeout=60)
            assert live.wait_for(lambda: alerting_metric(agent, "flopwatch_alerts_pending") == 0)
            # Posts held by the slow answers land late, and re-sends follow: neither may page again.
            assert live.wait_for(lambda: proxy.in_flight == 0, timeout=SLOW_SECONDS + 5)
            sent = alerting_metric(agent, "flopwatch_alerts_sent_total")
            assert live.wait_for(lambda: alerting_metric(agent, "flopwatch_alerts_sent_total") >= sent + 1)
            assert webhook.alerts("resolved") == []
            time.sleep(1.5)  # Alertmanager's group_interval: a duplicate would have gone out by now
        finally:
            agent.stop()
            proxy.close()
    [page] = webhook.alerts("firing")
    assert (page["labels"]["cause"], page["labels"]["gpu"]) == ("input_starved", "0")
