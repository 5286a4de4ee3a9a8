"""A ``Report`` as a terminal table, a plain-text summary, JSON, CSV or a self-contained HTML page.

The HTML page carries its plots as inline SVG (matplotlib, the ``report`` extra, imported only
here), so it opens with no network and its text (the causes) stays text.
"""

from __future__ import annotations

import csv
import html
import io
import json
from datetime import datetime
from typing import Any, Iterable, Sequence

from flopwatch.history.report import HeldBackTime, Report, Usage, as_dict

MISSING = "—"
# The table and the page list this many groups; JSON and CSV carry them all.
SHOWN_GROUPS = 40


class MissingExtra(RuntimeError):
    """A format needs an optional dependency that is not installed."""


# -- small formats -------------------------------------------------------------------------


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="minutes")


def _when_seconds(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:,.{digits}f}"


def _money(report: Report, value: float) -> str:
    return f"{value:,.2f} {report.prices.currency}"


def _span(report: Report) -> str:
    hours = (report.until - report.since) / 3600
    length = f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
    return f"{_when(report.since)} → {_when(report.until)} ({length})"


def _scope(report: Report) -> str:
    parts = [f"job {report.job}" if report.job else "", f"GPU {report.gpu}" if report.gpu else "",
             f"host {report.host}" if report.host else ""]
    return ", ".join(p for p in parts if p) or "all GPUs"


def title(report: Report) -> str:
    return f"flopwatch report: {_scope(report)}, {_span(report)}"


def empty_message(report: Report) -> str:
    return f"no history for {_scope(report)} between {_when(report.since)} and {_when(report.until)}"


def _costs_known(report: Report) -> bool:
    return bool(report.prices.per_gpu_hour or report.prices.per_kwh)


def _headline(report: Report) -> list[str]:
    t = report.total
    lines = [
        f"{len(report.hosts)} host(s), {report.gpus} GPU(s); read from the {report.level} level",
        f"GPU-hours {t.gpu_hours:,.2f} · mean utilization {_pct(t.mean_utilization)}"
        f" · flops utilization {_pct(t.mean_flops_utilization)}"
        f" · energy {_num(t.energy_kwh)} kWh" + (f" · cost {_money(report, t.cost)}" if _costs_known(report) else ""),
        f"Below the {report.utilization_threshold:.0%} utilization threshold: {t.wasted_gpu_hours:,.2f} GPU-hours"
        f" ({t.wasted_share:.0%})" + (f", {_money(report, t.wasted_cost)}" if _costs_known(report) else ""),
    ]
    if t.tokens:
        lines.append(f"Tokens {t.tokens:,.0f} · {_num(t.joules_per_token, 3)} J/token")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _culprit(h: HeldBackTime) -> str:
    if h.host is None:
        return f"its own all-reduce ({h.cause}, no straggler)"
    return f"rank {'?' if h.rank is None else h.rank} ({h.host} GPU {h.gpu}): {h.cause}"


def _held_back(report: Report) -> list[str]:
    """The job's line from the fleet judge: who held its ranks back, how long, what it cost them."""
    if not report.held_back:
        return []
    return ["Held back, as the fleet judge found (`flopwatch jobs`):", *(
        f"- {_culprit(h)} for {_duration(h.seconds)}; the other ranks waited {h.held_gpu_seconds / 3600:,.2f} GPU-hours"
        + (" (their nodes count it as communication_bound)" if h.host is not None else "")
        for h in report.held_back)]


def _reclaim_line(a: dict[str, Any]) -> str:
    """One reclaim decision or action: when, what, whose, why, and what came of it."""
    where = f"partition={a['partition'] or '?'}" if a["scheduler"] == "slurm" else a["scheduler"]
    return (f"{_when_seconds(a['ts'])}  {a['host']}  {a['action']} {a['job']} ({a['mode']})  user={a['user'] or '?'} "
            f"{where}  {a['cause']} for {a['held_seconds']:.0f} s  → {a['outcome']}")


def _reclaim_lines(report: Report) -> list[str]:
    return ["", "Reclaim (decisions and actions):", *(f"  {_reclaim_line(a)}" for a in report.reclaim)] \
        if report.reclaim else []


