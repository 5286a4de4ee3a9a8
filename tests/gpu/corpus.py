"""The labelled corpus on a real GPU: each workload started alone, then read the way
`flopwatch status --window 8 --json` reads it, window after window, and scored against its label.

    PYTHONPATH=agent python3 -m tests.gpu.corpus --plan                    # the batches, each under 9 min
    PYTHONPATH=agent python3 -m tests.gpu.corpus --batch 1 --out DIR       # the first of them
    PYTHONPATH=agent python3 -m tests.gpu.corpus --only NAME,NAME --out DIR
    PYTHONPATH=agent python3 -m tests.gpu.corpus --merge DIR/corpus-*.jsonl [--doc docs/accuracy.md]

Each window is one JSON line in DIR/corpus-<batch>.jsonl; the workloads' output goes to DIR/logs/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from flopwatch.thresholds import Thresholds
from tests.gpu.gpus import wait_until_free
from tests.gpu.labels import BUSY_CAUSES, HOST_SIDE, LABELS, PHASES, Label

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "agent" / "flopwatch"
GPU = 0
THRESHOLD = Thresholds().utilization_threshold  # what the windows are read with


@dataclass
class Started:
    """A workload's processes, started and held at their gate: imported, nothing on the GPU yet."""

    key: str
    procs: list[subprocess.Popen]
    gate: Path  # the workloads go on once this file exists


def slug(key: str) -> str:
    return key.replace(" ", "_")


def launch(key: str, logs: Path) -> Started:
    """Start the workload(s) of ``key``, each in its own process group with its log file, held at
    the gate until ``go``: their imports can overlap the previous workload's windows."""
    name, _, copies = key.partition(" x")
    names = key.split("+") if "+" in key else [name] * int(copies or 1)
    logs.mkdir(parents=True, exist_ok=True)
    gate = logs / f"{slug(key)}.go"
    gate.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLOPWATCH_WORKLOAD_GATE=str(gate))
    procs = []
    for i, n in enumerate(names):
        log = open(logs / f"{slug(key)}.{i}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.gpu.workloads", n], cwd=REPO, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return Started(key, procs, gate)


def go(started: Started) -> None:
    """Open the gate once the GPU is free: nothing of the last workload is left on it."""
    wait_until_free(GPU)
    started.gate.touch()


def wait_ready(procs: list[subprocess.Popen], logs: Path, key: str, timeout: float) -> str | None:
    """None once every process printed ``ready``; else why not."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(procs)))
    while pending:
        for i in list(pending):
            text = (logs / f"{slug(key)}.{i}.log").read_text(errors="replace")
            if "\nready\n" in "\n" + text:
                pending.discard(i)
            elif procs[i].poll() is not None:
                return f"exited {procs[i].returncode}: {text[-600:]}"
        if pending and time.monotonic() > deadline:
            return f"not ready after {timeout:.0f} s"
        time.sleep(0.2)
    return None


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill each workload's whole process group (loader workers, busy processes, compile workers)."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


@dataclass
class Status:
    """A `flopwatch status` started, with the files its output goes to: files, not pipes, since a
    later window's document (stacks and all) may outgrow a pipe while an earlier one is read."""

    proc: subprocess.Popen
    out: IO[bytes]
    err: IO[bytes]


