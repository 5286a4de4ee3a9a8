"""Where the agent's resident memory goes on a real GPU: one process takes the agent's parts in
turn (pynvml, NVML's start, every GPU opened, reads, the agent's own modules) and is measured from
outside after each (VmRSS, its anonymous and file-backed parts, and the mappings that grew).

    python3 bench/agent_memory.py [--reads 20] [--as-found]

First the imports' bytecode is compiled beside their sources, as `pip install` leaves it (--as-found:
not, to see what an install without bytecode costs).

Without a GPU the NVML steps are reported as unavailable and the import steps still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# Each step's code, run in order in the measured process.
STEPS = (
    ("python started", "pass"),
    ("import pynvml", "import pynvml; note = 'pynvml ' + pynvml.__file__"),
    ("nvmlInit, GPU count", "pynvml.nvmlInit(); pynvml.nvmlDeviceGetCount()"),
    ("every GPU opened (NvmlSource)",
     "from flopwatch.sources.nvml import NvmlSource; source = NvmlSource(counter_interval_seconds=10.0)"),
    ("{reads} reads, 0.1 s apart", "import time\nfor _ in range({reads}):\n    source.read(); time.sleep(0.1)"),
    ("import psutil", "import psutil"),
    ("import click", "import click"),
    ("import prometheus_client", "import prometheus_client"),
    ("import apscheduler's scheduler", "import apscheduler.schedulers.background"),
    ("the agent's other modules (flopwatch run's imports)",
     "import flopwatch.commands.run, flopwatch.daemon, flopwatch.outputs.exporter, flopwatch.sources.host, "
     "flopwatch.sources.tokens, flopwatch.sources.stacks"),
    ("the history store's modules", "import flopwatch.history.store"),
)


def child() -> None:
    """Runs each step when the parent says so, and reports it done or failed."""
    scope: dict = {}
    for line in sys.stdin:
        code = json.loads(line)
        try:
            exec(code, scope)  # noqa: S102 - the steps above, nothing from outside
            print(json.dumps({"ok": True, "note": scope.pop("note", None)}), flush=True)
        except Exception as e:  # NVML missing, no GPU: the step is reported, the rest go on
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)


def measure(reads: int, as_found: bool) -> None:
    # Here, not at the top: the measured process runs this file too, and must load none of it.
    from common import MB, _status_kib, agent_env, compile_imports, rss_by_mapping, table

    if not as_found:
        compile_imports()
    process = subprocess.Popen([sys.executable, __file__, "--child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env={**agent_env(), "MALLOC_ARENA_MAX": "2"})
    rows, notes, before = [], [], {}
    previous = 0.0
    for name, code in STEPS:
        process.stdin.write(json.dumps(code.format(reads=reads)) + "\n")
        process.stdin.flush()
        answer = json.loads(process.stdout.readline())
        notes += [answer["note"]] if answer.get("note") else []
        kib = _status_kib(process.pid, "VmRSS", "RssAnon", "RssFile")
        rss = kib["VmRSS"] / MB
        mappings = dict(rss_by_mapping(process.pid, count=1000))
        grew = sorted(((m, v - before.get(m, 0.0)) for m, v in mappings.items()), key=lambda kv: -kv[1])
        grew_text = ", ".join(f"{m.rsplit('/', 1)[-1]} +{d:.1f}" for m, d in grew[:3] if d >= 0.5)
        rows.append((name.format(reads=reads), "yes" if answer["ok"] else answer["error"][:60], f"{rss:.1f}",
                     f"{rss - previous:+.1f}", f"{kib['RssAnon'] / MB:.1f}", f"{kib['RssFile'] / MB:.1f}",
                     grew_text))
        before, previous = mappings, rss
    print(table(("step", "done", "VmRSS MB", "Δ MB", "anon MB", "file MB", "grew most (MB)"), rows))
    print("\n".join(notes))
    print("largest mappings at the end:", ", ".join(f"{m} {v:.1f}" for m, v in rss_by_mapping(process.pid)))
    process.stdin.close()
    process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--as-found", action="store_true",
                        help="do not compile the imports' bytecode first (where there is none, each import compiles its source)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child() if args.child else measure(args.reads, args.as_found)


if __name__ == "__main__":
    main()
