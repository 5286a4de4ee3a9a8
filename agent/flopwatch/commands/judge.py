"""`flopwatch judge`: the fleet judge, a service reading the fleet's shared history every
[judge].interval_seconds, making one verdict per multi-GPU job (judge/jobs.py), paging once per
job (outputs/job_alerts.py), keeping the verdicts that held a job back (history/jobs.py, for
`report --job`) and serving the last pass on /metrics (outputs/job_metrics.py, for Grafana). One
replica; safe to restart (its pages are read back from Alertmanager, its verdicts' rows from the
history). `flopwatch jobs`: the same verdicts once, as a table or JSON; `--job J` shows one job
rank by rank with each rank's own finding."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict
from typing import Any

import click

from flopwatch.commands.options import UsageError, config_option, load_config
from flopwatch.config import Config

log = logging.getLogger("flopwatch.judge")


def _store_option(f: Any) -> Any:
    return click.option("--from-store", "--history", "store_url", metavar="URL",
                        help="The fleet's history (SQLAlchemy URL; default [history].url).")(f)


def _config(config_path: str | None, store_url: str | None, extra: dict | None = None) -> Config:
    config = load_config(config_path, {("history", "url"): store_url, **(extra or {})})
    if config.history.url in ("", "none"):
        raise UsageError("the judge needs the fleet's history: set [history].url or --from-store")
    return config


def _engine(config: Config) -> Any:
    from flopwatch.history.store import open_engine

    try:
        return open_engine(config.history.url)
    except Exception as e:  # a malformed URL or a missing driver: the user's to fix
        raise UsageError(f"[history].url: {e}") from None


def verdicts(engine: Any, config: Config, now: float, job: str | None = None) -> tuple[list, float]:
    """This pass's verdicts and the seconds the queries took."""
    from flopwatch.history.jobs import read_jobs
    from flopwatch.judge.jobs import JudgeThresholds, judge_job

    j = config.judge
    thresholds = JudgeThresholds(utilization_threshold=config.diagnosis.utilization_threshold,
                                 stale_seconds=j.stale_seconds)
    started = time.perf_counter()
    windows = read_jobs(engine, now, j.window_seconds, job)
    query_seconds = time.perf_counter() - started
    return [judge_job(w, now, thresholds) for w in windows], query_seconds


@click.command("judge")
@config_option
@_store_option
@click.option("--alertmanager", "alertmanager_urls", multiple=True, metavar="URL",
              help="Alertmanager to page (repeatable; default [alerting].alertmanager_urls).")
@click.option("--interval", type=float, help="Seconds between passes (default [judge].interval_seconds, 10).")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve the verdicts on /metrics here (default [judge].listen, 0.0.0.0:9767; '' for none).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def judge_command(config_path: str | None, store_url: str | None, alertmanager_urls: tuple[str, ...],
                  interval: float | None, listen: str | None, log_level: str) -> None:
    """The fleet judge: one verdict and at most one page per multi-node job, every interval."""
    from flopwatch.history.jobs import record_verdicts
    from flopwatch.history.store import migrate
    from flopwatch.outputs.job_alerts import AlertmanagerPoster, JobPages
    from flopwatch.outputs.job_metrics import JobExporter

    config = _config(config_path, store_url, {("judge", "interval_seconds"): interval, ("judge", "listen"): listen,
                                              ("alerting", "alertmanager_urls"): list(alertmanager_urls) or None})
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = _engine(config)
    j = config.judge
    exporter = JobExporter()
    server = _serve(j, exporter)
    poster = AlertmanagerPoster(config.alerting.alertmanager_urls, j.interval_seconds,
                                config.alerting.timeout_seconds, config.alerting.external_url)
    pages = JobPages(confirm_passes=j.confirm_passes)
    pages.restore(poster.firing_pages())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("judging %s every %.0f s over %.0f s windows; %d page(s) restored%s",
             engine.url.render_as_string(hide_password=True), j.interval_seconds, j.window_seconds, len(pages.firing),
             f"; serving {server.url}/metrics" if server else "")
    # A verdict's row in job_verdicts carries on across a pass or two missed (a restart, a slow
    # database); longer, and a new row starts.
    max_gap_seconds = max(3 * j.interval_seconds, j.window_seconds)
    keep_seconds = config.history.retention_hour_days * 86_400.0
    migrated = False
    while not stop.is_set():
        started = time.perf_counter()
        now = time.time()
        try:
            if not migrated:  # the judge may meet a fleet whose agents have not made job_verdicts yet
                with engine.begin() as connection:
                    migrate(connection)
                migrated = True
            found, query_seconds = verdicts(engine, config, now)
        except Exception as e:  # the database is down: hold the pages, try next pass
            log.warning("cannot read the history: %s", str(e).splitlines()[0])
            found, query_seconds = None, 0.0
        exporter.update(now, found, query_seconds)
        if found is not None:
            try:
                record_verdicts(engine, now, found, max_gap_seconds=max_gap_seconds, keep_seconds=keep_seconds)
            except Exception as e:  # the report misses this pass; the page does not
                log.warning("cannot write the verdicts: %s", str(e).splitlines()[0])
            resolved = pages.update(now, found)
            for v in found:
                if v.pages or v.verdict == "unknown":
                    log.info("%s: %s %s", v.job, v.verdict, _stragglers_text(v))
        else:
            resolved = []
        poster.send(now, pages, resolved)
        # One machine-readable line a pass: what the judge costs (bench/fleet_jobs.py reads it).
        log.info("pass jobs=%d query_seconds=%.4f pass_seconds=%.4f", len(found or []), query_seconds,
                  time.perf_counter() - started)
        stop.wait(max(j.interval_seconds - (time.perf_counter() - started), 0.0))
    log.info("stopping")
    if server:
        server.shutdown()