def start_status(seconds: float, config: Path | None = None) -> Status:
    """`flopwatch status --window SECONDS --json`, the command itself, started."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "agent"), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "flopwatch", "status", "--window", str(seconds), "--json"]
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    return Status(subprocess.Popen(command + (["--config", str(config)] if config else []), cwd=REPO, env=env,
                                   stdout=out, stderr=err), out, err)


def status_result(status: Status, seconds: float) -> dict:
    """The GPU's document of a started status, whose figures are the window's means; on failure, {"error": …}."""
    try:
        status.proc.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        status.proc.kill()
        status.proc.wait()
        return {"error": f"status did not answer within {seconds + 60:.0f} s"}
    out, err = (_read_back(f) for f in (status.out, status.err))
    try:
        return json.loads(out)["gpus"][GPU]
    except (ValueError, LookupError):
        return {"error": f"status exited {status.proc.returncode}: {err[-600:]}"}


def _read_back(file: IO[bytes]) -> str:
    file.seek(0)
    text = file.read().decode(errors="replace")
    file.close()
    return text


def read_windows(count: int, seconds: float, staggered: bool = True, config: Path | None = None,
                 wait: Callable[[float], None] = time.sleep) -> list[dict]:
    """``count`` windows of status, back to back. Staggered, each next status starts ``seconds``
    after the last one started, so that its start-up (imports, NVML, the counters' first reading)
    overlaps the last one's final tick. Else one after another: on the H100 their windows ended
    ~8.5 s apart for 8 s windows, staggered 8.0 (a stack sample mostly falls inside its window)."""
    if not staggered:
        return [status_result(start_status(seconds, config), seconds) for _ in range(count)]
    first = time.monotonic()
    started = []
    for i in range(count):
        wait(max(first + i * seconds - time.monotonic(), 0.0))
        started.append(start_status(seconds, config))
    return [status_result(s, seconds) for s in started]


def contributing_causes(finding: dict) -> list[str]:
    """The finding's contributing causes, listed as names or as {"cause": …, "evidence": …}."""
    return [c.get("cause") if isinstance(c, dict) else c for c in finding.get("contributing") or []]


def right_over_threshold(label: Label, r: dict) -> bool:
    """A window over the threshold of a workload labelled with a waiting GPU's cause, read with no
    page: nothing, or a ticket for the label's cause or a contributing one. Over the threshold the
    agent's contract is no page, whatever the workload does under it."""
    if (r.get("utilization_mean") or 0.0) < THRESHOLD or label.cause is None or label.cause in BUSY_CAUSES:
        return False
    return r.get("severity") != "page" and r.get("cause") in (None, label.cause, *label.contributing)


def scored(r: dict, label: Label) -> dict:
    """A window's record with ``right`` and ``right_by_label`` (the label's cause alone) by ``label``."""
    strict = r.get("cause") == label.cause or (label.cause in PHASES and r.get("phase") == label.cause)
    return dict(r, right=strict or right_over_threshold(label, r), right_by_label=strict)


def agent_digest(root: Path = AGENT) -> str:
    """The agent's code as a short digest of its Python files (paths and contents): the windows of
    runs made on different days, on machines without git, count as one agent's when it matches."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def window_record(key: str, label: Label, index: int, gpu: dict, agent: str | None = None) -> dict:
    finding = gpu.get("finding") or {}
    evidence = finding.get("evidence") or {}
    stacks = evidence.get("stacks") or []
    frames = [frame for stack in stacks for frame in stack.get("frames", [])]
    cause = finding.get("cause")
    phase = finding.get("phase") or evidence.get("phase")
    contributing = contributing_causes(finding)
    record = {
        "workload": key, "expected": label.cause, "window": index, "cause": cause, "phase": phase,
        "severity": finding.get("severity"), "confidence": finding.get("confidence"),
        "contributing": contributing,
        "contributing_expected": list(label.contributing),
        "contributing_named": set(label.contributing) <= set(contributing) if label.contributing else None,
        "utilization_mean": gpu.get("utilization"),
        "readings": {k: v for k, v in gpu.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "last_tick": gpu.get("last_tick"),
        "error": gpu.get("error"),
        "processes": [{k: p.get(k) for k in ("pid", "sm_ratio", "memory_bytes", "cpu_ratio")}
                      for p in gpu.get("processes", [])],
        "evidence": evidence,
        "stacks": stacks or None,
        "stack_summary": evidence.get("stack_summary"),
        "stacks_unavailable": evidence.get("stacks_unavailable"),
        "culprit_named": label.names_culprit(frames) if label.cause in HOST_SIDE else None,
        "advice": finding.get("advice"),
        "agent": agent,
    }
    return scored(record, label)


def measure(started: Started, out: Path, windows: int, window_seconds: float, warmup: float,
            following: str | None = None, staggered: bool = True,
            agent: str | None = None) -> tuple[list[dict], Started | None]:
    """``started``'s windows, and the ``following`` workload launched (held at its gate) once this
    one is ready, so that its start-up overlaps these windows; ``agent``: agent_digest(), recorded."""
    key, label = started.key, LABELS[started.key]
    logs = out / "logs"
    go(started)
    try:
        failure = wait_ready(started.procs, logs, key, timeout=2 * label.start_seconds + 30)
        if failure:
            return [{"workload": key, "expected": label.cause, "window": None, "failed": failure, "right": False,
                     "agent": agent}], None
        nxt = launch(following, logs) if following else None
        time.sleep(warmup)
        readings = read_windows(windows, window_seconds, staggered)
        return [window_record(key, label, i, gpu, agent) for i, gpu in enumerate(readings)], nxt
    finally:
        stop(started.procs)


def estimate(key: str, windows: int, window_seconds: float, warmup: float, staggered: bool = True) -> float:
    """Seconds from the gate to the next workload: start (its imports overlapped the last one's
    windows, so about half of it), warm-up, windows (one at a time, each ~0.5 s more: read_windows),
    status's start-up and, for a host-side cause, a ~2 s stack sample and one more tick at the end,
    the kill and the contexts' release."""
    label = LABELS[key]
    stacks = 2.5 if label.cause in HOST_SIDE else 0.0
    per_window = window_seconds if staggered else window_seconds + 0.5
    return label.start_seconds / 2 + warmup + windows * per_window + 1.5 + stacks + 1.0


def plan(windows: int, window_seconds: float, warmup: float, budget: float, batches: int | None = None,
         staggered: bool = True) -> list[list[str]]:
    """The corpus split into batches of about equal time, as few as fit ``budget`` seconds each
    (or ``batches`` of them), longest first to the lightest batch. A batch runs its slowest
    starters first: one that overruns its estimate then leaves the budget to skip a short one at
    the end, instead of running past the command's limit."""
    seconds = {key: estimate(key, windows, window_seconds, warmup, staggered) for key in LABELS}
    count = batches or min(max(1, math.ceil(sum(seconds.values()) / budget)), len(LABELS))
    while True:
        load = [0.0] * count
        chosen: list[list[str]] = [[] for _ in range(count)]
        for key in sorted(LABELS, key=lambda k: -seconds[k]):
            i = load.index(min(load))
            load[i] += seconds[key]
            chosen[i].append(key)
        if batches or max(load) <= budget or count == len(LABELS):  # one workload a batch: as small as they go
            return chosen
        count += 1


def merged(runs: list[list[dict]]) -> list[dict]:
    """The runs' records, a workload's from the last run that measured it (a rerun after a fix)."""
    latest: dict[str, list[dict]] = {}
    for records in runs:
        run: dict[str, list[dict]] = {}
        for r in records:
            run.setdefault(r["workload"], []).append(r)
        latest.update(run)
    return [r for rs in latest.values() for r in rs]


def not_yet_measured(order: list[str], runs: list[list[dict]], windows: int) -> list[str]:
    """The workloads of ``order`` that no run measured all ``windows`` windows of (a failed start,
    a machine taken back mid-run), in that order: the corpus goes on where its last command ended."""
    done = {key for key in order for records in runs
            if sum(1 for r in records if r["workload"] == key and r.get("window") is not None) >= windows}
    return [key for key in order if key not in done]


def summary(records: list[dict], windows: int) -> list[str]:
    """Per-workload table, confusion matrix and totals, as text lines."""
    # Scored again by today's labels, so that runs merged from different days count alike.
    records = [scored(r, LABELS[r["workload"]]) if r.get("window") is not None and r["workload"] in LABELS else r
               for r in records]
    by_key: dict[str, list[dict]] = {}
    for r in records:
        by_key.setdefault(r["workload"], []).append(r)
    lines = [f"{'workload':40} {'expected':20} {'right':>5}  {'util':>5}  causes per window (severity)"]
    for key, rs in by_key.items():
        measured = [r for r in rs if r.get("window") is not None]
        right = sum(r["right"] for r in measured)
        utils = [r["utilization_mean"] for r in measured if r.get("utilization_mean") is not None]
        causes = ", ".join(f"{r['cause'] or 'none'}" + (f" ({r['severity']})" if r.get("severity") else "")
                           for r in measured) or f"FAILED: {rs[0].get('failed', '')[:80]}"
        util = f"{sum(utils) / len(utils):5.2f}" if utils else "  n/a"
        lines.append(f"{key:40} {rs[0]['expected'] or 'none':20} {right}/{len(measured) or windows}  {util}  {causes}")
    measured = [r for r in records if r.get("window") is not None]
    expected = sorted({r["expected"] or "none" for r in records})
    named = sorted({r["cause"] or "none" for r in measured} | set(expected))
    lines += ["", "confusion matrix (rows: expected; columns: named; cells: windows)",
              f"{'expected':20} " + " ".join(f"{c[:11]:>11}" for c in named)]
    for e in expected:
        counts = Counter(r["cause"] or "none" for r in measured if (r["expected"] or "none") == e)
        lines.append(f"{e:20} " + " ".join(f"{counts.get(c, 0):>11}" for c in named))
    failed = sum(1 for r in records if r.get("window") is None)
    total = len(measured) + failed * windows
    right = sum(r["right"] for r in measured)
    by_label = sum(r.get("right_by_label", r["right"]) for r in measured)
    healthy_pages = sum(1 for r in measured if r["expected"] is None and r.get("severity") == "page")
    high_pages = sum(1 for r in measured if r.get("severity") == "page"
                     and (r.get("utilization_mean") or 0.0) >= THRESHOLD)
    host = [r for r in measured if r["expected"] in HOST_SIDE]
    named_culprit = sum(1 for r in host if r.get("culprit_named"))
    with_stacks = sum(1 for r in host if r.get("stacks"))
    lines += ["",
              f"windows right: {right}/{total} = {right / max(total, 1):.1%}"
              + (f" ({failed} workload(s) failed to start, counted wrong)" if failed else ""),
              f"  of them over the threshold with no page: {right - by_label}; by the label's cause alone: "
              f"{by_label}/{total} = {by_label / max(total, 1):.1%}",
              f"pages on healthy work: {healthy_pages}",
              f"pages whose own window's utilization is ≥ {THRESHOLD}: {high_pages}",
              f"host-side windows whose stacks name the responsible function: {named_culprit}/{len(host)} = "
              f"{named_culprit / max(len(host), 1):.1%} ({with_stacks} had stacks)"]
    sharing = [r for r in measured if r.get("contributing_expected")]
    if sharing:
        named = sum(1 for r in sharing if r.get("contributing_named"))
        lines.append(f"windows naming the expected contributing cause(s): {named}/{len(sharing)}")
    why_not = Counter(r["stacks_unavailable"] for r in host if r.get("stacks_unavailable"))
    lines += [f"  no stacks, {reason}: {n} window(s)" for reason, n in why_not.most_common()]
    agents: Counter[str] = Counter()
    for r in records:  # a workload that failed to start counts its windows, as in the total
        agents[r.get("agent") or "not recorded"] += 1 if r.get("window") is not None else windows
    lines.append("agent (digest of its code): " + ", ".join(f"{a} {n} window(s)" for a, n in agents.most_common()))
    return lines


def labels_table() -> list[str]:
    """The labels as a Markdown table, for docs/accuracy.md."""
    lines = ["| workload | expected cause (+ contributing) | responsible function (stack) | why |", "|---|---|---|---|"]
    for key, label in LABELS.items():
        names = ", ".join(f"`{n}`" for n in label.responsible) if label.cause in HOST_SIDE else "—"
        cause = (label.cause or "none (healthy)") + "".join(f" + {c}" for c in label.contributing)
        lines.append(f"| `{key}` | {cause} | {names} | {label.why} |")
    return lines


def write_block(doc: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``doc``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = doc.read_text()
    start, stop = content.index(begin) + len(begin), content.index(end)
    doc.write_text(content[:start] + "\n" + text + "\n" + content[stop:])


def read_runs(paths: list[str]) -> list[list[dict]]:
    return [[json.loads(line) for line in Path(path).read_text().splitlines() if line] for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--batch", default="1", help="I: the I-th batch of --plan's; I/N: of N batches of about equal time")
    which.add_argument("--only", help="these workloads (labels' keys, comma-separated) instead of a batch")
    which.add_argument("--after", nargs="+", metavar="JSONL",
                        help="instead of a batch: every workload these runs have not measured, in --plan's order, "
                             "as many as the budget allows")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/flopwatch-corpus"))
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds after the first step (status's own start-up adds ~1.5)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="start each window's status after the last one ended, not as its window ends")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds: a workload that would end past this is skipped")
    parser.add_argument("--plan", action="store_true", help="print the batches, their estimated seconds and the total")
    parser.add_argument("--labels", action="store_true", help="print the labels as a Markdown table (--doc: into it)")
    parser.add_argument("--merge", nargs="+", metavar="JSONL",
                        help="combine batches' windows into one report; a workload rerun in a later file replaces "
                             "its windows from the earlier ones")
    parser.add_argument("--doc", type=Path, help="with --merge or --labels: write into this file's block")
    args = parser.parse_args()
    if args.labels:
        print("\n".join(labels_table()))
        if args.doc:
            write_block(args.doc, "labels", "\n".join(labels_table()))
        return
    if args.merge:
        records = merged(read_runs(args.merge))
        lines = summary(records, args.windows)
        print("\n".join(lines))
        if args.doc:
            sources = ", ".join(Path(p).name for p in args.merge)
            write_block(args.doc, "corpus", f"From {sources}:\n\n```\n" + "\n".join(lines) + "\n```")
        return
    index, _, count = args.batch.partition("/")
    staggered = not args.one_at_a_time
    batches = plan(args.windows, args.window, args.warmup, args.budget, int(count) if count else None, staggered)
    if args.plan:
        for i, keys in enumerate(batches, 1):
            seconds = sum(estimate(k, args.windows, args.window, args.warmup, staggered) for k in keys)
            print(f"batch {i}/{len(batches)}: ~{seconds:.0f} s: {' '.join(keys)}")
        total = sum(estimate(k, args.windows, args.window, args.warmup, staggered) for k in LABELS)
        print(f"{len(LABELS)} workloads × (start + {args.warmup:g} s + {args.windows} windows of {args.window:g} s): "
              f"~{total:.0f} s = {total / 60:.1f} min of device time in {len(batches)} commands")
        return
    if args.after:
        keys = not_yet_measured([k for batch in batches for k in batch], read_runs(args.after), args.windows)
    else:
        keys = args.only.split(",") if args.only else batches[int(index) - 1]
    unknown = [k for k in keys if k not in LABELS]
    if unknown:
        parser.error(f"no label for {', '.join(unknown)} (see tests/gpu/labels.py)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "after" if args.after else "only" if args.only else f"batch-{index}of{len(batches)}"
    started = time.monotonic()
    agent = agent_digest()
    records: list[dict] = []
    with open(out / f"corpus-{tag}.jsonl", "w") as jsonl:
        waiting: Started | None = None
        for i, key in enumerate(keys):
            elapsed = time.monotonic() - started
            current, waiting = (waiting, None) if waiting is not None and waiting.key == key else (None, waiting)
            if elapsed + estimate(key, args.windows, args.window, args.warmup, staggered) > args.budget:
                print(f"skipped {key}: would pass the {args.budget:.0f} s budget at {elapsed:.0f} s", flush=True)
                if current is not None:
                    stop(current.procs)
                continue
            following = keys[i + 1] if i + 1 < len(keys) else None
            window_records, waiting = measure(current or launch(key, out / "logs"), out, args.windows, args.window,
                                              args.warmup, following, staggered, agent)
            for r in window_records:
                records.append(r)
                jsonl.write(json.dumps(r, default=str) + "\n")
                jsonl.flush()
                print(f"{time.monotonic() - started:5.0f}s {key:40} window {r.get('window')} → "
                      f"{r.get('cause') or r.get('failed') or 'none'} ({r.get('severity')}) "
                      f"util {r.get('utilization_mean')} culprit {r.get('culprit_named')}", flush=True)
    lines = summary(records, args.windows)
    print("\n".join(lines))
    (out / f"corpus-{tag}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