def render_text(report: Report) -> str:
    """A short summary for a scheduler's epilog to mail: the figures, then each cause and its fix."""
    if report.empty:
        return "\n".join([empty_message(report), *_reclaim_lines(report)]) + "\n"
    lines = [title(report), "", *_headline(report)]
    if report.held_back:
        lines += ["", *_held_back(report)]
    if report.causes:
        lines += ["", "Where the time went, and the fix:"]
        for c in report.causes:
            lines.append(f"- {c.cause}: {c.wasted_gpu_hours:,.2f} GPU-hours ({c.share:.0%}), {c.summary}.")
            lines.append(f"  {c.advice}")
            if c.contributing:
                lines.append(f"  Found with: {', '.join(c.contributing)}.")
            if c.top_stack:
                lines.append(f"  Stack: {c.top_stack}")
    return "\n".join(lines + _reclaim_lines(report)) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2) + "\n"


CSV_COLUMNS = ("section", "name", "gpu_hours", "mean_utilization", "mean_flops_utilization",
               "wasted_gpu_hours", "wasted_share", "energy_kwh", "tokens", "joules_per_token", "cost",
               "wasted_cost", "top_cause", "advice",
               # a ``reclaim`` row's (its name is the job, its top_cause the cause that made the decision)
               "ts", "host", "user", "scheduler", "action", "mode", "held_seconds", "outcome")