def _serve(j: Any, exporter: Any) -> Any:
    """/metrics of the verdicts on [judge].listen, or None where it is ''."""
    if not j.listen:
        return None
    from flopwatch.config import ConfigError
    from flopwatch.httpbase import ListenError
    from flopwatch.outputs import webconfig
    from flopwatch.outputs.server import MetricsServer

    try:
        web = webconfig.load(j.web_config_file) if j.web_config_file else webconfig.WebConfig()
        server = MetricsServer(j.listen, exporter.registry(),
                               lambda: {"jobs": [verdict_document(v) for v in exporter.verdicts]}, web=web)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except (ListenError, ValueError) as e:
        raise UsageError(f"{e} (set with --listen or [judge].listen)") from None
    server.start()
    return server


@click.command("jobs")
@config_option
@_store_option
@click.option("--job", help="Only this job, rank by rank: each rank's own finding, the straggler's evidence and fix.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def jobs_command(config_path: str | None, store_url: str | None, job: str | None, as_json: bool) -> None:
    """The fleet's multi-GPU jobs now: each rank's state, the straggler and its cause."""
    config = _config(config_path, store_url)
    try:
        found, _ = verdicts(_engine(config), config, time.time(), job)
    except Exception as e:
        raise UsageError(f"cannot read the history at [history].url: {str(e).splitlines()[0]}") from None
    if as_json:
        click.echo(json.dumps([verdict_document(v) for v in found], indent=2, default=str))
        return
    if job is not None:
        from flopwatch.commands.tables import job_table

        if not found:
            raise click.ClickException(f"no job {job!r} on two GPUs or more in the last "
                                       f"{config.judge.window_seconds:.0f} s")
        click.echo(job_table(verdict_document(found[0])))
        return
    if not found:
        click.echo("no job on two GPUs or more in the window")
    for v in found:
        click.echo(f"{v.job}  {v.verdict}  {_stragglers_text(v)}".rstrip())
        for r in v.ranks:
            mark = "  <- straggler" if r in v.stragglers else ""
            util = "-" if r.utilization is None else f"{r.utilization:.0%}"
            click.echo(f"  rank {'-' if r.rank is None else r.rank:>4}  {r.host} gpu {r.gpu}  pid {r.pid or '-'}"
                       f"  {r.state:<9} {r.cause or '':<20} util {util}{mark}")


def verdict_document(v: Any) -> dict:
    """A verdict as JSON values: `jobs --json`, the judge's /api/v1/status, `jobs --job`'s table."""
    document = {**asdict(v), "cause": v.cause, "pages": v.pages}
    for rank, r in zip(document["ranks"], v.ranks):
        rank["straggler"] = r in v.stragglers
    return document


def _stragglers_text(v: Any) -> str:
    if not v.stragglers:
        return f"({v.evidence.get('ranks_waiting', 0)}/{len(v.ranks)} waiting, {v.evidence.get('ranks_unknown', 0)} unknown)"
    return "; ".join(f"rank {s.rank} {s.host} gpu {s.gpu} pid {s.pid}: {s.cause}" for s in v.stragglers) + \
        f" (held {v.held_gpu_seconds:.0f} GPU-s of {v.window_seconds:.0f} s)"
