"""/metrics behind TLS and basic auth (a web-config file), scraped by a real Prometheus; and the
rule that endpoints accepting data listen on loopback unless configured otherwise."""

import base64
import json
import ssl
import urllib.error
import urllib.request

import bcrypt
import pytest
from click.testing import CliRunner

from flopwatch import config as config_mod
from flopwatch.outputs import webconfig
from flopwatch.commands.build import build_agent
from flopwatch.commands.cli import main
from flopwatch.config import ConfigError
from flopwatch.httpbase import check_local_bind
from flopwatch.outputs.server import MetricsServer
from flopwatch.outputs.status_document import status_document
from tests.servers.prometheus import Prometheus, eventually, http_json
from tests.tls import self_signed

PASSWORD = "s3cret"


def simulated_agent():
    """An agent on one simulated healthy GPU, after one tick."""
    config = config_mod.Config()
    config.agent.simulate = ["healthy"]
    built = build_agent(config)
    built.agent.tick()
    return built


@pytest.fixture
def secured_agent(tmp_path):
    """An agent on a simulated GPU serving /metrics over TLS to user "prometheus" only."""
    cert, key = self_signed(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                        f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    built = simulated_agent()
    server = MetricsServer("127.0.0.1:0", built.exporter.registry(),
                           lambda: status_document(built.agent.state), web=webconfig.load(web_file))
    server.start()
    server.ca_file = cert
    yield server
    server.shutdown()
    server.server_close()
    built.agent.close()


def get(server, path: str, user: str | None = None, password: str | None = None):
    request = urllib.request.Request(server.url + path)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    context = ssl.create_default_context(cafile=str(server.ca_file))
    return urllib.request.urlopen(request, context=context, timeout=10)


def test_the_agent_serves_https(secured_agent):
    assert secured_agent.url.startswith("https://127.0.0.1:")


def test_with_the_password_metrics_are_served(secured_agent):
    with get(secured_agent, "/metrics", "prometheus", PASSWORD) as response:
        assert b"flopwatch_utilization_ratio" in response.read()


@pytest.mark.parametrize("path", ["/metrics", "/api/v1/status"])
def test_without_the_password_the_answer_is_401_with_a_challenge(secured_agent, path):
    with pytest.raises(urllib.error.HTTPError) as answer:
        get(secured_agent, path)
    assert answer.value.code == 401
    assert answer.value.headers["WWW-Authenticate"] == 'Basic realm="flopwatch"'


def test_a_wrong_password_is_401(secured_agent):
    with pytest.raises(urllib.error.HTTPError) as answer:
        get(secured_agent, "/metrics", "prometheus", "guess")
    assert answer.value.code == 401


def test_plain_http_gets_nothing(secured_agent):
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(secured_agent.url.replace("https", "http") + "/metrics", timeout=10)


def test_without_a_web_config_the_agent_serves_plain_http_to_anyone():
    built = simulated_agent()
    server = MetricsServer("127.0.0.1:0", built.exporter.registry(), lambda: {})
    server.start()
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()
        built.agent.close()


def test_a_real_prometheus_scrapes_over_tls_with_basic_auth_and_is_refused_without(secured_agent, tmp_path):
    target = f"127.0.0.1:{secured_agent.server_address[1]}"
    tls = {"ca_file": str(secured_agent.ca_file), "server_name": "localhost"}
    prometheus = Prometheus(tmp_path / "prometheus", [target])
    prometheus.config_path.write_text(json.dumps({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "flopwatch", "scheme": "https", "tls_config": tls,
             "basic_auth": {"username": "prometheus", "password": PASSWORD},
             "static_configs": [{"targets": [target]}]},
            {"job_name": "no-password", "scheme": "https", "tls_config": tls,
             "static_configs": [{"targets": [target]}]},
        ],
    }))
    with prometheus.start():
        eventually(lambda: prometheus.query('flopwatch_utilization_ratio{job="flopwatch"}'),
                            what="flopwatch_utilization_ratio scraped over TLS")

        def refused():
            targets = http_json(prometheus.url + "/api/v1/targets")["data"]["activeTargets"]
            return [t["lastError"] for t in targets
                    if t["labels"]["job"] == "no-password" and t["health"] == "down"]

        assert "401" in eventually(refused, what="the scrape without a password refused")[0]


@pytest.mark.parametrize("address", ["127.0.0.1:9766", "[::1]:9766", "localhost:9766", "unix:/run/flopwatch/push.sock"])
def test_a_push_endpoint_may_listen_locally(address):
    check_local_bind(address, allow_remote=False, setting="[tokens].push_listen",
                     allow_setting="[tokens].allow_remote_push")


@pytest.mark.parametrize("address", ["0.0.0.0:9766", "10.1.2.3:9766", ":9766", "[::]:9766", "node7:9766"])
def test_a_push_endpoint_refuses_other_hosts_unless_configured(address):
    with pytest.raises(ConfigError, match=r"\[tokens\].allow_remote_push"):
        check_local_bind(address, allow_remote=False, setting="[tokens].push_listen",
                         allow_setting="[tokens].allow_remote_push")
    check_local_bind(address, allow_remote=True, setting="[tokens].push_listen",
                     allow_setting="[tokens].allow_remote_push")


def test_the_default_push_address_is_local():
    tokens = config_mod.Config().tokens
    check_local_bind(tokens.push_listen, allow_remote=tokens.allow_remote_push, setting="[tokens].push_listen",
                     allow_setting="[tokens].allow_remote_push")


def test_the_agent_will_not_start_with_a_remote_push_address_unless_allowed(monkeypatch):
    monkeypatch.setenv("FLOPWATCH_TOKENS_PUSH_LISTEN", "0.0.0.0:9766")
    result = CliRunner().invoke(main, ["run", "--simulate", "healthy", "--listen", "127.0.0.1:0"])
    assert result.exit_code == 2
    assert "[tokens].push_listen" in result.output and "allow_remote_push" in result.output
