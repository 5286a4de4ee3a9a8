"""Real Prometheus and Alertmanager servers on loopback ports.

Both are the Debian packages' binaries (scripts/test installs them), run in a temporary directory
with their logs beside their data; a server that does not become ready names its log in the error.

    with start_prometheus(tmp_path, ["127.0.0.1:9765"], rule_files=[...]) as prom:
        eventually(lambda: prom.query('up == 1'))

Configuration files are written as JSON, which both servers read as YAML.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Sequence

from tests.servers import Missing, free_port

READY_SECONDS = 30.0


def find_binary(*names: str) -> str:
    """The first of ``names`` on PATH or in /usr/bin; ``Missing`` when none is installed."""
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if path:
            return path
    raise Missing(f"{names[0]} is not installed (scripts/test installs it)")


def eventually(probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> Any:
    """Poll ``probe`` until it returns something truthy, and return that; ``TimeoutError`` after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or probe}; last: {result!r}")
        time.sleep(interval)


def http_json(url: str, data: Any = None, timeout: float = 5.0) -> Any:
    """GET (or POST ``data`` as JSON) and decode the JSON answer."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


class Server:
    """One server process on a fixed loopback port; ``start`` again after ``stop`` keeps the port."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Server":
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + READY_SECONDS
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} did not become ready at {self.url}; log {self.log_path}:\n{tail}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Alertmanager(Server):
    """A single Alertmanager (clustering off) whose one receiver is an optional webhook."""

    name = "alertmanager"

    def __init__(self, workdir: Path, webhook_url: str | None = None, config: str | None = None):
        super().__init__(workdir)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config or json.dumps(self._config(webhook_url), indent=2))

    @staticmethod
    def _config(webhook_url: str | None) -> dict:
        receiver: dict[str, Any] = {"name": "test"}
        if webhook_url:
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
        return {
            # Notify at once, and never again for the same firing alert within a test.
            "route": {
                "receiver": "test",
                "group_by": ["..."],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "24h",
            },
            "receivers": [receiver],
        }

    def command(self) -> list[str]:
        return [
            find_binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ]

    def alerts(self, **labels: str) -> list[dict]:
        """Active alerts (API v2) whose labels include ``labels``."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        return http_json(f"{self.url}/api/v2/alerts?{query}")

    def post(self, alerts: list[dict]) -> None:
        """Push alerts as a Prometheus would."""
        http_json(f"{self.url}/api/v2/alerts", alerts)


class Prometheus(Server):
    """Prometheus scraping static targets as job "flopwatch", evaluating rules, sending alerts."""

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        scrape_targets: Sequence[str],
        rule_files: Sequence[str | os.PathLike] = (),
        alertmanager_url: str | None = None,
        scrape_interval: str = "1s",
    ):
        super().__init__(workdir)
        self.config_path = workdir / "prometheus.yml"
        config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [
                {"job_name": "flopwatch", "static_configs": [{"targets": list(scrape_targets)}]}
            ],
        }
        if alertmanager_url:
            am = urllib.parse.urlsplit(alertmanager_url)
            config["alerting"] = {
                "alertmanagers": [{"scheme": am.scheme, "static_configs": [{"targets": [am.netloc]}]}]
            }
        self.config_path.write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [
            find_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Re-send firing alerts every second, so a test sees them soon after Alertmanager starts.
            "--rules.alert.resend-delay=1s",
            f"--web.external-url={self.url}",
        ]

    def query(self, expr: str) -> list[dict]:
        """The instant-query result: a list of {"metric": {...}, "value": [ts, "v"]}."""
        answer = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return answer["data"]["result"]

    def alerts(self) -> list[dict]:
        """Alerts pending or firing in Prometheus itself."""
        return http_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]


def start_alertmanager(tmp_path: Path, webhook_url: str | None = None, config: str | None = None) -> Alertmanager:
    """A started Alertmanager (``config``: its YAML, by default one webhook receiver); use it as a
    context manager or call ``.stop()``."""
    return Alertmanager(tmp_path / f"alertmanager-{free_port()}", webhook_url, config).start()


def start_prometheus(
    tmp_path: Path,
    scrape_targets: Sequence[str],
    rule_files: Sequence[str | os.PathLike] = (),
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
) -> Prometheus:
    """A started Prometheus; use it as a context manager or call ``.stop()``."""
    workdir = tmp_path / f"prometheus-{free_port()}"
    return Prometheus(workdir, scrape_targets, rule_files, alertmanager_url, scrape_interval).start()


class WebhookReceiver:
    """Stands in for a pager: records every notification Alertmanager sends to it."""

    def __init__(self):
        self.notifications: list[dict] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/notify"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self, status: str = "firing") -> list[dict]:
        """Every alert of every notification so far with this status, in order of arrival."""
        return [a for n in list(self.notifications) for a in n["alerts"] if a["status"] == status]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
