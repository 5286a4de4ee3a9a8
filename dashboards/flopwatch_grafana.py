"""Shared pieces of the flopwatch dashboards: data source, template variables, panel makers, layout.

Each ``*.dashboard.py`` beside this file imports it; ``generate-dashboard`` turns them into JSON.
Panels are placed by :func:`dashboard` left to right, wrapping at Grafana's 24 columns, so a
dashboard file lists what it shows and never a coordinate.
"""

from __future__ import annotations

import attr
from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    SORT_NUMERIC_ASC,
    TABLE_TARGET_FORMAT,
    Dashboard,
    DashboardLink,
    GridPos,
    Heatmap,
    HeatmapColor,
    RowPanel,
    Stat,
    StateTimeline,
    Table,
    TableSortByField,
    Target,
    Template,
    Templating,
    Threshold,
    TimeSeries,
    YAxis,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The agent labels per-process and token series with the workload's job. Prometheus keeps its own
# `job` (the scrape job, "flopwatch") and renames the scraped one to `exported_job`.
WORKLOAD_JOB = "exported_job"

# The alerting threshold of utilization (diagnosis.threshold's default), drawn on every
# utilization panel so a reader sees at a glance which GPUs would page.
UTILIZATION_THRESHOLD = 0.6

GRID_COLUMNS = 24

# Rates use Grafana's $__rate_interval: at least four scrape intervals, so no window is empty.
RATE = "[$__rate_interval]"


# --- template variables -------------------------------------------------------------------------


def datasource_variable() -> Template:
    return Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default="Prometheus",
    )


def _label_variable(name: str, label: str, query: str, *, multi: bool) -> Template:
    return Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        multi=multi,
        includeAll=multi,
        allValue=".*" if multi else None,
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
        sort=SORT_NUMERIC_ASC if name == "gpu" else 1,
    )


def instance_variable(*, multi: bool = True) -> Template:
    """The agents (host:port) to show; one at a time on the node view."""
    return _label_variable(
        "instance", "Node", "label_values(flopwatch_gpu_info, instance)", multi=multi
    )


def gpu_variable() -> Template:
    return _label_variable(
        "gpu", "GPU", 'label_values(flopwatch_gpu_info{instance=~"$instance"}, gpu)', multi=True
    )


def job_variable() -> Template:
    """Workload jobs seen in the per-process or token series."""
    return _label_variable(
        "job",
        "Job",
        f'label_values({{__name__=~"flopwatch_process_sm_ratio|flopwatch_tokens_total",'
        f' instance=~"$instance"}}, {WORKLOAD_JOB})',
        multi=True,
    )


def judged_job_variable() -> Template:
    """One job the fleet judge has a verdict on."""
    return _label_variable(
        "job", "Job", f"label_values(flopwatch_job_verdict, {WORKLOAD_JOB})", multi=False
    )


def price_variable() -> Template:
    """Price of one GPU-hour, typed in on the dashboard; token cost panels multiply by it."""
    return Template(
        name="gpu_hour_price",
        label="Price per GPU-hour (USD)",
        query="2.00",
        default="2.00",
        type="textbox",
    )


# --- targets and thresholds ---------------------------------------------------------------------


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> Target:
    """One PromQL query; instant ones come back as a table (one row per series)."""
    return Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        format=TABLE_TARGET_FORMAT if instant else "time_series",
        intervalFactor=1,
        datasource=DATASOURCE,
    )