def render_csv(report: Report) -> str:
    """One row per figure set: ``total``, each group (section = the grouping), each ``cause``,
    each ``top_job``; then one ``reclaim`` row per decision or action. The numbers are JSON's, unrounded."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def usage_row(section: str, u: Usage) -> list[Any]:
        return [section, u.name, u.gpu_hours, u.mean_utilization, u.mean_flops_utilization,
                u.wasted_gpu_hours, u.wasted_share, u.energy_kwh, u.tokens, u.joules_per_token, u.cost,
                u.wasted_cost, u.top_cause, ""]

    rows = [usage_row("total", report.total), *(usage_row(report.group_by, u) for u in report.groups)]
    rows += [["cause", c.cause, None, None, None, c.wasted_gpu_hours, c.share, None, None, None, None,
              c.wasted_cost, c.cause, c.advice] for c in report.causes]
    rows += [usage_row("top_job", u) for u in report.top_jobs]
    usage_blanks = [None] * (CSV_COLUMNS.index("top_cause") - 2)
    rows += [["reclaim", a["job"], *usage_blanks, a["cause"], "", a["ts"], a["host"], a["user"], a["scheduler"],
              a["action"], a["mode"], a["held_seconds"], a["outcome"]] for a in report.reclaim]
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def _usage_cells(report: Report, u: Usage) -> list[str]:
    cells = [u.name, f"{u.gpu_hours:,.2f}", _pct(u.mean_utilization), _pct(u.mean_flops_utilization),
             f"{u.wasted_gpu_hours:,.2f}", f"{u.wasted_share:.0%}", u.top_cause or MISSING, _num(u.energy_kwh)]
    if report.total.tokens:
        cells += [_num(u.tokens, 0), _num(u.joules_per_token, 3)]
    if _costs_known(report):
        cells += [_money(report, u.cost), _money(report, u.wasted_cost)]
    return cells


def _usage_headings(report: Report, first: str) -> list[str]:
    headings = [first, "GPU-h", "util", "flops", "wasted GPU-h", "wasted", "top cause", "kWh"]
    if report.total.tokens:
        headings += ["tokens", "J/token"]
    if _costs_known(report):
        headings += ["cost", "wasted cost"]
    return headings


def _more(report: Report) -> list[str]:
    hidden = len(report.groups) - SHOWN_GROUPS
    return [f"… and {hidden} more by GPU-hours (--format json or csv lists all)"] if hidden > 0 else []


def render_table(report: Report) -> str:
    """The terminal view: headline, waste by cause with the fix, the groups, the top jobs."""
    if report.empty:
        return "\n".join([empty_message(report), *_reclaim_lines(report)])
    from rich.table import Table

    from flopwatch.commands.tables import render

    causes = Table(title="Wasted GPU-hours by cause")
    for column in ("cause", "GPU-h", "share", "advice"):
        causes.add_column(column, overflow="fold")
    for c in report.causes:
        causes.add_row(c.cause, f"{c.wasted_gpu_hours:,.2f}", f"{c.share:.0%}",
                       c.advice + (f"\nFound with: {', '.join(c.contributing)}" if c.contributing else "")
                       + (f"\nStack: {c.top_stack}" if c.top_stack else ""))
    parts = [title(report), *_headline(report), *([""] + _held_back(report) if report.held_back else []), "",
             render(causes) if report.causes else "No GPU time wasted."]
    groups = Table(title=f"By {report.group_by}")
    for column in _usage_headings(report, report.group_by):
        groups.add_column(column)
    for u in report.groups[:SHOWN_GROUPS]:
        groups.add_row(*_usage_cells(report, u))
    parts += ["", render(groups), *_more(report)]
    if report.top_jobs and report.group_by != "job":
        top = Table(title="Top jobs by waste")
        for column in _usage_headings(report, "job"):
            top.add_column(column)
        for u in report.top_jobs:
            top.add_row(*_usage_cells(report, u))
        parts += ["", render(top)]
    return "\n".join(parts + _reclaim_lines(report))


# -- HTML --------------------------------------------------------------------------------------


# A fixed colour per cause, the same in every report; neighbours in the usual top five differ.
CAUSE_COLORS = {
    "idle": "#d62728", "held_idle": "#9467bd", "input_starved": "#ff7f0e", "io_bound": "#8c564b",
    "host_transfer_bound": "#e377c2", "launch_bound": "#bcbd22", "memory_bound": "#17becf",
    "no_tensor_cores": "#1f77b4", "power_capped": "#aec7e8", "thermal_throttled": "#ffbb78",
    "clocks_capped": "#98df8a", "contention": "#393b79", "communication_bound": "#c49c94",
    "system": "#637939", "low_demand": "#dbdb8d", "unknown": "#7f7f7f",
}


def _color(cause: str) -> str:
    return CAUSE_COLORS.get(cause, "#7f7f7f")


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    # No metadata block: a date would make each page differ, and the page needs no namespaces.
    figure.savefig(buffer, format="svg", bbox_inches="tight",
                   metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: no XML declaration or doctype


def _figures(report: Report) -> list[tuple[str, str]]:
    """(caption, inline SVG) for each plot."""
    try:
        import matplotlib
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra("the HTML report needs matplotlib: pip install 'flopwatch[report]'") from None
    times = [datetime.fromtimestamp(p.ts + report.step_seconds / 2) for p in report.series]
    plotted = [c.cause for c in report.causes]
    out = []
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "flopwatch", "font.size": 9}):
        # Utilization over time; the shaded areas are the share of GPU time wasted, by cause.
        fig = Figure(figsize=(11, 3.6))
        ax = fig.add_subplot()
        if plotted and times:
            ax.stackplot(times, [[p.wasted_share_by_cause.get(c, 0.0) for p in report.series] for c in plotted],
                         labels=[f"wasted: {c}" for c in plotted], colors=[_color(c) for c in plotted],
                         alpha=0.35, step="mid")
        ax.plot(times, [_nan(p.utilization) for p in report.series], color="#2ca02c", lw=1.6, label="utilization")
        ax.plot(times, [_nan(p.flops_utilization) for p in report.series], color="#1f4e79", lw=1.2,
                label="flops utilization")
        ax.axhline(report.utilization_threshold, color="#555", ls="--", lw=1, label="threshold")
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        _time_axis(ax, AutoDateLocator, ConciseDateFormatter)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.set_title("Utilization over time (mean of all GPUs); shaded: share of GPU time wasted, by cause")
        out.append(("Utilization over time", _svg(fig)))

        fig = Figure(figsize=(11, 0.6 + 0.38 * max(len(plotted), 1)))
        ax = fig.add_subplot()
        hours = [c.wasted_gpu_hours for c in report.causes]
        ax.barh(plotted[::-1], hours[::-1], color=[_color(c) for c in plotted[::-1]])
        for y, (cause, value) in enumerate(zip(plotted[::-1], hours[::-1])):
            ax.text(value, y, f" {value:,.2f} GPU-h", va="center", fontsize=8)
        ax.set_xlabel("wasted GPU-hours")
        ax.set_title("Waste by cause")
        ax.margins(x=0.15)
        out.append(("Waste by cause", _svg(fig)))

        fig = Figure(figsize=(11, 3.0))
        ax = fig.add_subplot()
        power = [_nan(p.power_watts) for p in report.series]
        ax.plot(times, power, color="#ff7f0e", lw=1.4, label="power, all GPUs (W)")
        ax.set_ylabel("W")
        ax.set_ylim(bottom=0)
        energy_ax = ax.twinx()
        cumulative, running = [], 0.0
        for p in report.series:
            running += p.energy_kwh or 0.0
            cumulative.append(running)
        energy_ax.plot(times, cumulative, color="#7f7f7f", lw=1.2, ls=":", label="energy (kWh, cumulative)")
        energy_ax.set_ylabel("kWh")
        energy_ax.set_ylim(bottom=0)
        _time_axis(ax, AutoDateLocator, ConciseDateFormatter)
        handles = ax.get_legend_handles_labels()[0] + energy_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.06, 1.0), fontsize=8, frameon=False)
        ax.set_title("Power and energy")
        out.append(("Power and energy", _svg(fig)))
    return out


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _time_axis(ax: Any, locator_type: Any, formatter_type: Any) -> None:
    locator = locator_type()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter_type(locator))
    ax.grid(alpha=0.3)


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 26px 0 8px; }
.meta { color: #555; margin: 0 0 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(135px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; }
.card b { display: block; font-size: 20px; } .card span { color: #666; font-size: 13px; }
figure { margin: 14px 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
figure svg { width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; white-space: nowrap; } th { background: #f0f0f0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
"""


