"""Node view: one node's GPUs in depth — what the chip does, what holds it back, and the fix."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flopwatch_grafana as fw  # noqa: E402  (it sits beside this file, not on sys.path)

JOB = fw.WORKLOAD_JOB

NODE = 'instance=~"$instance"'
GPUS = f'{NODE}, gpu=~"$gpu"'
PROCESSES = f'{GPUS}, {JOB}=~"$job"'
PER_GPU = "GPU {{gpu}}"


def per_gpu(metric: str, what: str = "") -> tuple[str, str]:
    """(expr, legend) for one per-GPU metric of the selected GPUs."""
    return f"{metric}{{{GPUS}}}", f"{PER_GPU} {what}".strip()


busy = [
    fw.utilization(
        "Utilization: SM activity vs NVML's figure",
        "SM activity is the fraction of time the SMs had work; NVML's utilization.gpu only says a kernel "
        "was running, so a gap between the two is work the chip never saw.",
        fw.targets(
            per_gpu("flopwatch_utilization_ratio", "SM active"),
            per_gpu("flopwatch_nvml_utilization_ratio", "NVML utilization.gpu"),
        ),
        width=15,
        height=9,
    ),
    fw.table(
        "Current cause and advice",
        "What flopwatch diagnoses as holding each GPU back right now, and what to do about it.",
        [fw.target(f"flopwatch_finding_info{{{GPUS}}}", instant=True)],
        {
            "gpu": ("GPU", "none"),
            "cause": ("Cause", "none"),
            "severity": ("Severity", "none"),
            "summary": ("Summary", "none"),
            "advice": ("Advice", "none"),
        },
        hidden=("instance", "uuid", "Value"),
        sort_by="gpu",
        width=9,
        height=9,
    ),
]

compute = [
    fw.utilization(
        "SM occupancy",
        "Resident warps as a fraction of the SMs' maximum: low occupancy with high activity means small launches.",
        fw.targets(per_gpu("flopwatch_sm_occupancy_ratio")),
        width=8,
    ),
    fw.timeseries(
        "Pipe activity: tensor, FP16, FP32, FP64",
        "Fraction of cycles each math pipe was busy: busy FP32 with idle tensor cores is math left on the slow path.",
        fw.targets(
            per_gpu("flopwatch_tensor_active_ratio", "tensor"),
            per_gpu("flopwatch_fp16_active_ratio", "FP16"),
            per_gpu("flopwatch_fp32_active_ratio", "FP32"),
            per_gpu("flopwatch_fp64_active_ratio", "FP64"),
        ),
        "percentunit",
        ratio=True,
        width=8,
    ),
    fw.timeseries(
        "FLOPS utilization",
        "Achieved FLOP/s as a fraction of the card's dense peak in its best tensor precision.",
        fw.targets(per_gpu("flopwatch_flops_utilization_ratio")),
        "percentunit",
        ratio=True,
        width=8,
    ),
]

memory = [
    fw.timeseries(
        "DRAM activity",
        "Fraction of cycles the memory interface was busy: near 100 % the kernels are bandwidth-bound.",
        fw.targets(per_gpu("flopwatch_dram_active_ratio")),
        "percentunit",
        ratio=True,
        width=8,
    ),
    fw.timeseries(
        "Memory turnover",
        "Bytes read and written per second divided by memory capacity: how many times a second memory is swept.",
        fw.targets(per_gpu("flopwatch_memory_turnover_per_second")),
        "suffix:/s",
        width=8,
    ),
    fw.timeseries(
        "Memory used",
        "Device memory in use, against the card's capacity.",
        fw.targets(
            per_gpu("flopwatch_memory_used_bytes", "used"),
            per_gpu("flopwatch_memory_total_bytes", "total"),
        ),
        "bytes",
        width=8,
    ),
]

power = [
    fw.timeseries(
        "Power",
        "Electrical power each GPU draws.",
        fw.targets(per_gpu("flopwatch_power_watts")),
        "watt",
        width=8,
    ),
    fw.timeseries(
        "SM clock",
        "The SMs' current clock: below the maximum under load means a power, thermal or configured cap.",
        fw.targets(per_gpu("flopwatch_sm_clock_hertz")),
        "hertz",
        width=8,
    ),
    fw.stat(
        "Energy",
        "Energy the selected GPUs drew during the range, from NVML's energy counter.",
        fw.target(f"sum(increase(flopwatch_energy_joules_total{{{GPUS}}}[$__range]))", instant=True),
        "joule",
        width=8,
        height=8,
    ),
    fw.timeseries(
        "Throttle reasons",
        "Fraction of time the clocks were held down, by NVML's clock-event reason.",
        fw.targets(
            (
                f"sum by (gpu, reason) (rate(flopwatch_throttle_seconds_total{{{GPUS}}}{fw.RATE}))",
                f"{PER_GPU} {{{{reason}}}}",
            )
        ),
        "percentunit",
        ratio=True,
    ),
    fw.timeseries(
        "PCIe throughput",
        "Bytes per second over PCIe, host to device (rx) and device to host (tx).",
        fw.targets(
            per_gpu("flopwatch_pcie_rx_bytes_per_second", "rx"),
            per_gpu("flopwatch_pcie_tx_bytes_per_second", "tx"),
        ),
        "Bps",
    ),
]

processes = [
    fw.timeseries(
        "SM share by process",
        "Each process's share of its GPU's SM time: several small shares on one GPU means time-slicing.",
        fw.targets(
            (
                f"flopwatch_process_sm_ratio{{{PROCESSES}}}",
                f"{PER_GPU} {{{{{JOB}}}}} pid {{{{pid}}}}",
            )
        ),
        "percentunit",
        stacked=True,
    ),
    fw.timeseries(
        "GPU memory by process",
        "Device memory each process holds: memory held with no SM share is a GPU nobody else can use.",
        fw.targets(
            (
                f"flopwatch_process_memory_bytes{{{PROCESSES}}}",
                f"{PER_GPU} {{{{{JOB}}}}} pid {{{{pid}}}}",
            )
        ),
        "bytes",
        stacked=True,
    ),
]

agent = [
    fw.table(
        "GPUs",
        "The GPUs on this node with their model, driver and the newest CUDA the driver supports.",
        [fw.target(f"flopwatch_gpu_info{{{GPUS}}}", instant=True)],
        {
            "gpu": ("GPU", "none"),
            "name": ("Model", "none"),
            "driver": ("Driver", "none"),
            "cuda": ("CUDA", "none"),
            "source_quality": ("Utilization source", "none"),
            "pci_bus_id": ("PCI bus", "none"),
            "uuid": ("UUID", "none"),
        },
        hidden=("instance", "Value"),
        sort_by="gpu",
        width=16,
        height=6,
    ),
    fw.stat(
        "Collectors healthy",
        "Whether each of the agent's collectors succeeded on every tick of the range.",
        fw.target(
            f"min by (collector) (min_over_time(flopwatch_collector_success{{{NODE}}}[$__range]))",
            "{{collector}}",
            instant=True,
        ),
        "bool_yes_no",
        width=8,
        height=6,
    ),
]

dashboard = fw.build_dashboard(
    "flopwatch / Node",
    "flopwatch-node",
    "One node's GPUs: real utilization against NVML's figure, the pipes and memory behind it, "
    "power and throttling, processes, and the diagnosed cause with its fix.",
    [fw.datasource_variable(), fw.instance_variable(multi=False), fw.gpu_variable(), fw.job_variable()],
    [
        ("Is it busy?", busy),
        ("Compute", compute),
        ("Memory", memory),
        ("Power, clocks and PCIe", power),
        ("Processes", processes),
        ("Agent", agent),
    ],
)
