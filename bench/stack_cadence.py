"""How often the agent runs py-spy on a job whose work keeps changing: a simulated GPU whose job
alternates between a healthy stretch and one under the threshold every --period seconds, ticked
for --seconds on a virtual clock, with a stand-in for py-spy that counts its runs (each real one
samples the job for 2 s at 20 Hz: ~1 % slower while it runs, ~0.04 CPU-s for the agent's child).
Columns: the segments the regime tracker cut, the stack samples asked for, the py-spy runs and
the share of the time py-spy would be attached to the job.

    python3 bench/stack_cadence.py [--seconds 600] [--periods 3,5,8,20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from common import final, table  # noqa: E402

from flopwatch.commands.build import VirtualClock, build_agent  # noqa: E402
from flopwatch.config import Config  # noqa: E402
from flopwatch.sources.stacks import StackSampler  # noqa: E402

STAND_IN = """#!{python}
import sys
args = sys.argv
open({calls!r}, 'a').write(args[args.index('--pid') + 1] + '\\n')
out = args[args.index('--output') + 1]
open(out, 'w').write('process 1:"python3 job.py";thread (1): MainThread;<module> (/job.py:1) 20\\n')
"""


def run(period: int, seconds: int, under: str, folder: Path) -> list:
    calls = folder / f"calls-{period}"
    binary = folder / "py-spy"
    binary.write_text(STAND_IN.format(python=sys.executable, calls=str(calls)))
    binary.chmod(0o755)
    config = Config()
    config.agent.simulate = ["healthy"]
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall)
    agent = built.agent
    agent.stacks = StackSampler(config.stacks, binary=str(binary), clock=clock, wall_clock=wall,
                                ptrace_check=lambda: None)
    starts, asks, last = set(), 0, None
    for t in range(seconds):
        if t % period == 0:
            built.lib.set_scenario(0, under if (t // period) % 2 else "healthy")
        clock.now += 1.0
        wall.now += 1.0
        agent.tick()
        agent.stacks.wait(30)  # a sample taken before the next tick, as 2 s of py-spy would be
        per = agent._gpus[0]
        starts.add(per.regime.started)
        if per.stacks_asked != last:
            asks, last = asks + 1, per.stacks_asked
    agent.close()
    runs = len(calls.read_text().split()) if calls.exists() else 0
    duty = runs * config.stacks.duration_seconds / seconds
    return [f"{period} s {under} / {period} s healthy", len(starts), asks, runs, f"{duty:.1%}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--periods", default="3,5,8,20")
    parser.add_argument("--under", default="low_demand", help="the simulated scenario of the stretches under the threshold")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [run(int(p), args.seconds, args.under, Path(folder)) for p in args.periods.split(",")]
    print(f"one simulated GPU for {args.seconds} virtual s, its job alternating")
    print(table(["pattern", "segments", "stack asks", "py-spy runs", "py-spy attached"], rows))
    worst = max(rows, key=lambda r: r[3])
    final("stack_cadence", f"py-spy attached {worst[4]} of the time at most ({worst[3]} runs in {args.seconds} s, "
          f"{worst[0]})", "≤ 10 %")


if __name__ == "__main__":
    main()
