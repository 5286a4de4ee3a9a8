"""``flopwatch doctor``: is this node set up so its GPUs can work, and so the agent can measure them?

Pure checks over a facts record (read by sources/sysfacts.py). Each check says pass, warn or fail, the
value it saw and, where something is wrong, the fix. ``None`` in the facts means the driver
could not say; a check then passes with "not supported" unless not knowing is itself a problem.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable

from flopwatch.judge.calibration import Calibrations
from flopwatch.sources.sysfacts import GpuFacts, NodeFacts

MIN_DRIVER_MAJOR = 530
MIN_CUDA = (12, 1)
STATUSES = ("pass", "warn", "fail")

# Clock-event reason bits (NVML nvmlClocksEventReason*).
_IDLE, _APP_CLOCKS, _SW_POWER_CAP, _HW_SLOWDOWN = 0x1, 0x2, 0x4, 0x8
_SYNC_BOOST, _SW_THERMAL, _HW_THERMAL, _HW_POWER_BRAKE, _DISPLAY_CLOCKS = 0x10, 0x20, 0x40, 0x80, 0x100
_REASON_NAMES = {
    _IDLE: "gpu_idle", _APP_CLOCKS: "clocks_setting", _SW_POWER_CAP: "sw_power_cap",
    _HW_SLOWDOWN: "hw_slowdown", _SYNC_BOOST: "sync_boost", _SW_THERMAL: "sw_thermal_slowdown",
    _HW_THERMAL: "hw_thermal_slowdown", _HW_POWER_BRAKE: "hw_power_brake_slowdown",
    _DISPLAY_CLOCKS: "display_clock_setting",
}

# Xids that mean the hardware or the driver is in trouble (NVIDIA's Xid catalog); the rest are
# mostly a program's own fault (13 illegal instruction, 31 bad address, 43, 45 killed job...).
_HARDWARE_XIDS = {
    48: "double-bit ECC error", 61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt", 64: "row remapping failure", 74: "NVLink error",
    79: "GPU has fallen off the bus", 95: "uncontained ECC error", 119: "GSP RPC timeout",
    120: "GSP error", 140: "unrecovered ECC error", 154: "GPU recovery action required",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | warn | fail
    value: str
    fix: str = ""
    gpu: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def worst(checks: Iterable[Check]) -> str:
    return max((c.status for c in checks), key=STATUSES.index, default="pass")


def run_checks(facts: NodeFacts, calibrations: Calibrations | None = None,
               calibration_problem: str | None = None) -> list[Check]:
    """Every check for the node, then for each GPU in index order. ``calibrations``: the flops
    factors stored on this node (none: the shipped ones alone); ``calibration_problem``: why the
    calibration file could not be used."""
    calibrations = calibrations if calibrations is not None else Calibrations()
    checks = [check_os(facts), check_driver(facts), check_cuda(facts)]
    if facts.nvml_error is not None:
        return checks
    checks.append(check_gpu_count(facts))
    if facts.schedstat is not None:
        checks.append(check_host_evidence(facts))
    if facts.kernel_log_readable is False:
        checks.append(Check("xid_events", "warn", "kernel log not readable",
                            "run doctor as root (or with CAP_SYSLOG) to look for Xid errors"))
    if calibration_problem is not None:
        checks.append(Check("flops_calibration", "warn", f"file not used: {calibration_problem}",
                            "run `flopwatch calibrate` again on an idle GPU, or remove the file"))
    for gpu in facts.gpus:
        checks.extend(check_gpu(gpu, facts))
        if gpu.error is None:
            checks.append(check_flops_calibration(gpu, facts, calibrations))
    return checks


def check_os(facts: NodeFacts) -> Check:
    value = f"{facts.os_name} {facts.os_release}".strip()
    if facts.os_name == "Linux":
        return Check("os", "pass", value)
    return Check("os", "fail", value, "run flopwatch on Linux")


def check_driver(facts: NodeFacts) -> Check:
    if facts.nvml_error is not None:
        return Check("driver", "fail", f"NVML unavailable: {facts.nvml_error}",
                     f"install the NVIDIA driver (>= {MIN_DRIVER_MAJOR}) and check that nvidia-smi works")
    major = _leading_int(facts.driver_version)
    if major is None:
        return Check("driver", "warn", f"unreadable version {facts.driver_version!r}",
                     "check nvidia-smi's driver version")
    if major >= MIN_DRIVER_MAJOR:
        return Check("driver", "pass", facts.driver_version)
    return Check("driver", "fail", facts.driver_version,
                 f"upgrade the NVIDIA driver to {MIN_DRIVER_MAJOR} or newer (a current production branch)")


def check_cuda(facts: NodeFacts) -> Check:
    if facts.nvml_error is not None or facts.cuda_driver_version is None:
        return Check("cuda", "fail", "unknown", "install an NVIDIA driver that reports its CUDA version")
    version = divmod(facts.cuda_driver_version // 10, 100)
    value = f"{version[0]}.{version[1]} supported by the driver"
    if version >= MIN_CUDA:
        return Check("cuda", "pass", value)
    return Check("cuda", "fail", value,
                 f"upgrade the driver to one that supports CUDA {MIN_CUDA[0]}.{MIN_CUDA[1]} or newer "
                 f"(driver >= {MIN_DRIVER_MAJOR})")


def check_host_evidence(facts: NodeFacts) -> Check:
    """Whether the kernel says what a GPU process waits for on the host: a thread waiting for a
    CPU (schedstat), the host's CPU and I/O pressure (PSI), a thread's block-I/O wait (delay
    accounting). Without them diagnosis has less evidence, never invented figures."""
    missing, fixes = [], []
    if not facts.schedstat:
        missing.append("no schedstat (run-queue wait unknown)")
        fixes.append("a kernel built with CONFIG_SCHED_INFO")
    if not facts.pressure_stall:
        missing.append("no PSI (CPU and I/O pressure unknown)")
        fixes.append("boot with psi=1 (kernels built with CONFIG_PSI_DEFAULT_DISABLED)")
    if facts.task_delayacct is None:
        delayacct = "delay accounting as the kernel was built (no switch before Linux 5.14)"
    elif facts.task_delayacct:
        delayacct = "delay accounting on"
    else:
        delayacct = "delay accounting off (optional: sysctl kernel.task_delayacct=1 gives each thread's block-I/O wait)"
    if missing:
        return Check("host_evidence", "warn", "; ".join(missing + [delayacct]), "; ".join(fixes))
    return Check("host_evidence", "pass", f"schedstat, PSI; {delayacct}")


def check_gpu_count(facts: NodeFacts) -> Check:
    count = len(facts.gpus)
    if count:
        return Check("gpus", "pass", str(count))
    return Check("gpus", "fail", "0", "no GPU visible to NVML: check nvidia-smi, the kernel module and "
                                      "the device nodes /dev/nvidia*")


def check_gpu(gpu: GpuFacts, facts: NodeFacts) -> list[Check]:
    if gpu.error is not None:
        return [Check("gpu", "fail", gpu.error, "check nvidia-smi -i N; reset the GPU or reboot", gpu.index)]
    return [check(gpu) for check in (
        check_persistence_mode, check_pcie_link, check_power_limit, check_clock_events, check_ecc,
        check_remapped_rows, check_mig, check_gpm,
    )] + [check_xid(gpu, facts), check_numa(gpu, facts)]


def check_persistence_mode(gpu: GpuFacts) -> Check:
    if gpu.persistence_mode is None:
        return Check("persistence_mode", "pass", "not supported", gpu=gpu.index)
    if gpu.persistence_mode:
        return Check("persistence_mode", "pass", "on", gpu=gpu.index)
    return Check("persistence_mode", "warn", "off",
                 "enable the nvidia-persistenced service (or nvidia-smi -pm 1): without it the driver "
                 "unloads between jobs, each start pays the init and settings are lost", gpu.index)


def check_pcie_link(gpu: GpuFacts) -> Check:
    gen, gen_max, width, width_max = (gpu.pcie_gen_current, gpu.pcie_gen_max, gpu.pcie_width_current,
                                      gpu.pcie_width_max)
    if None in (gen, gen_max, width, width_max):
        return Check("pcie_link", "pass", "not supported", gpu=gpu.index)
    value = f"Gen{gen} x{width} (max Gen{gen_max} x{width_max})"
    if width < width_max:
        return Check("pcie_link", "fail", value,
                     f"the link trained to x{width} of x{width_max}: reseat the card or its riser, check "
                     "the slot's wiring in the BIOS (bifurcation)", gpu.index)
    if gpu.pcie_gen_gpu_max is not None and gen_max < gpu.pcie_gen_gpu_max:
        return Check("pcie_link", "warn", f"{value}; the card does Gen{gpu.pcie_gen_gpu_max}",
                     "the slot or riser limits the link generation: use a slot of the card's generation "
                     "or raise the slot's PCIe speed in the BIOS", gpu.index)
    if gen < gen_max:
        if not gpu.utilization_ratio:
            return Check("pcie_link", "pass", f"{value}; idle links drop speed to save power", gpu=gpu.index)
        return Check("pcie_link", "warn", f"{value} while busy",
                     "the link runs below its generation under load: check the BIOS PCIe speed and "
                     "ASPM settings, reseat the card", gpu.index)
    return Check("pcie_link", "pass", value, gpu=gpu.index)


def check_power_limit(gpu: GpuFacts) -> Check:
    limit, default = gpu.power_limit_watts, gpu.default_power_limit_watts
    if limit is None or default is None:
        return Check("power_limit", "pass", "not supported", gpu=gpu.index)
    value = f"{limit:.0f} W (default {default:.0f} W)"
    if limit < default * 0.99:
        return Check("power_limit", "warn", value,
                     f"the power limit is below the card's default: restore it with "
                     f"nvidia-smi -i {gpu.index} -pl {default:.0f} unless the cap is intended", gpu.index)
    return Check("power_limit", "pass", value, gpu=gpu.index)


def check_clock_events(gpu: GpuFacts) -> Check:
    reasons = gpu.clock_event_reasons
    if reasons is None:
        return Check("clock_events", "pass", "not supported", gpu=gpu.index)
    active = [name for bit, name in _REASON_NAMES.items() if reasons & bit]
    value = ", ".join(active) or "none"
    if reasons & (_HW_SLOWDOWN | _HW_THERMAL | _HW_POWER_BRAKE):
        return Check("clock_events", "fail", value,
                     "the hardware is slowing the GPU down: check cooling (fans, airflow, inlet "
                     "temperature) and the power supply and cables; nvidia-smi -q -d PERFORMANCE", gpu.index)
    if reasons & _SW_THERMAL:
        return Check("clock_events", "warn", value,
                     "the GPU runs hot enough for the driver to lower clocks: improve cooling", gpu.index)
    if reasons & (_APP_CLOCKS | _DISPLAY_CLOCKS):
        return Check("clock_events", "warn", value,
                     f"clocks are locked or set low: nvidia-smi -i {gpu.index} -rgc -rmc (and -rac) "
                     "unless intended", gpu.index)
    # Idle, sync boost and reaching the (default) power limit under full load are normal.
    return Check("clock_events", "pass", value, gpu=gpu.index)


def check_ecc(gpu: GpuFacts) -> Check:
    if gpu.ecc_enabled is None:
        return Check("ecc", "pass", "not supported", gpu=gpu.index)
    volatile, aggregate = gpu.ecc_uncorrected_volatile or 0, gpu.ecc_uncorrected_aggregate or 0
    value = (f"{'on' if gpu.ecc_enabled else 'off'}; uncorrectable errors: {volatile} since driver load, "
             f"{aggregate} lifetime")
    if volatile:
        return Check("ecc", "fail", value,
                     "uncorrectable memory errors: drain the node and reset the GPU (nvidia-smi -r) or "
                     "reboot; if they come back, have the card replaced", gpu.index)
    if gpu.ecc_pending_enabled is not None and gpu.ecc_pending_enabled != gpu.ecc_enabled:
        return Check("ecc", "warn", value + "; a mode change is pending",
                     "reset the GPU or reboot to apply the pending ECC mode", gpu.index)
    if not gpu.ecc_enabled:
        return Check("ecc", "warn", value,
                     f"enable ECC (nvidia-smi -i {gpu.index} -e 1, then reset or reboot) so memory "
                     "errors are caught, not silently computed with", gpu.index)
    if aggregate:
        return Check("ecc", "warn", value,
                     "the card has had uncorrectable errors before: watch remapped rows and Xids", gpu.index)
    return Check("ecc", "pass", value, gpu=gpu.index)


def check_remapped_rows(gpu: GpuFacts) -> Check:
    if gpu.remap_pending is None and gpu.remap_failure is None:
        return Check("remapped_rows", "pass", "not supported", gpu=gpu.index)
    value = f"{gpu.remapped_rows_uncorrectable or 0} rows remapped"
    if gpu.remap_failure:
        return Check("remapped_rows", "fail", value + "; a remapping failed",
                     "the memory has run out of spare rows: have the card replaced", gpu.index)
    if gpu.remap_pending:
        return Check("remapped_rows", "warn", value + "; a remap is pending",
                     "reset the GPU (nvidia-smi -r) or reboot to apply the pending row remap", gpu.index)
    return Check("remapped_rows", "pass", value, gpu=gpu.index)


def check_mig(gpu: GpuFacts) -> Check:
    if gpu.mig_enabled is None:
        return Check("mig_mode", "pass", "not supported", gpu=gpu.index)
    value = "enabled" if gpu.mig_enabled else "disabled"
    if gpu.mig_pending_enabled is not None and gpu.mig_pending_enabled != gpu.mig_enabled:
        return Check("mig_mode", "warn", f"{value}; {'enable' if gpu.mig_pending_enabled else 'disable'} pending",
                     "reset the GPU (nvidia-smi -r) or reboot to apply the pending MIG mode", gpu.index)
    if gpu.mig_enabled:
        value += "; the agent's figures cover the whole GPU, not each instance"
    return Check("mig_mode", "pass", value, gpu=gpu.index)


def check_gpm(gpu: GpuFacts) -> Check:
    if gpu.gpm_supported:
        return Check("gpm", "pass", "supported", gpu=gpu.index)
    return Check("gpm", "warn", "not supported: utilization falls back to NVML's coarse kernel time",
                 "GPM needs a Hopper or newer GPU and driver >= 520; in a VM the host must expose "
                 "profiling counters", gpu.index)


def check_flops_calibration(gpu: GpuFacts, facts: NodeFacts, calibrations: Calibrations) -> Check:
    """Flops utilization is right only where what a pipe's active cycle delivers on this card has been
    measured: by `flopwatch calibrate` here (stored) or on the same model before it shipped."""
    calibration = calibrations.resolve(gpu.name or "", facts.driver_version or "")
    if calibration is None:
        return Check("flops_calibration", "warn", f"{gpu.name}: no peak rates known, no flops utilization",
                     "the other figures are unaffected; peak rates by model are in judge/peaks.py", gpu.index)
    if calibration.state == "uncalibrated":
        return Check("flops_calibration", "warn", f"uncalibrated: {calibration.detail}",
                     "run `flopwatch calibrate` once on this node while its GPUs are idle", gpu.index)
    return Check("flops_calibration", "pass", f"{calibration.state}: {calibration.detail}", gpu=gpu.index)


def check_xid(gpu: GpuFacts, facts: NodeFacts) -> Check:
    events = gpu.xid_events
    if not events:
        seen = "none in the kernel log" if facts.kernel_log_readable else "none seen"
        return Check("xid_events", "pass", seen, gpu=gpu.index)
    last = events[-1]
    ago = ""
    if facts.seconds_since_boot is not None:
        ago = f", last {_duration(facts.seconds_since_boot - last.seconds_since_boot)} ago"
    codes = sorted({e.code for e in events})
    value = f"{len(events)} event(s): Xid {', '.join(map(str, codes))}{ago}"
    hardware = [c for c in codes if c in _HARDWARE_XIDS]
    if hardware:
        return Check("xid_events", "fail", value + f" ({_HARDWARE_XIDS[hardware[0]]})",
                     "hardware or driver error: drain the node, reset the GPU or reboot; if it recurs, "
                     "have the card checked (NVIDIA's Xid catalog says what each code means)", gpu.index)
    return Check("xid_events", "warn", value,
                 "usually a program's fault (bad memory access, killed job): look at the job that ran "
                 "then; repeated Xids on one GPU point at the card", gpu.index)


def check_numa(gpu: GpuFacts, facts: NodeFacts) -> Check:
    cpus = f", CPUs {cpu_ranges(gpu.cpus)}" if gpu.cpus else ""
    if gpu.numa_node is not None and gpu.numa_node >= 0:
        return Check("numa_affinity", "pass", f"node {gpu.numa_node}{cpus}", gpu=gpu.index)
    if (facts.numa_nodes or 1) > 1:
        return Check("numa_affinity", "warn", f"unknown on a {facts.numa_nodes}-node host{cpus}",
                     "enable NUMA / ACPI SRAT in the BIOS so the kernel knows which socket the GPU "
                     "hangs off; until then jobs cannot be pinned near it", gpu.index)
    return Check("numa_affinity", "pass", f"single NUMA node{cpus}", gpu=gpu.index)


def cpu_ranges(cpus: Iterable[int]) -> str:
    """(0, 1, 2, 3, 8) → "0-3,8"."""
    spans: list[list[int]] = []
    for cpu in sorted(cpus):
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def _leading_int(text: str | None) -> int | None:
    m = re.match(r"\d+", text or "")
    return int(m[0]) if m else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
