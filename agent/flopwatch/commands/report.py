"""``flopwatch report``: what a period or a job cost, what it wasted and why."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

from flopwatch.config import ConfigError
from flopwatch.commands.history import _Time

# A range longer than this shows a progress bar on a terminal (months read in slices).
PROGRESS_AFTER_SECONDS = 7 * 86_400.0


class _Exit(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@click.command("report")
@click.option("--history", "url", metavar="URL",
              help="SQLAlchemy URL of the history database (default: [history].url).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Configuration file (default /etc/flopwatch/config.toml if present).")
@click.option("--since", type=_Time(),
              help="Start: an age (1h, 7d) or a date-time (2026-11-25T10:00). Default: the job's "
                   "start with --job, else 7d.")
@click.option("--until", type=_Time(), help="End, as --since. Default: the job's end with --job, else now.")
@click.option("--job", help="Only this job (while it ran).")
@click.option("--gpu", help="GPU index or UUID.")
@click.option("--host", help="Only this host (a database shared by many nodes).")
@click.option("--group-by", type=click.Choice(["job", "user", "host", "gpu"]), default="job", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "text", "json", "csv", "html"]), default="table",
              show_default=True, help="text: a short summary for a job's epilog to mail.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file (required for html).")
@click.option("--level", type=click.Choice(["auto", "raw", "minute", "hour"]), default="auto", show_default=True,
              help="Rollup level read; auto: raw up to a day, minutes up to two months, then hours.")
@click.option("--price-per-gpu-hour", type=float, help="Overrides [tokens].price_per_gpu_hour.")
@click.option("--price-per-kwh", type=float, help="Overrides [tokens].price_per_kwh.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: on a terminal, for ranges over 7 days).")
def report_command(url, config_path, since, until, job, gpu, host, group_by, fmt, output, level,  # noqa: ANN001
                   price_per_gpu_hour, price_per_kwh, progress) -> None:
    """What GPUs cost and wasted over a period or a job, by cause, with the fix for each."""
    if fmt == "html" and not output:
        raise click.UsageError("--format html writes a file: give -o FILE")
    try:
        text, empty = _build(url, config_path, since, until, job, gpu, host, group_by, fmt, level,
                             price_per_gpu_hour, price_per_kwh, progress)
    except _Exit as e:
        click.echo(f"flopwatch report: {e}", err=True)
        sys.exit(e.code)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))
    if empty and fmt in ("json", "csv", "html"):
        click.echo("flopwatch report: the range holds no history", err=True)


def _build(url, config_path, since, until, job, gpu, host, group_by, fmt, level,  # noqa: ANN001
           price_per_gpu_hour, price_per_kwh, progress) -> tuple[str, bool]:
    from flopwatch import config as config_module
    from flopwatch.history.report import Prices, Query, build_report, job_range, read_history, reclaim_actions
    from flopwatch.commands.report_render import RENDERERS, MissingExtra
    from flopwatch.history.store import HistoryError

    now = time.time()
    try:
        config = config_module.load(config_path)
        for key, value in (("price_per_gpu_hour", price_per_gpu_hour), ("price_per_kwh", price_per_kwh)):
            if value is not None:
                config_module.override(config, "tokens", key, value)
        url = url or config.history.url
        if url.strip().lower() == "none":
            raise ConfigError("history is disabled (--history / [history].url is 'none')")
        if job is not None and (since is None or until is None):
            ran = job_range(url, job, now)
            if ran is None and since is None:
                ran = (now - 86_400.0, now)  # an unknown job: an empty report says so
            since = since if since is not None else ran[0]
            until = until if until is not None else (ran[1] if ran else now)
        since = now - 7 * 86_400.0 if since is None else since
        until = now if until is None else until
        if since >= until:
            raise _Exit("--since must be before --until", 2)
        query = Query(since, until, gpu=gpu, job=job, host=host, level=None if level == "auto" else level)
        show = progress if progress is not None else (sys.stderr.isatty() and until - since > PROGRESS_AFTER_SECONDS)
        read = _read_with_progress(read_history, url, query) if show else read_history(url, query)
        t = config.tokens
        report = build_report(read, query, interval_seconds=config.agent.interval_seconds,
                              utilization_threshold=config.diagnosis.utilization_threshold,
                              prices=Prices(t.price_per_gpu_hour, t.price_per_kwh, t.currency), group_by=group_by)
        report = dataclasses.replace(report, reclaim=reclaim_actions(url, since, until, host))
        return RENDERERS[fmt](report), report.empty
    except ConfigError as e:
        raise _Exit(str(e), 2) from None
    except MissingExtra as e:
        raise _Exit(str(e), 2) from None
    except HistoryError as e:
        raise _Exit(str(e), 1) from None


def _read_with_progress(read_history, url, query):  # noqa: ANN001, ANN202
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("reading history"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("read", total=None)
        return read_history(url, query, progress=lambda done, total: bar.update(task, completed=done, total=total))
