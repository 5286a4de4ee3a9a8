"""The Grafana dashboards: generated from code, documented, and every query answered by Prometheus."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.servers.prometheus import Server, eventually, http_json, start_prometheus

generator = pytest.importorskip("grafanalib._gen")

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
SOURCES = sorted(DASHBOARDS.glob("*.dashboard.py"))


def generated_json(source: Path) -> str:
    """What `generate-dashboard -o X.json X.dashboard.py` writes."""
    stream = io.StringIO()
    generator.write_dashboard(generator.loader(str(source)), stream)
    return stream.getvalue()


def committed(source: Path) -> Path:
    return source.with_name(source.name.removesuffix(".dashboard.py") + ".json")


DASHBOARD_NAMES = ["fleet", "jobs", "node", "tokens"]


def panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data (row headers left out)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def test_there_are_fleet_job_node_and_token_cost_dashboards():
    assert [source.name for source in SOURCES] == [
        "fleet.dashboard.py",
        "jobs.dashboard.py",
        "node.dashboard.py",
        "tokens.dashboard.py",
    ]


@pytest.mark.parametrize("source", SOURCES, ids=lambda source: source.name)
def test_committed_json_is_what_the_code_generates(source):
    assert committed(source).read_text() == generated_json(source), (
        f"{committed(source).name} is stale: run "
        f"`generate-dashboard -o {committed(source).name} {source.name}` in dashboards/"
    )


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_panel_has_a_description_and_a_unit(name):
    for panel in panels(load(name)):
        assert panel["description"], f"{panel['title']} has no description"
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']} has no unit"


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_panel_queries_the_chosen_data_source(name):
    for panel in panels(load(name)):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{panel['title']} has no query"


def test_node_utilization_panel_draws_the_60_percent_threshold():
    (panel,) = [p for p in panels(load("node")) if p["title"].startswith("Utilization")]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit"
    assert [step["value"] for step in defaults["thresholds"]["steps"]][1:] == [0.6]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


def test_node_utilization_panel_sets_sm_activity_against_nvml():
    (panel,) = [p for p in panels(load("node")) if p["title"].startswith("Utilization")]
    assert [target["expr"].split("{")[0] for target in panel["targets"]] == [
        "flopwatch_utilization_ratio",
        "flopwatch_nvml_utilization_ratio",
    ]


@pytest.mark.parametrize("name", ["fleet", "node", "tokens"])
def test_dashboards_offer_datasource_instance_and_job_variables(name):
    variables = {v["name"] for v in load(name)["templating"]["list"]}
    assert {"datasource", "instance", "job"} <= variables


def test_node_view_picks_gpus():
    assert "gpu" in {v["name"] for v in load("node")["templating"]["list"]}


def test_job_view_picks_one_job_the_judge_has_a_verdict_on():
    [job] = [v for v in load("jobs")["templating"]["list"] if v["name"] == "job"]
    assert (job["query"], job["multi"]) == ("label_values(flopwatch_job_verdict, exported_job)", False)


def test_job_view_draws_ranks_over_time_against_the_threshold_with_the_straggler_marked():
    (panel,) = [p for p in panels(load("jobs")) if p["type"] == "state-timeline"]
    assert [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]][1:] == [0.6]
    straggler, ranks = panel["targets"]
    assert "flopwatch_job_straggler" in straggler["expr"] and "{{cause}}" in straggler["legendFormat"]
    assert ranks["legendFormat"] == "rank {{rank}}"


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_rate_windows_follow_grafana_not_a_fixed_duration(name):
    windows = {
        expr.split("[", 1)[1].split("]", 1)[0].rstrip(":")  # a subquery [$__range:] too
        for panel in panels(load(name))
        for expr in (target["expr"] for target in panel["targets"])
        if "[" in expr
    }
    assert windows <= {"$__rate_interval", "$__range"}


# --- every query against a real Prometheus scraping simulated agents ----------------------------

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("healthy", "input_starved", "memory_bound")
STARVED_GPU = str(SCENARIOS.index("input_starved"))
# What Grafana would put in for a 1 s scrape interval and a short time range.
GRAFANA_INTERVALS = {"__rate_interval": "15s", "__interval": "1s", "__range": "30s"}
RATE_WINDOW_SECONDS = 15
# The job of the simulated trainers; the test pushes tokens for it, as a training loop would.
TOKEN_JOB = "alice:train.py"


# The job the fleet judge judges: four simulated GPUs of one agent as the ranks of one Slurm job,
# rank 3 starved of input, the others waiting for it in their all-reduce.
JUDGED_JOB = ("57", ("communication_bound",) * 3 + ("input_starved",))


class Agent(Server):
    """`flopwatch run` on simulated GPUs, one per scenario, serving /metrics on a loopback port."""

    name = "agent"

    def __init__(self, workdir: Path, scenarios: tuple[str, ...], history: str = "none", job: str = ""):
        super().__init__(workdir)
        self.address = f"127.0.0.1:{self.port}"
        self.push_url = f"http://127.0.0.1:{free_port()}"
        self.scenarios = scenarios
        self.history = history
        self.job = job

    def command(self) -> list[str]:
        return [
            "env", f"PYTHONPATH={REPO / 'agent'}", f"FLOPWATCH_TOKENS_PUSH_LISTEN={self.push_url[len('http://'):]}",
            sys.executable, "-m", "flopwatch",
            "run", "--simulate", ",".join(self.scenarios), "--listen", self.address,
            "--history", self.history, "--interval", "0.2", *(["--simulate-job", self.job] if self.job else []),
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


class Judge(Server):
    """`flopwatch judge` over an agents' history, serving its verdicts on /metrics, paging nobody."""

    name = "judge"

    def __init__(self, workdir: Path, history: str):
        super().__init__(workdir)
        self.address = f"127.0.0.1:{self.port}"
        self.history = history

    def command(self) -> list[str]:
        return [
            "env", f"PYTHONPATH={REPO / 'agent'}", "FLOPWATCH_ALERTING_ALERTMANAGER_URLS=",
            sys.executable, "-m", "flopwatch",
            "judge", "--from-store", self.history, "--listen", self.address, "--interval", "1",
        ]  # fmt: skip

    _ready = Agent._ready


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus that has scraped two simulated agents every second for a full rate window,
    with the shipped rules (the fleet dashboard reads recorded series), and the fleet judge over a
    third agent whose GPUs are the ranks of one job, until it names that job's straggler."""
    workdir = tmp_path_factory.mktemp("dashboards")
    history = f"sqlite:///{workdir / 'history.db'}"
    with contextlib.ExitStack() as running:
        agents = [
            running.enter_context(Agent(workdir / f"agent-{n}", scenarios).start())
            for n, scenarios in enumerate([SCENARIOS, ("healthy", "input_starved")])
        ]
        ranks = running.enter_context(Agent(workdir / "ranks", JUDGED_JOB[1], history, JUDGED_JOB[0]).start())
        judge = running.enter_context(Judge(workdir / "judge", history).start())
        running.enter_context(pushing_tokens(agents))
        targets = [agent.address for agent in (*agents, ranks)] + [judge.address]
        prom = running.enter_context(start_prometheus(workdir, targets,
                                                      rule_files=[DASHBOARDS.parent / "alerts" / "flopwatch.rules.yml"]))
        eventually(
            lambda: len(prom.query(f"count_over_time(up[{RATE_WINDOW_SECONDS}s]) >= {RATE_WINDOW_SECONDS}"))
            == len(targets),
            timeout=RATE_WINDOW_SECONDS + 20,
            what="a full rate window of scrapes from every agent and the judge",
        )
        eventually(lambda: prom.query(f'flopwatch_job_straggler{{exported_job="slurm:{JUDGED_JOB[0]}"}}'),
                   timeout=60, what="the judge's straggler")
        prom.agent = agents[0].address
        yield prom


