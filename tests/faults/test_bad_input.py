"""Bad input to a running agent: 1,000 generated malformed requests to every HTTP endpoint (each
gets a 4xx while the agent samples on and its memory stays flat), slow clients holding connections
open (/metrics still answers), and a bad configuration on reload (the running one is kept)."""

import collections
import logging
import os
import re
import socket
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flopwatch.commands import run as run_command
from tests.agent_process import get, running_agent, wait_for
from tests.faults import live
from tests.servers import free_port

MIB = 2**20
EXAMPLES = 1_000
# (method, path, port name) of every endpoint: the agent's and the token push.
ENDPOINTS = [("GET", "/metrics", "web"), ("GET", "/api/v1/status", "web"), ("GET", "/", "web"),
             ("GET", "/-/ready", "web"), ("POST", "/v1/tokens", "push")]
SEPARATORS = ' ()<>@,;"/[]?={}'
# One way each to make a request malformed; any of them alone must get a 4xx.
MUTATIONS = ["method", "version", "target", "no_colon", "header_name", "folded", "content_length",
             "two_lengths", "transfer_encoding", "two_hosts", "long_line", "many_headers", "http09"]


@pytest.fixture(scope="module")
def agent():
    push = free_port()
    with running_agent("--simulate", "healthy,input_starved", "--history", "none", "--interval", "0.2",
                       env={"FLOPWATCH_TOKENS_PUSH_LISTEN": f"127.0.0.1:{push}"}) as (url, process):
        yield {"url": url, "process": process, "web": int(url.rsplit(":", 1)[1]), "push": push}


def ticks(agent) -> float:
    return float(re.search(r"^flopwatch_ticks_total (\S+)", get(agent["url"] + "/metrics"), re.M).group(1))


def status_of(process, field: str) -> int:
    with open(f"/proc/{process.pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def open_fds(process) -> int:
    return len(os.listdir(f"/proc/{process.pid}/fd"))


@st.composite
def malformed_requests(draw, method: str, path: str) -> bytes:
    token = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12)
    safe = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
                   min_size=1, max_size=40)
    body = b'{"generated_tokens": 1}' if method == "POST" else b""
    headers = [("Host", "127.0.0.1")]
    if method == "POST":
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    line = [method, path, "HTTP/1.1"]
    extra: list[str] = []
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3, unique=True))
    for mutation in mutations:
        if mutation == "method":
            line[0] = draw(token.filter(lambda m: m not in (method, "HEAD")))
        elif mutation == "version":
            line[2] = draw(st.sampled_from(["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/1.10", "http/1.1", "HTTP/3",
                                            "HTTP/1.1.1", "HTTP/x"]) | safe.map(lambda s: "HTTP/9" + s))
        elif mutation == "target":  # a path no endpoint has, or one split by a space
            line[1] = draw(st.sampled_from([path.rstrip("/") + "/x", "x" + path, path + " " + path])) + draw(safe)
        elif mutation == "no_colon":
            extra.append(draw(safe))
        elif mutation == "header_name":
            extra.append(draw(safe) + draw(st.sampled_from(SEPARATORS)) + draw(safe) + ": x")
        elif mutation == "folded":
            extra.append(draw(st.sampled_from([" ", "\t"])) + draw(safe))
        elif mutation == "content_length":
            extra.append("Content-Length: " + draw(st.sampled_from(["-1", "abc", "1.5", "0x10", "", "1 2"])))
        elif mutation == "two_lengths":
            extra += [f"Content-Length: {len(body) + 1}", f"Content-Length: {len(body) + 2}"]
        elif mutation == "transfer_encoding":
            extra.append("Transfer-Encoding: " + draw(st.sampled_from(["chunked", "gzip", "identity, chunked"])))
        elif mutation == "two_hosts":
            extra.append("Host: example.org")
        elif mutation == "long_line":
            extra.append("X-Long: " + "a" * draw(st.integers(65_537, 70_000)))
        elif mutation == "many_headers":
            extra += [f"X-H{i}: 1" for i in range(draw(st.integers(101, 130)))]
    if "http09" in mutations:  # no version at all
        line = line[:2]
    head = [" ".join(line)] + [f"{k}: {v}" for k, v in headers]
    position = draw(st.integers(0, len(head) - 1)) + 1
    head[position:position] = extra
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def status_code(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def fuzz(agent, method: str, path: str, port: str, examples: int, answers: collections.Counter) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(malformed_requests(method, path))
    def each_gets_a_4xx(request: bytes) -> None:
        status = status_code(agent[port], request)
        answers[status] += 1
        assert 400 <= status < 500, request[:300]

    each_gets_a_4xx()


def test_1000_malformed_requests_to_each_endpoint_get_a_4xx_while_sampling_goes_on_in_flat_memory(agent):
    answers: collections.Counter = collections.Counter()
    fuzz(agent, *ENDPOINTS[0], examples=200, answers=answers)  # warm up: threads and buffers at their size
    rss, before = status_of(agent["process"], "VmRSS"), ticks(agent)
    answers.clear()
    for endpoint in ENDPOINTS:
        fuzz(agent, *endpoint, examples=EXAMPLES, answers=answers)
    grown = (status_of(agent["process"], "VmRSS") - rss) * 1024
    print(f"\n{sum(answers.values())} malformed requests: {dict(sorted(answers.items()))}; RSS {rss / 1024:.1f} MiB "
          f"before, {grown / MIB:+.1f} MiB after; ticks {before:.0f} -> {ticks(agent):.0f}")
    assert grown < 8 * MIB
    assert ticks(agent) > before + 10
    assert agent["process"].poll() is None


def test_slow_clients_holding_connections_open_do_not_block_metrics(agent):
    fds = open_fds(agent["process"])
    held = []
    for n in range(100):
        s = socket.create_connection(("127.0.0.1", agent["web"]), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        # Half send a request that never ends; half ask for /metrics and never read it.
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + (b"\r\n" if n % 2 else b""))
        held.append(s)
    try:
        for path in ("/metrics", "/api/v1/status", "/-/ready"):
            with urllib.request.urlopen(agent["url"] + path, timeout=5) as response:
                assert response.status == 200
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: open_fds(agent["process"]) <= fds)  # every held connection let go


@pytest.fixture(scope="module")
def reloadable():
    running = live.start(live.simulated_config(["healthy"], interval=0.2))
    yield running
    running.stop()


@pytest.mark.parametrize("contents", [
    "[diagnosis\n",  # not TOML
    "[diagnosis]\nno_such_threshold = 1\n",
    '[diagnosis]\nutilization_threshold = "high"\n',
    "agent = 3\n",  # not a section
    b"\xff\xfe\x00[agent]",  # not text
    '[agent]\nweb_config_file = "/nonexistent/web.yml"\n',
    None,  # the file is gone
], ids=["syntax", "unknown-key", "wrong-type", "not-a-section", "binary", "missing-web-config", "deleted"])
def test_a_bad_config_on_reload_keeps_the_running_one(reloadable, tmp_path, caplog, contents):
    path = tmp_path / "config.toml"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents is not None:
        path.write_text(contents)
    running = reloadable.agent.config
    with caplog.at_level(logging.ERROR, logger="flopwatch"):
        run_command._reload(str(path), {}, reloadable.agent, reloadable.server)
    assert reloadable.agent.config is running
    assert "reload failed, keeping the running configuration" in caplog.text
    assert reloadable.wait_ticks(2)  # and sampling goes on