def _table(headings: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    """One self-contained page: headline figures, three plots, waste by cause with the fix, groups."""
    e = html.escape
    t = report.total
    cards = [("GPU-hours", f"{t.gpu_hours:,.2f}"), ("mean utilization", _pct(t.mean_utilization)),
             ("flops utilization", _pct(t.mean_flops_utilization)),
             (f"wasted GPU-hours (under {report.utilization_threshold:.0%})",
              f"{t.wasted_gpu_hours:,.2f} ({t.wasted_share:.0%})"),
             ("energy", f"{_num(t.energy_kwh)} kWh")]
    if t.tokens:
        cards.append(("joules per token", _num(t.joules_per_token, 3)))
    if _costs_known(report):
        cards += [("cost", _money(report, t.cost)), ("cost of the waste", _money(report, t.wasted_cost))]
    parts = [f"<h1>{e(title(report))}</h1>",
             f'<p class="meta">{len(report.hosts)} host(s) ({e(", ".join(report.hosts))}), {report.gpus} GPU(s); '
             f"read from the {e(report.level)} level; prices {report.prices.per_gpu_hour:g} "
             f"{e(report.prices.currency)}/GPU-hour and {report.prices.per_kwh:g} {e(report.prices.currency)}/kWh</p>"]
    if report.empty:
        parts.append(f"<p>{e(empty_message(report))}.</p>")
    else:
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><span>{e(k)}</span><b>{e(v)}</b></div>' for k, v in cards) + "</div>")
        if report.held_back:
            lines = _held_back(report)
            parts.append(f"<h2>{e(lines[0])}</h2><ul>" + "".join(f"<li>{e(line[2:])}</li>" for line in lines[1:])
                         + "</ul>")
        for caption, svg in _figures(report):
            parts.append(f'<figure aria-label="{e(caption)}">{svg}</figure>')
        parts.append("<h2>Waste by cause, and the fix</h2>")
        parts.append(_table(["cause", "wasted GPU-h", "share", "what it is", "advice"], (
            [f'<span class="swatch" style="background:{_color(c.cause)}"></span>{e(c.cause)}',
             f"{c.wasted_gpu_hours:,.2f}", f"{c.share:.0%}", e(c.summary),
             e(c.advice) + (f"<br>Found with: {e(', '.join(c.contributing))}" if c.contributing else "")
             + (f"<br><code>{e(c.top_stack)}</code>" if c.top_stack else "")]
            for c in report.causes), {1, 2}))
        numeric = set(range(1, 6)) | set(range(7, 12))
        parts.append(f"<h2>By {e(report.group_by)}</h2>")
        parts.append(_table(_usage_headings(report, report.group_by),
                            ([e(c) for c in _usage_cells(report, u)] for u in report.groups[:SHOWN_GROUPS]),
                            numeric))
        parts += [f"<p>{e(line)}</p>" for line in _more(report)]
        if report.top_jobs:
            parts.append("<h2>Top jobs by waste</h2>")
            parts.append(_table(_usage_headings(report, "job"),
                                ([e(c) for c in _usage_cells(report, u)] for u in report.top_jobs), numeric))
    if report.reclaim:
        parts.append("<h2>Reclaim: decisions and actions</h2>")
        parts.append(_table(["when", "host", "action", "job", "mode", "user", "partition", "cause", "held",
                             "outcome"], ([e(str(v)) for v in (
            _when_seconds(a["ts"]), a["host"], a["action"], a["job"], a["mode"], a["user"] or MISSING,
            a["partition"] or MISSING, a["cause"], _duration(a["held_seconds"]), a["outcome"])]
            for a in report.reclaim), {8}))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title(report))}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


RENDERERS = {"table": render_table, "text": render_text, "json": render_json, "csv": render_csv,
             "html": render_html}