@contextlib.contextmanager
def pushing_tokens(agents):
    """Every agent's push endpoint gets tokens for the trainers' job, twice a second."""
    from flopwatch.client import TokenClient

    stop = threading.Event()

    def push() -> None:
        clients = [TokenClient(agent.push_url, job=TOKEN_JOB) for agent in agents]
        while not stop.wait(0.5):
            for client in clients:
                client.add(prompt_tokens=2048, generated_tokens=512)
                client.flush()

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation: $name and ${name}."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expr)


def variable_values(prom, name: str = "node") -> dict[str, str]:
    """Real values for the template variables: the first agent, its starved GPU and that GPU's job;
    on the job view, the job the judge judged."""
    selector = f'instance="{prom.agent}", gpu="{STARVED_GPU}"'
    (process, *_) = eventually(lambda: prom.query(f"flopwatch_process_sm_ratio{{{selector}}}"), what="a process")
    return {
        **GRAFANA_INTERVALS,
        "instance": prom.agent,
        "gpu": STARVED_GPU,
        "job": f"slurm:{JUDGED_JOB[0]}" if name == "jobs" else process["metric"]["exported_job"],
        "gpu_hour_price": "2.00",
    }


def run_query(prom, expr: str) -> list[dict]:
    """The instant query's result; a PromQL error fails with Prometheus' own message."""
    url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        answer = http_json(url)
    except urllib.error.HTTPError as error:
        pytest.fail(f"Prometheus rejected {expr!r}: {error.read().decode(errors='replace')}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


QUERIES = [
    pytest.param(name, panel["title"], query["expr"], id=f"{name}: {panel['title']} {query['refId']}")
    for name in DASHBOARD_NAMES
    for panel in panels(load(name))
    for query in panel["targets"]
]


@pytest.mark.slow
@pytest.mark.parametrize("name, title, expr", QUERIES)
def test_every_panel_query_returns_data_from_prometheus(prometheus, name, title, expr):
    query = substitute(expr, variable_values(prometheus, name))
    result = eventually(lambda: run_query(prometheus, query), timeout=5, what=f"data for {query}")
    assert result, f"{name} / {title}: {query} returned nothing"


VARIABLE_QUERY = re.compile(r"label_values\((?P<selector>.+), (?P<label>\w+)\)")


@pytest.mark.slow
@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_template_variables_list_real_values(prometheus, name):
    values = variable_values(prometheus, name)
    for variable in load(name)["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = VARIABLE_QUERY.fullmatch(variable["query"])
        selector = substitute(found["selector"], {**values, "instance": ".*"})
        listed = http_json(
            f"{prometheus.url}/api/v1/label/{found['label']}/values?"
            + urllib.parse.urlencode({"match[]": selector})
        )["data"]
        assert listed, f"{name}: variable {variable['name']} lists nothing for {selector}"


def query_range(prom, expr: str, seconds: int) -> list[dict]:
    """The last ``seconds`` of ``expr`` at 1 s steps, as Grafana asks for a time-series panel."""
    end = time.time()
    parameters = {"query": expr, "start": end - seconds, "end": end, "step": "1s"}
    return http_json(f"{prom.url}/api/v1/query_range?" + urllib.parse.urlencode(parameters))["data"]["result"]


def legend(query: dict, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), query["legendFormat"])


@pytest.mark.slow
def test_node_utilization_of_a_starved_gpu_crosses_the_60_percent_line(prometheus, tmp_path):
    """The starved GPU works in bursts: its panel swings across the threshold. Drawn to a PNG."""
    pyplot = pytest.importorskip("matplotlib.pyplot")
    (panel,) = [p for p in panels(load("node")) if p["title"].startswith("Utilization")]
    (threshold,) = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
    values = variable_values(prometheus)

    figure, axes = pyplot.subplots(figsize=(9, 4), dpi=100)
    lines = {}
    for query in panel["targets"]:
        (series,) = query_range(prometheus, substitute(query["expr"], values), seconds=30)
        times = [float(t) - float(series["values"][0][0]) for t, _ in series["values"]]
        ratios = [float(v) for _, v in series["values"]]
        lines[query["refId"]] = ratios
        axes.step(times, ratios, where="post", label=legend(query, series["metric"]))
    axes.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.0%}")
    axes.set(
        title=f"{panel['title']} — {values['instance']} GPU {values['gpu']} (input_starved)",
        xlabel="seconds",
        ylim=(0, 1.05),
    )
    axes.yaxis.set_major_formatter(lambda y, _: f"{y:.0%}")
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.tight_layout()
    figure.savefig(tmp_path / "node-utilization-input_starved.png")
    pyplot.close(figure)

    sm_active = lines["A"]
    assert min(sm_active) < threshold < max(sm_active)
    assert (tmp_path / "node-utilization-input_starved.png").stat().st_size > 0


@pytest.mark.slow
def test_job_view_names_the_straggler_rank_and_its_own_cause(prometheus):
    (panel,) = [p for p in panels(load("jobs")) if p["title"] == "Straggler"]
    query = substitute(panel["targets"][0]["expr"], variable_values(prometheus, "jobs"))
    (straggler,) = run_query(prometheus, query)
    assert (straggler["metric"]["rank"], straggler["metric"]["cause"]) == ("3", "input_starved")
