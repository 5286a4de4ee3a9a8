"""Job view: one multi-GPU job's ranks over time, the rank holding the others back and its own cause.

Every series here is the fleet judge's (`flopwatch judge`, /metrics on port 9767): its verdict per
job, each rank's utilization and waiting over its window, the straggler it names. The agents'
per-GPU series carry no rank (a rank is a value there, not a label), and the verdict is made in
one place, so the dashboard draws the judge's view rather than re-deriving it in PromQL.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flopwatch_grafana as fw  # noqa: E402  (it sits beside this file, not on sys.path)

JOB = f'{fw.WORKLOAD_JOB}="$job"'
RANK = ("rank", "host", "gpu")

now = [
    fw.table(
        "Verdict",
        "The judge's verdict on the job in its last pass: straggler (a rank holds the others back), "
        "communication_bound (every rank waits alike), healthy, or unknown (a rank's node is silent); "
        "cause is what routes the page.",
        [fw.target(f"flopwatch_job_verdict{{{JOB}}}", instant=True)],
        {"verdict": ("verdict", "none"), "cause": ("cause", "none")},
        hidden=("instance", fw.WORKLOAD_JOB, "Value"),
        width=8,
        height=5,
    ),
    fw.table(
        "Straggler",
        "The rank the judge names as holding the job back, where it runs, and its own node's cause.",
        [fw.target(f"flopwatch_job_straggler{{{JOB}}}", instant=True)],
        {field: (field, "none") for field in (*RANK, "cause")},
        hidden=("instance", fw.WORKLOAD_JOB, "Value"),
        sort_by="rank",
        width=10,
        height=5,
    ),
    fw.stat(
        "GPU-seconds waited",
        "GPU-seconds the job's ranks spent waiting in collectives over the judge's window: what "
        "the straggler costs, or the all-reduce itself.",
        fw.target(f"flopwatch_job_held_gpu_seconds{{{JOB}}}", instant=True),
        "s",
        width=6,
        height=5,
    ),
]

STRAGGLER = (
    f"flopwatch_job_rank_utilization_ratio{{{JOB}}}"
    f" * on ({fw.WORKLOAD_JOB}, {', '.join(RANK)}) group_left (cause) flopwatch_job_straggler{{{JOB}}}"
)

over_time = [
    fw.state_timeline(
        "Utilization by rank, the straggler marked",
        "Each rank's mean utilization over the judge's window, a row per rank; red under the 60 % "
        "threshold. The top row repeats the straggler's, named with its host, GPU and cause.",
        fw.targets(
            (STRAGGLER, "straggler: rank {{rank}} ({{host}} GPU {{gpu}}, {{cause}})"),
            (f"flopwatch_job_rank_utilization_ratio{{{JOB}}}", "rank {{rank}}"),
        ),
        width=24,
        height=12,
    ),
    fw.timeseries(
        "Waiting in collectives by rank",
        "Share of each rank's diagnosed time its node saw it waiting in NCCL's kernels "
        "(communication_bound): high on every rank but the straggler.",
        fw.targets((f"flopwatch_job_rank_waiting_ratio{{{JOB}}}", "rank {{rank}}")),
        "percentunit",
        ratio=True,
        width=16,
    ),
    fw.stat(
        "Seconds since the judge's last pass",
        "How old the verdicts are: the judge passes every [judge].interval_seconds (10 s).",
        fw.target("time() - max(flopwatch_judge_last_pass_timestamp_seconds)", instant=True),
        "s",
        width=4,
        height=8,
    ),
    fw.stat(
        "Judge reads the history",
        "1 while the judge's last pass read the fleet's history; 0 means its verdicts are held from before.",
        fw.target("min(flopwatch_judge_history_up)", instant=True),
        "bool_yes_no",
        width=4,
        height=8,
        thresholds=[fw.Threshold("red", 0, 0.0), fw.Threshold("green", 1, 1.0)],
    ),
]

dashboard = fw.build_dashboard(
    title="flopwatch / Job",
    uid="flopwatch-job",
    description="One multi-GPU job as the fleet judge sees it: the verdict, the straggler rank and its "
    "own cause, each rank's utilization and waiting over time.",
    variables=[fw.datasource_variable(), fw.judged_job_variable()],
    sections=[("The job now", now), ("Ranks over time", over_time)],
)
