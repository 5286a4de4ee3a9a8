"""``flopwatch history``: rows from the history store, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
import time
from datetime import datetime

import click

from flopwatch.config import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_time(text: str, now: float) -> float:
    """``now``, an age (``90s``, ``15m``, ``1h``, ``2d``, ``1w``) or an ISO date-time (local
    time unless it names a zone: ``2026-11-25T10:00``, ``2026-11-25T10:00Z``)."""
    if text.strip().lower() == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither an age like 1h or 2d nor a date like 2026-11-25T10:00") from None


class _Time(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 (click's signature)
        if isinstance(value, float):
            return value
        try:
            return parse_time(value, time.time())
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _percent(value: float) -> str:
    return f"{value * 100:.1f}"


_COLUMNS = (  # heading, field, format of a known value
    ("time", "ts", lambda v: datetime.fromtimestamp(v).isoformat(sep=" ", timespec="seconds")),
    ("host", "host", str), ("gpu", "gpu", str),
    ("util %", "utilization", _percent), ("max %", "utilization_max", _percent),
    ("flops %", "flops_utilization", _percent), ("power W", "power_watts", "{:.0f}".format),
    ("energy kJ", "energy_joules", lambda v: f"{v / 1000:.1f}"),
    ("wasted s", "wasted_seconds", "{:.0f}".format), ("tokens", "tokens", "{:.0f}".format),
    ("cause", "cause", str), ("job", "job", str),
)


def _cells(row) -> list[str]:  # noqa: ANN001
    return ["-" if getattr(row, name) is None else fmt(getattr(row, name)) for _, name, fmt in _COLUMNS]


def _print_table(rows, level: str) -> None:  # noqa: ANN001
    from flopwatch.commands.tables import simple_table

    headings = [heading for heading, _, _ in _COLUMNS]
    click.echo(simple_table(f"{len(rows)} rows ({level})", headings, [_cells(row) for row in rows]))


@click.command("history")
@click.option("--history", "url", metavar="URL",
              help="SQLAlchemy URL of the history database (default: [history].url).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Configuration file (default /etc/flopwatch/config.toml if present).")
@click.option("--since", type=_Time(), default="1h", show_default=True,
              help="Start: an age (15m, 1h, 2d) or a date-time (2026-11-25T10:00).")
@click.option("--until", type=_Time(), default="now", show_default=True, help="End, as --since.")
@click.option("--gpu", help="GPU index or UUID.")
@click.option("--job", help="Only while this job ran.")
@click.option("--host", help="Only this host (a database shared by many nodes).")
@click.option("--level", type=click.Choice(["auto", "raw", "minute", "hour"]), default="auto",
              show_default=True, help="Rollup level; auto picks the best for the range.")
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of rows.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line.")
def history(url, config_path, since, until, gpu, job, host, level, as_json, as_csv) -> None:  # noqa: ANN001
    """Show what the GPUs did: per tick, minute or hour, by GPU and job."""
    from flopwatch import config as config_module
    from flopwatch.history.store import HistoryError, HistoryRow, query_history

    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if since >= until:
        raise click.UsageError("--since must be before --until")
    try:
        if url is None:
            url = config_module.load(config_path).history.url
        if url.strip().lower() == "none":
            raise ConfigError("history is disabled (--history / [history].url is 'none')")
        rows = query_history(url, since, until, gpu=gpu, job=job, host=host,
                             level=None if level == "auto" else level)
    except ConfigError as e:
        click.echo(f"flopwatch history: {e}", err=True)
        sys.exit(2)
    except HistoryError as e:
        click.echo(f"flopwatch history: {e}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([field.name for field in dataclasses.fields(HistoryRow)])
        for row in rows:
            writer.writerow(["" if value is None else value for value in dataclasses.astuple(row)])
    elif not rows:
        click.echo("no history in that range")
    else:
        _print_table(rows, rows[0].level)
