"""Token-cost view: what a token costs in energy, GPU time and money, by job."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flopwatch_grafana as fw  # noqa: E402  (it sits beside this file, not on sys.path)

JOB = fw.WORKLOAD_JOB

JOBS = f'instance=~"$instance", {JOB}=~"$job"'


def gpu_seconds_per_token(window: str, by: str = "") -> str:
    """GPUs on which the job has a process, per token per second: the GPU time a token is charged.

    ``by`` keeps that label (the job) apart; empty sums over every selected job.
    """
    grouping = f" by ({by})" if by else ""
    return (
        f"count{grouping} (count by (instance, gpu, {JOB}) (flopwatch_process_sm_ratio{{{JOBS}}}))"
        f" / sum{grouping} (rate(flopwatch_tokens_total{{{JOBS}}}[{window}]))"
    )


# Joules per token is the agent's per-GPU figure: kept for the GPUs the selected jobs run on.
JOULES_PER_TOKEN = (
    f'flopwatch_joules_per_token{{instance=~"$instance"}}'
    f" and on (instance, gpu) count by (instance, gpu) (flopwatch_process_sm_ratio{{{JOBS}}})"
)

# GPU-seconds per token × price per GPU-second × a million tokens.
PER_MILLION = " * $gpu_hour_price / 3600 * 1e6"

summary = [
    fw.stat(
        "Tokens per second",
        "Tokens the selected jobs process per second right now, from every token source.",
        fw.target(f"sum(rate(flopwatch_tokens_total{{{JOBS}}}{fw.RATE}))", instant=True),
        "suffix: tok/s",
        width=6,
    ),
    fw.stat(
        "Joules per token, range mean",
        "GPU energy per token over the range, as the agent attributes it to each job's GPUs.",
        fw.target(f"avg(avg_over_time(({JOULES_PER_TOKEN})[$__range:]))", instant=True),
        "joule",
        width=6,
    ),
    fw.stat(
        "GPU-seconds per 1k tokens",
        "GPU time the selected jobs hold for every thousand tokens, over the range.",
        fw.target(f"({gpu_seconds_per_token('$__range')}) * 1000", instant=True),
        "s",
        width=6,
    ),
    fw.stat(
        "Cost per 1M tokens",
        "GPU time per million tokens priced at the dashboard's price per GPU-hour, over the range.",
        fw.target(f"({gpu_seconds_per_token('$__range')}){PER_MILLION}", instant=True),
        "currencyUSD",
        width=6,
    ),
]

by_job = [
    fw.timeseries(
        "Tokens per second by job and source",
        "Token throughput of each job, split by where the count comes from (push API or an inference server).",
        fw.targets(
            (f"sum by ({JOB}, source) (rate(flopwatch_tokens_total{{{JOBS}}}{fw.RATE}))", f"{{{{{JOB}}}}} {{{{source}}}}")
        ),
        "suffix: tok/s",
        stacked=True,
    ),
    fw.timeseries(
        "Joules per token",
        "GPU energy per token on each GPU the selected jobs run on: lower is more efficient.",
        fw.targets((JOULES_PER_TOKEN, "GPU {{gpu}} {{instance}}")),
        "joule",
    ),
    fw.timeseries(
        "GPU-seconds per 1k tokens by job",
        "GPU time each job holds for every thousand tokens it processes.",
        fw.targets((f"({gpu_seconds_per_token('$__rate_interval', JOB)}) * 1000", f"{{{{{JOB}}}}}")),
        "s",
    ),
    fw.timeseries(
        "Cost per 1M tokens by job",
        "Each job's GPU time per million tokens priced at the dashboard's price per GPU-hour.",
        fw.targets((f"({gpu_seconds_per_token('$__rate_interval', JOB)}){PER_MILLION}", f"{{{{{JOB}}}}}")),
        "currencyUSD",
    ),
]

dashboard = fw.build_dashboard(
    "flopwatch / Token cost",
    "flopwatch-tokens",
    "What a token costs: throughput, joules per token, GPU-seconds per 1k tokens and price per 1M tokens.",
    [fw.datasource_variable(), fw.instance_variable(), fw.job_variable(), fw.price_variable()],
    [("Now and over the range", summary), ("By job over time", by_job)],
)
