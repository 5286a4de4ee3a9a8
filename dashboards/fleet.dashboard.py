"""Fleet view: how busy the GPUs are across nodes, what the idle time cost, and which jobs waste it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flopwatch_grafana as fw  # noqa: E402  (it sits beside this file, not on sys.path)

JOB = fw.WORKLOAD_JOB

NODES = 'instance=~"$instance"'
JOBS = f'{NODES}, {JOB}=~"$job"'
RANGE = "[$__range]"

overview = [
    fw.stat(
        "Fleet utilization",
        "Mean fraction of time the SMs had work, over the range, across every selected GPU.",
        fw.target(f"avg(avg_over_time(flopwatch_utilization_ratio{{{NODES}}}{RANGE}))", instant=True),
        "percentunit",
        thresholds=fw.utilization_thresholds(),
    ),
    fw.stat(
        "GPUs",
        "GPUs reported by the selected agents.",
        fw.target(f"count(flopwatch_gpu_info{{{NODES}}})", instant=True),
        "none",
    ),
    fw.stat(
        "GPUs below threshold",
        "GPUs whose utilization is under the alerting threshold right now, whatever the cause.",
        fw.target(
            f"count(max by (instance, gpu) (flopwatch_below_threshold{{{NODES}}}) == 1) or vector(0)",
            instant=True,
        ),
        "none",
    ),
    fw.stat(
        "Wasted GPU-hours",
        "GPU time spent below the utilization threshold during the range, all causes together.",
        fw.target(
            f"sum(increase(flopwatch_wasted_gpu_seconds_total{{{NODES}}}{RANGE})) / 3600",
            instant=True,
        ),
        "h",
        decimals=2,
    ),
    fw.stat(
        "Energy",
        "Energy the selected GPUs drew during the range, from NVML's energy counter.",
        fw.target(f"sum(increase(flopwatch_energy_joules_total{{{NODES}}}{RANGE}))", instant=True),
        "joule",
    ),
    fw.stat(
        "Tokens per joule",
        "Tokens processed per joule of GPU energy during the range, on nodes that report tokens.",
        fw.target(
            f"sum(increase(flopwatch_tokens_total{{{NODES}}}{RANGE}))"
            f" / sum(increase(flopwatch_energy_joules_total{{{NODES}}}{RANGE}))",
            instant=True,
        ),
        "suffix: tok/J",
        decimals=2,
    ),
]

by_gpu = [
    fw.ratio_heatmap(
        "Utilization distribution",
        "How many GPUs sat at each 10 % band of utilization at each moment: a cool bottom band is idle capacity.",
        fw.target(f"flopwatch_utilization_ratio{{{NODES}}}", "{{instance}} GPU {{gpu}}"),
    ),
    fw.table(
        "Utilization by node and GPU",
        "Mean utilization over the range next to NVML's coarse figure and the current cause, worst first.",
        [
            fw.target(f"avg_over_time(flopwatch_utilization_ratio{{{NODES}}}{RANGE})", ref="A", instant=True),
            fw.target(
                f"avg_over_time(flopwatch_nvml_utilization_ratio{{{NODES}}}{RANGE})", ref="B", instant=True
            ),
            fw.target(f"flopwatch_gpu_info{{{NODES}}}", ref="C", instant=True),
            fw.target(f"flopwatch_below_threshold{{{NODES}}} == 1", ref="D", instant=True),
        ],
        {
            "instance": ("Node", "none"),
            "gpu": ("GPU", "none"),
            "name": ("Model", "none"),
            "Value #A": ("Utilization", "percentunit"),
            "Value #B": ("NVML utilization.gpu", "percentunit"),
            "cause": ("Cause", "none"),
            "source_quality": ("Utilization source", "none"),
        },
        hidden=("uuid", "driver", "cuda", "pci_bus_id", "Value #C", "Value #D"),
        sort_by="Value #A",
        unit="percentunit",
    ),
    fw.utilization(
        "Utilization by GPU",
        "Fraction of time the SMs had work (GPM SM activity); the dashed line is the alerting threshold.",
        [fw.target(f"flopwatch_utilization_ratio{{{NODES}}}", "{{instance}} GPU {{gpu}}")],
        width=24,
    ),
]

waste = [
    fw.timeseries(
        "Wasted GPUs by cause",
        "GPUs' worth of time spent below the threshold, split by the diagnosed cause.",
        [fw.target(f"sum by (cause) (rate(flopwatch_wasted_gpu_seconds_total{{{NODES}}}{fw.RATE}))", "{{cause}}")],
        "suffix: GPUs",
        stacked=True,
        bars=True,
    ),
    fw.table(
        "Wasted GPU-hours by cause",
        "GPU-hours below the threshold during the range, by cause, largest first.",
        [
            fw.target(
                f"sum by (cause) (increase(flopwatch_wasted_gpu_seconds_total{{{NODES}}}{RANGE})) / 3600",
                instant=True,
            )
        ],
        {"cause": ("Cause", "none"), "Value": ("GPU-hours", "h")},
        sort_by="Value",
        descending=True,
        unit="h",
        width=6,
    ),
    fw.table(
        "Worst jobs",
        "Jobs by their processes' mean share of SM time over the range, lowest first, with the GPU memory they hold.",
        [
            # Recorded per node and job by alerts/flopwatch.rules.yml: a series per job, not per process.
            fw.target(
                f"avg_over_time(instance_{JOB}:flopwatch_process_sm_ratio:avg{{{JOBS}}}{RANGE})",
                ref="A",
                instant=True,
            ),
            fw.target(
                f"avg_over_time(instance_{JOB}:flopwatch_process_memory_bytes:sum{{{JOBS}}}{RANGE})",
                ref="B",
                instant=True,
            ),
            fw.target(f"instance_{JOB}:flopwatch_process_gpus:count{{{JOBS}}}", ref="C", instant=True),
        ],
        {
            JOB: ("Job", "none"),
            "instance": ("Node", "none"),
            "Value #A": ("SM share", "percentunit"),
            "Value #B": ("GPU memory held", "bytes"),
            "Value #C": ("GPUs", "none"),
        },
        sort_by="Value #A",
        unit="percentunit",
        width=6,
    ),
]

energy = [
    fw.timeseries(
        "Power by node",
        "Electrical power drawn by each node's selected GPUs, stacked.",
        [fw.target(f"sum by (instance) (flopwatch_power_watts{{{NODES}}})", "{{instance}}")],
        "watt",
        stacked=True,
    ),
    fw.timeseries(
        "Tokens per joule by node",
        "Tokens processed per joule of GPU energy on each node: higher is cheaper inference.",
        fw.targets(
            (
                f"sum by (instance) (rate(flopwatch_tokens_total{{{NODES}}}{fw.RATE}))"
                f" / sum by (instance) (rate(flopwatch_energy_joules_total{{{NODES}}}{fw.RATE}))",
                "{{instance}}",
            )
        ),
        "suffix: tok/J",
    ),
]

dashboard = fw.build_dashboard(
    "flopwatch / Fleet",
    "flopwatch-fleet",
    "GPU utilization across the fleet, the GPU-hours lost below the threshold and why, and energy per token.",
    [fw.datasource_variable(), fw.instance_variable(), fw.job_variable()],
    [
        ("Overview", overview),
        ("By node and GPU", by_gpu),
        ("Waste", waste),
        ("Energy and tokens", energy),
    ],
)
