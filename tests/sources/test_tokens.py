"""Token sources over real sockets: the push endpoint, the client, and inference servers' /metrics
pages in their own exposition formats, served by a local HTTP server."""

import http.client
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from flopwatch.commands import cli
from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.client import TokenClient
from flopwatch.config import Config
from flopwatch.daemon import schedule
from flopwatch.sources.tokens import (
    ListenRefused, PushServer, Scraper, TokenLedger, TokenSource, parse_exposition, parse_target, push_address,
)
from flopwatch.judge.tokencost import window_entry

MODEL = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'

# vLLM (Python prometheus_client; V1 engines add an `engine` label).
VLLM = f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",{MODEL}}} 3.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",{MODEL}}} 1200.0
vllm:prompt_tokens_total{{engine="1",{MODEL}}} 800.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{{engine="0",{MODEL}}} 1.7637e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",{MODEL}}} 5000.0
vllm:generation_tokens_total{{engine="1",{MODEL}}} 4000.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",{MODEL}}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",{MODEL}}} 40.0
vllm:time_to_first_token_seconds_count{{engine="0",{MODEL}}} 40.0
vllm:time_to_first_token_seconds_sum{{engine="0",{MODEL}}} 3.2
"""

# Hugging Face TGI (the Rust metrics exporter: no HELP lines, per-request histograms).
TGI = """# TYPE tgi_request_count counter
tgi_request_count 12
# TYPE tgi_queue_size gauge
tgi_queue_size 0
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="32"} 2
tgi_request_input_length_bucket{le="1024"} 12
tgi_request_input_length_bucket{le="+Inf"} 12
tgi_request_input_length_sum 1534
tgi_request_input_length_count 12
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="1"} 0
tgi_request_generated_tokens_bucket{le="512"} 12
tgi_request_generated_tokens_bucket{le="+Inf"} 12
tgi_request_generated_tokens_sum 2400
tgi_request_generated_tokens_count 12
"""

# SGLang (Python prometheus_client, labelled by model).
SGLANG = f"""# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{{{MODEL}}} 7.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{{{MODEL}}} 8.0
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{{{MODEL}}} 0.28
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = self.server.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_page():
    """A local /metrics server; set `.page` to what it serves."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    server.page = ""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def push():
    ledger = TokenLedger()
    server = PushServer("127.0.0.1:0", ledger)
    server.start()
    yield server, ledger
    server.close()


def _post(url: str, body: bytes, content_type: str = "application/json", method: str = "POST", path: str = "/v1/tokens"):
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def _totals(ledger):
    return {(c.source, c.job, tuple(sorted(c.pids))): (c.prompt_tokens, c.generated_tokens) for c in ledger.snapshot()}


# -- exposition formats --------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    (VLLM, ("vllm", 2000, 9000)), (TGI, ("tgi", 1534, 2400)), (SGLANG, ("sglang", 7, 8)),
])
def test_token_counters_of_each_inference_server(text, expected):
    assert parse_exposition(text) == expected


def test_a_page_without_token_counters_is_no_server():
    assert parse_exposition("# TYPE up gauge\nup 1\n") is None


def test_scrape_target_fragments_name_the_pid_or_job():
    assert parse_target("http://127.0.0.1:8000/metrics#pid=4242").pid == 4242
    assert parse_target("http://127.0.0.1:8000/metrics#job=llama").job == "llama"
    with pytest.raises(ValueError, match="pid=N or job=NAME"):
        parse_target("http://127.0.0.1:8000/metrics#port=1")
    with pytest.raises(ValueError, match="not an http"):
        parse_target("127.0.0.1:8000/metrics")


# -- scraping ------------------------------------------------------------------------------------

def test_scraping_counts_tokens_from_the_first_reading_on(metrics_page):
    ledger = TokenLedger()
    url = f"http://127.0.0.1:{metrics_page.server_port}/metrics"
    scraper = Scraper([parse_target(url + "#job=llama")], ledger)
    metrics_page.page = VLLM
    scraper.scrape()
    metrics_page.page = VLLM.replace("5000.0", "5500.0").replace("1200.0", "1300.0")
    scraper.scrape()
    assert _totals(ledger) == {("vllm", "llama", ()): (100, 500)}


def test_a_restarted_server_counts_on_from_zero(metrics_page):
    ledger = TokenLedger()
    scraper = Scraper([parse_target(f"http://127.0.0.1:{metrics_page.server_port}/metrics#pid=77")], ledger)
    metrics_page.page = SGLANG.replace("8.0", "100.0")
    scraper.scrape()
    metrics_page.page = SGLANG.replace("8.0", "130.0")
    scraper.scrape()
    metrics_page.page = SGLANG.replace("8.0", "20.0")  # restarted: 20 new tokens
    scraper.scrape()
    assert _totals(ledger)[("sglang", None, (77,))] == (0, 50)


def test_a_local_target_is_matched_to_the_process_listening_on_its_port(metrics_page):
    ledger = TokenLedger()
    scraper = Scraper([parse_target(f"http://127.0.0.1:{metrics_page.server_port}/metrics")], ledger)
    metrics_page.page = TGI
    scraper.scrape()
    (row,) = ledger.snapshot()
    assert (row.source, os.getpid() in row.pids) == ("tgi", True)


def test_a_failing_target_is_a_zero_on_source_up_not_a_crash(metrics_page):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}/metrics"
    closed.close()
    metrics_page.page = VLLM
    source = TokenSource(scrape_urls=[dead, f"http://127.0.0.1:{metrics_page.server_port}/metrics#job=a"])
    source.scrape()
    up = {s.labels["target"]: s.value for f in source.collect() if f.name == "flopwatch_token_source_up" for s in f.samples}
    assert up == {dead: 0, f"http://127.0.0.1:{metrics_page.server_port}/metrics": 1}


# -- the push endpoint ---------------------------------------------------------------------------

def test_a_push_is_counted_by_job_and_pid(push):
    server, ledger = push
    assert _post(server.url, b'{"job": "eval", "pid": 4242, "prompt_tokens": 10, "generated_tokens": 5}') == 204
    assert _post(server.url, b'{"job": "eval", "pid": 4242, "generated_tokens": 7}') == 204
    assert _totals(ledger) == {("push", "eval", (4242,)): (10, 12)}


@pytest.mark.parametrize("body,content_type,status", [
    (b"{not json", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'{"prompt_tokens": -1}', "application/json", 400),
    (b'{"prompt_tokens": 1.5}', "application/json", 400),
    (b'{"prompt_tokens": true}', "application/json", 400),
    (b'{"prompt_tokens": 1, "tokens": 2}', "application/json", 400),
    (b'{"pid": "12"}', "application/json", 400),
    (b'{"job": ""}', "application/json", 400),
    (b'{"prompt_tokens": 1}', "text/plain", 415),
    (b'{"prompt_tokens": 1}', "", 415),
    (b'{"job": "' + b"x" * 70_000 + b'"}', "application/json", 413),
])
def test_a_malformed_push_gets_a_4xx_and_counts_nothing(push, body, content_type, status):
    server, ledger = push
    assert _post(server.url, body, content_type) == status
    assert ledger.snapshot() == ()
    assert server.rejected == 1


def test_other_paths_and_methods_are_refused(push):
    server, _ = push
    assert _post(server.url, b"{}", path="/metrics") == 404
    assert _post(server.url, b"", method="GET") == 405


def test_a_full_ledger_answers_429(push):
    server, ledger = push
    ledger.max_rows = 1
    assert _post(server.url, b'{"pid": 1, "prompt_tokens": 1}') == 204
    assert _post(server.url, b'{"pid": 2, "prompt_tokens": 1}') == 429


def test_a_client_hanging_up_before_its_answer_is_no_traceback(push, capsys):
    server, _ = push
    try:
        raise BrokenPipeError(32, "Broken pipe")  # what writing an answer to a closed connection raises
    except BrokenPipeError:
        server._server.handle_error(None, ("127.0.0.1", 50000))  # as socketserver calls it
    assert capsys.readouterr().err == ""


def test_the_push_endpoint_refuses_a_non_loopback_address_unless_allowed():
    with pytest.raises(ListenRefused, match="allow_remote_push"):
        push_address("0.0.0.0:9766", allow_remote=False)
    assert push_address("0.0.0.0:9766", allow_remote=True) == ("tcp", ("0.0.0.0", 9766))
    assert push_address("[::1]:9766", allow_remote=False) == ("tcp", ("::1", 9766))


def test_run_with_a_remote_push_address_exits_2_with_the_reason():
    result = CliRunner().invoke(cli.main, ["run", "--simulate", "healthy", "--listen", "127.0.0.1:0"],
                                env={"FLOPWATCH_TOKENS_PUSH_LISTEN": "10.1.2.3:9766"})
    assert result.exit_code == 2
    assert "would accept data from other hosts" in result.output


def test_over_a_unix_socket_the_kernel_names_the_pushing_process(tmp_path):
    ledger = TokenLedger()
    server = PushServer(f"unix:{tmp_path}/tokens.sock", ledger)
    server.start()
    try:
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(f"{tmp_path}/tokens.sock")
        body = b'{"generated_tokens": 3}'
        connection.sendall(b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert connection.recv(100).startswith(b"HTTP/1.1 204")
        connection.close()
        assert _totals(ledger) == {("push", None, (os.getpid(),)): (0, 3)}
    finally:
        server.close()


# -- the client ----------------------------------------------------------------------------------

def test_the_client_context_manager_flushes_on_exit(push):
    server, ledger = push
    with TokenClient(server.url, job="eval", flush_interval=3600) as client:
        client.add(prompt_tokens=100)
        client.add(generated_tokens=30)
        client.add(generated_tokens=2, job="other")
    assert _totals(ledger) == {("push", "eval", (os.getpid(),)): (100, 30),
                               ("push", "other", (os.getpid(),)): (0, 2)}


def test_the_client_callback_counts_each_step(push):
    server, ledger = push
    client = TokenClient(server.url, flush_interval=3600)
    step = client.callback()
    for _ in range(4):
        step(512)
    client.flush()
    assert _totals(ledger) == {("push", None, (os.getpid(),)): (2048, 0)}


def test_the_client_over_a_unix_socket(tmp_path):
    ledger = TokenLedger()
    server = PushServer(f"unix:{tmp_path}/t.sock", ledger)
    server.start()
    try:
        with TokenClient(f"unix:{tmp_path}/t.sock") as client:
            client.add(generated_tokens=9)
        assert _totals(ledger) == {("push", None, (os.getpid(),)): (0, 9)}
    finally:
        server.close()


def test_the_client_keeps_counts_while_the_agent_is_down_and_sends_them_later():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    clock = VirtualClock(0.0)
    client = TokenClient(f"http://127.0.0.1:{port}", flush_interval=1.0, clock=clock)
    clock.now = 2.0
    client.add(generated_tokens=5)  # due: the flush fails quietly
    assert (client.failures, client.pending) == (1, {None: [0, 5]})
    clock.now = 2.5
    client.add(generated_tokens=5)  # backing off: no attempt
    assert client.failures == 1
    ledger = TokenLedger()
    server = PushServer(f"127.0.0.1:{port}", ledger)
    server.start()
    try:
        clock.now = 10.0
        client.add(generated_tokens=1)
        assert (client.pending, _totals(ledger)) == ({}, {("push", None, (os.getpid(),)): (0, 11)})
    finally:
        server.close()


# -- the agent -----------------------------------------------------------------------------------

def _simulated_agent(scenarios, **tokens):
    config = Config()
    config.agent.simulate = scenarios
    config.tokens.push_listen = "127.0.0.1:0"
    for key, value in tokens.items():
        setattr(config.tokens, key, value)
    clock, wall = VirtualClock(0.0), VirtualClock(1_700_000_000.0)
    built = build_agent(config, clock=clock, wall_clock=wall)
    built.agent.tokens.start()

    def tick():
        clock.now += 1.0
        wall.now += 1.0
        return built.agent.tick()
    return built, tick


def test_pushed_tokens_land_on_the_gpu_of_their_pid_with_their_cost():
    built, tick = _simulated_agent(["healthy", "healthy"], price_per_gpu_hour=3.6)
    try:
        tick()
        with TokenClient(built.agent.tokens.push.url, pid=101_000) as client:  # GPU 1's process
            client.add(generated_tokens=1000)
        state = tick()
        gpu0, gpu1 = state.gpus
        assert gpu0.tokens.totals == {}
        assert gpu1.tokens.totals == {("push", "alice:train.py", "generated"): 1000}
        window = gpu1.tokens
        # The window starts with the first tokens counted: the tick they were made in.
        joules = window_entry(state.gpus[1], 0.0).joules
        assert window.joules_per_token == pytest.approx(joules / 1000)
        assert window.gpu_seconds_per_1k_tokens == pytest.approx(window.window_seconds)
        assert window.cost_per_1m_tokens == pytest.approx(3.6 * window.window_seconds / 3600 / 1000 * 1e6)
    finally:
        built.agent.close()


def test_the_agent_keeps_ticking_through_malformed_pushes_and_exports_tokens():
    built, tick = _simulated_agent(["healthy"])
    try:
        tick()
        url = built.agent.tokens.push.url
        assert _post(url, b"garbage") == 400
        assert _post(url, json.dumps({"job": "eval", "prompt_tokens": 64}).encode()) == 204
        state = tick()
        assert state.collector_success["tokens"] is True
        assert state.gpus[0].tokens.totals == {("push", "eval", "prompt"): 64}  # the only GPU takes it
        text = generate_latest(built.exporter.registry()).decode()
        assert 'flopwatch_tokens_total{gpu="0",job="eval",kind="prompt",source="push"' in text
        assert "flopwatch_joules_per_token{" in text
        assert "flopwatch_token_pushes_rejected_total 1.0" in text
    finally:
        built.agent.close()


def test_scraping_has_its_own_scheduler_job(metrics_page):
    built, _ = _simulated_agent(["healthy"], scrape_urls=[f"http://127.0.0.1:{metrics_page.server_port}/metrics"])
    scheduler = schedule(built.agent, 3600)
    try:
        assert built.agent.tokens.scrape in [job.func for job in scheduler.get_jobs()]
    finally:
        scheduler.shutdown(wait=False)
        built.agent.close()


def test_two_processes_sharing_a_gpu_are_a_contention_finding_with_each_share_and_job():
    built, tick = _simulated_agent(["contention"])
    try:
        for _ in range(40):
            state = tick()
        finding = state.gpus[0].finding
        assert finding.cause == "contention"
        shares = finding.evidence["sm_shares"]
        assert "100000 alice:train_a.py 0." in shares and "100001 bob:train_b.py 0." in shares
        assert sorted(p.job for p in state.gpus[0].processes) == ["alice:train_a.py", "bob:train_b.py"]
    finally:
        built.agent.close()


def test_a_push_port_in_use_turns_pushes_off_but_not_the_agent(push):
    server, _ = push
    source = TokenSource(push_listen=server.url.removeprefix("http://"))
    source.start()
    up = [s.value for f in source.collect() if f.name == "flopwatch_token_push_up" for s in f.samples]
    assert (source.push, up) == (None, [0])
    assert "Address already in use" in source.push_error


def test_exported_token_jobs_are_bounded_the_rest_summed_as_other():
    built, tick = _simulated_agent(["healthy"])
    built.exporter.top_processes = 2
    try:
        tick()
        for job, tokens in (("a", 30), ("b", 20), ("c", 5), ("d", 1)):
            with TokenClient(built.agent.tokens.push.url, job=job) as client:
                client.add(prompt_tokens=tokens)
        tick()
        text = generate_latest(built.exporter.registry()).decode()
        jobs = {line.split('job="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("flopwatch_tokens_total{")}
        assert jobs == {"a": 30, "b": 20, "other": 6}
    finally:
        built.agent.close()
