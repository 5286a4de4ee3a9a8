"""The Grafana dashboards: generated from code, documented, and every query answered by Prometheus."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

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


def panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data (row headers left out)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def test_there_are_fleet_node_and_token_cost_dashboards():
    assert [source.name for source in SOURCES] == [
        "fleet.dashboard.py",
        "node.dashboard.py",
        "tokens.dashboard.py",
    ]


@pytest.mark.parametrize("source", SOURCES, ids=lambda source: source.name)
def test_committed_json_is_what_the_code_generates(source):
    assert committed(source).read_text() == generated_json(source), (
        f"{committed(source).name} is stale: run "
        f"`generate-dashboard -o {committed(source).name} {source.name}` in dashboards/"
    )


@pytest.mark.parametrize("name", ["fleet", "node", "tokens"])
def test_every_panel_has_a_description_and_a_unit(name):
    for panel in panels(load(name)):
        assert panel["description"], f"{panel['title']} has no description"
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']} has no unit"


@pytest.mark.parametrize("name", ["fleet", "node", "tokens"])
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


@pytest.mark.parametrize("name", ["fleet", "node", "tokens"])
def test_rate_windows_follow_grafana_not_a_fixed_duration(name):
    windows = {
        expr.split("[", 1)[1].split("]", 1)[0]
        for panel in panels(load(name))
        for expr in (target["expr"] for target in panel["targets"])
        if "[" in expr
    }
    assert windows <= {"$__rate_interval", "$__range"}