def targets(*queries: tuple[str, str]) -> list[Target]:
    """Several (expr, legend) pairs, lettered A, B, C… in order."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def utilization_thresholds() -> list[Threshold]:
    return [Threshold("red", 0, 0.0), Threshold("green", 1, UTILIZATION_THRESHOLD)]


def neutral_thresholds() -> list[Threshold]:
    return [Threshold("green", 0, 0.0)]


# --- panels --------------------------------------------------------------------------------------
# Each maker takes the panel's size (width in columns of 24, height in rows of 30 px); dashboard()
# places it.


def _size(width: int, height: int) -> GridPos:
    return GridPos(h=height, w=width, x=0, y=0)


def timeseries(
    title: str,
    description: str,
    queries: list[Target],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    thresholds: list[Threshold] | None = None,
    stacked: bool = False,
    ratio: bool = False,
    bars: bool = False,
) -> TimeSeries:
    """A time-series panel; ``ratio`` pins the axis to 0–100 %, ``thresholds`` draws dashed lines."""
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        unit=unit,
        gridPos=_size(width, height),
        thresholds=thresholds or neutral_thresholds(),
        thresholdsStyleMode="dashed" if thresholds else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        fillOpacity=60 if bars else (20 if stacked else 0),
        drawStyle="bars" if bars else "line",
        valueMin=0 if ratio else None,
        valueMax=1 if ratio else None,
        legendDisplayMode="table",
        legendCalcs=["mean", "lastNotNull"],
        tooltipMode="multi",
    )


def utilization(title: str, description: str, queries: list[Target], **size) -> TimeSeries:
    """A 0–100 % panel with the alerting threshold drawn on it."""
    return timeseries(
        title,
        description,
        queries,
        "percentunit",
        ratio=True,
        thresholds=utilization_thresholds(),
        **size,
    )


def stat(
    title: str,
    description: str,
    query: Target,
    unit: str,
    *,
    width: int = 4,
    height: int = 4,
    thresholds: list[Threshold] | None = None,
    decimals: int | None = None,
) -> Stat:
    """A single number: the last value of ``query`` (an instant query over the range)."""
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[query],
        format=unit,
        gridPos=_size(width, height),
        thresholds=thresholds or neutral_thresholds(),
        reduceCalc="lastNotNull",
        graphMode="none",
        colorMode="value",
        decimals=decimals,
        noValue="no data",
    )


def table(
    title: str,
    description: str,
    queries: list[Target],
    columns: dict[str, tuple[str, str]],
    *,
    hidden: tuple[str, ...] = (),
    sort_by: str | None = None,
    descending: bool = False,
    unit: str = "none",
    width: int = 12,
    height: int = 8,
) -> Table:
    """Instant queries merged into one row per series.

    ``columns`` maps a result field (a label, or ``Value #A`` for query A's value) to its
    (header, unit); ``hidden`` drops fields nobody needs to read (Time, __name__…).
    """
    renames = {field: header for field, (header, _) in columns.items()}
    overrides = [
        {
            "matcher": {"id": "byName", "options": header},
            "properties": [{"id": "unit", "value": field_unit}],
        }
        for header, field_unit in columns.values()
    ]
    excluded = {field: True for field in ("Time", "__name__", "job", *hidden)}
    return Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        unit=unit,
        gridPos=_size(width, height),
        overrides=overrides,
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": excluded, "renameByName": renames},
            },
        ],
        sortBy=[TableSortByField(displayName=renames.get(sort_by, ""), desc=descending)]
        if sort_by
        else [],
    )


def state_timeline(
    title: str, description: str, queries: list[Target], *, width: int = 24, height: int = 10
) -> StateTimeline:
    """A row per series over time, coloured by a 0–1 ratio against the alerting threshold:
    the ranks × time heatmap of one job."""
    return StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        gridPos=_size(width, height),
        thresholds=utilization_thresholds(),
        mergeValues=False,
        showValue="never",
        rowHeight=0.9,
        legendDisplayMode="hidden",
        extraJson={"fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1}}},
    )


def ratio_heatmap(title: str, description: str, query: Target, *, width: int = 12, height: int = 8):
    """How many series sit at each level of a 0–1 ratio over time (one bucket per 10 %)."""
    return Heatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[query],
        gridPos=_size(width, height),
        dataFormat="timeseries",
        yBucketSize=0.1,
        yAxis=YAxis(format="percentunit", min=0, max=1, decimals=0),
        color=HeatmapColor(mode="opacity", cardColor="#5794F2"),
        hideZeroBuckets=True,
        # The legacy heatmap keeps its unit on the axis; newer Grafana reads fieldConfig.
        extraJson={"fieldConfig": {"defaults": {"unit": "percentunit"}}},
    )


# --- the dashboard ------------------------------------------------------------------------------


def _placed(panel, x: int, y: int):
    return attr.evolve(panel, gridPos=attr.evolve(panel.gridPos, x=x, y=y))


def layout(sections: list[tuple[str, list]]) -> list:
    """Rows of panels, each section under a row header, flowed left to right in 24 columns."""
    placed, y = [], 0
    for title, panels in sections:
        placed.append(RowPanel(title=title, gridPos=GridPos(h=1, w=GRID_COLUMNS, x=0, y=y)))
        y, x, line_height = y + 1, 0, 0
        for panel in panels:
            if x + panel.gridPos.w > GRID_COLUMNS:
                y, x, line_height = y + line_height, 0, 0
            placed.append(_placed(panel, x, y))
            x += panel.gridPos.w
            line_height = max(line_height, panel.gridPos.h)
        y += line_height
    return placed


def build_dashboard(
    title: str,
    uid: str,
    description: str,
    variables: list[Template],
    sections: list[tuple[str, list]],
) -> Dashboard:
    """A flopwatch dashboard: tagged, linked to its siblings, panels laid out and numbered."""
    return Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=["flopwatch", "gpu"],
        timezone="browser",
        refresh="30s",
        schemaVersion=37,
        graphTooltip=1,
        links=[
            DashboardLink(
                title="flopwatch",
                tags=["flopwatch"],
                asDropdown=True,
                includeVars=True,
                keepTime=True,
            )
        ],
        templating=Templating(list=variables),
        panels=layout(sections),
    ).auto_panel_ids()

