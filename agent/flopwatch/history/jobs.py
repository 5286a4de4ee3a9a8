"""The fleet's jobs over a window, read from the shared history for the fleet judge, and the
judge's verdicts written back.

Three small queries a pass, each on an index: the GPUs' open job spans (``ix_job_spans_end``),
their raw ticks of the window grouped by cause (the raw tables' (host, ts, gpu) key, host by
host), and the newest process of each rank and the GPUs' open findings (by host); for a job
without ranks, also its processes' samples of the window (by process and time). Then one
transaction: the verdicts that held a job back extend their open rows of ``job_verdicts`` or
start new ones (``record_verdicts``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import Float, bindparam, delete, func, or_, select, type_coerce, update
from sqlalchemy.engine import Engine

from flopwatch.history import schema
from flopwatch.judge.jobs import JobVerdict, JobWindow, RankWindow, held_back


def read_jobs(engine: Engine, now: float, window_seconds: float, job: str | None = None) -> list[JobWindow]:
    """Every job on two GPUs or more whose span is open or ended inside the window."""
    since = now - window_seconds
    spans_t, raw_t, procs_t, findings_t = schema.job_spans, schema.gpu_raw, schema.processes, schema.findings
    samples_t = schema.process_samples
    with engine.connect() as connection:
        query = select(spans_t.c.host, spans_t.c.gpu, spans_t.c.job, spans_t.c.rank).where(
            or_(spans_t.c.end_ts.is_(None), spans_t.c.end_ts >= since), spans_t.c.start_ts <= now)
        if job is not None:
            query = query.where(spans_t.c.job == job)
        members: dict[str, dict[tuple[str, int], int | None]] = defaultdict(dict)
        for host, gpu, name, rank in connection.execute(query):
            members[name][(host, gpu)] = rank  # the newest span of a GPU wins
        members = {name: gpus for name, gpus in members.items() if len(gpus) >= 2}
        if not members:
            return []
        hosts = sorted({host for gpus in members.values() for host, _ in gpus})
        ticks: dict[tuple[str, int, str], dict] = defaultdict(lambda: {"ticks": {}, "utilization": {}, "last": 0.0})
        for host, gpu, name, cause, n, utilization, last in connection.execute(
                select(raw_t.c.host, raw_t.c.gpu, raw_t.c.job, raw_t.c.cause, func.count(),
                       func.avg(type_coerce(raw_t.c.utilization, Float)), func.max(raw_t.c.ts))
                .where(raw_t.c.host.in_(hosts), raw_t.c.ts > since, raw_t.c.ts <= now,
                       raw_t.c.job.in_(list(members)))
                .group_by(raw_t.c.host, raw_t.c.gpu, raw_t.c.job, raw_t.c.cause)):
            entry = ticks[(host, gpu, name)]
            entry["ticks"][cause] = n
            # The column is fixed-point (schema.Fixed): averaged as stored, scaled once.
            entry["utilization"][cause] = (utilization or 0.0) / schema.RATIO.scale
            entry["last"] = max(entry["last"], last)
        pids = {(host, name, rank): pid for host, name, rank, pid in connection.execute(
            select(procs_t.c.host, procs_t.c.job, procs_t.c.rank, procs_t.c.pid)
            .where(procs_t.c.job.in_(list(members)), procs_t.c.host.in_(hosts))
            .order_by(procs_t.c.first_ts))}
        # A job named without ranks (by user and command) has one such key per host for all its
        # GPUs: there, each GPU's process is the one the window's process samples put on it.
        rankless = sorted(name for name, gpus in members.items() if None in gpus.values())
        on_gpu = {(host, gpu, name): pid for host, gpu, name, pid in connection.execute(
            select(procs_t.c.host, samples_t.c.gpu, procs_t.c.job, procs_t.c.pid)
            .join(samples_t, samples_t.c.process_id == procs_t.c.id)
            .where(procs_t.c.job.in_(rankless), procs_t.c.host.in_(hosts), samples_t.c.ts > since)
            .order_by(samples_t.c.ts))} if rankless else {}
        findings = {(host, gpu): {"cause": cause, "evidence": json.loads(evidence), "advice": advice,
                                  "summary": summary}
                    for host, gpu, cause, evidence, advice, summary in connection.execute(
                        select(findings_t.c.host, findings_t.c.gpu, findings_t.c.cause, findings_t.c.evidence,
                               findings_t.c.advice, findings_t.c.summary)
                        .where(findings_t.c.host.in_(hosts), findings_t.c.end_ts.is_(None))
                        .order_by(findings_t.c.start_ts))}
    return [JobWindow(name, window_seconds, tuple(
        _rank(host, gpu, rank, ticks.get((host, gpu, name)),
              on_gpu.get((host, gpu, name), pids.get((host, name, rank))), findings.get((host, gpu)))
        for (host, gpu), rank in sorted(gpus.items())))
        for name, gpus in sorted(members.items())]


def _rank(host: str, gpu: int, rank: int | None, entry: dict | None, pid: int | None,
          finding: dict[str, Any] | None) -> RankWindow:
    entry = entry or {"ticks": {}, "utilization": {}, "last": 0.0}
    return RankWindow(host, gpu, rank, pid, entry["ticks"], entry["utilization"], entry["last"], finding)


def record_verdicts(engine: Engine, now: float, verdicts: list[JobVerdict], *, max_gap_seconds: float,
                    keep_seconds: float) -> None:
    """Keep this pass's verdicts that held a job back. A row the same culprit (job, verdict, cause,
    host, GPU, rank) left less than ``max_gap_seconds`` ago is extended to ``now`` with the
    waiting since; else a new row starts at its verdict's window's start (or where the culprit's
    last row ended, so that no second is counted twice), with the waiting since. Stateless, so a
    restarted judge carries on its predecessor's rows. Rows ended over ``keep_seconds`` ago go."""
    t = schema.job_verdicts
    found = [h for v in verdicts for h in held_back(v)]
    windows = {v.job: v.window_seconds for v in verdicts}
    with engine.begin() as connection:
        last: dict[tuple, tuple[int, float]] = {}
        if found:
            horizon = max(max_gap_seconds, *windows.values())
            for row in connection.execute(
                    select(t.c.id, t.c.job, t.c.verdict, t.c.cause, t.c.host, t.c.gpu, t.c.rank, t.c.end_ts)
                    .where(t.c.end_ts >= now - horizon, t.c.job.in_(sorted({h.job for h in found})))
                    .order_by(t.c.end_ts)):
                last[(row.job, row.verdict, row.cause, row.host, row.gpu, row.rank)] = (row.id, row.end_ts)
        extended, new = [], []
        for h in found:
            row_id, end_ts = last.get((h.job, h.verdict, h.cause, h.host, h.gpu, h.rank), (None, float("-inf")))
            if row_id is not None and now - end_ts <= max_gap_seconds:
                extended.append({"row_id": row_id, "now_ts": max(now, end_ts),
                                 "waited": h.held_gpu_seconds_per_second * max(now - end_ts, 0.0)})
            else:
                start = max(now - windows[h.job], end_ts)
                new.append({"job": h.job, "verdict": h.verdict, "cause": h.cause, "host": h.host, "gpu": h.gpu,
                            "rank": h.rank, "start_ts": start, "end_ts": now,
                            "held_gpu_seconds": h.held_gpu_seconds_per_second * (now - start)})
        if extended:
            connection.execute(update(t).where(t.c.id == bindparam("row_id")).values(
                end_ts=bindparam("now_ts"), held_gpu_seconds=t.c.held_gpu_seconds + bindparam("waited")), extended)
        if new:
            connection.execute(t.insert(), new)
        connection.execute(delete(t).where(t.c.end_ts < now - keep_seconds))
