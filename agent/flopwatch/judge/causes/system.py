"""The node, or nothing known: system, unknown."""

from __future__ import annotations

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.causes.rule import Cause, Context, finding
from flopwatch.judge.signals import Signals

SYSTEM = Cause(
    "system", "Node problem (driver, PCIe link) holds the GPU back",
    "The node itself holds the GPU back. Update the driver to >= 530 with CUDA >= 12.1 and check the PCIe "
    "link (reseat, BIOS), ECC and Xid errors; run `flopwatch doctor`.")
UNKNOWN = Cause(
    "unknown", "GPU under-used, cause not identified",
    "Utilization is low and no known signature matches. Profile one step (PyTorch profiler, Nsight Systems) "
    "to see where the time goes.")


def system(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """An old driver lacks fixes and features; a downtrained PCIe link starves transfers."""
    problems = []
    if s.driver_major is not None and s.driver_major < 530:
        problems.append(f"driver {s.driver_major} < 530")
    if s.cuda_version is not None and s.cuda_version < (12, 1):
        problems.append(f"CUDA {s.cuda_version[0]}.{s.cuda_version[1]} < 12.1")
    if s.pcie_width is not None and s.pcie_width_max and s.pcie_width < s.pcie_width_max:
        problems.append(f"PCIe link x{s.pcie_width} of x{s.pcie_width_max}")
    if problems:
        return finding(SYSTEM, "page", 0.7, s, problems="; ".join(problems))
    return None


def unknown(s: Signals, c: Context, th: Thresholds) -> Finding:
    """None of the above: an honest answer beats a wrong cause."""
    return finding(UNKNOWN, "page", 0.3, s, nvml_utilization=s.nvml_utilization,
                   process_cpu_cores=s.cpu_ratio, pcie_bytes_per_second=s.pcie_bytes_per_second,
                   thread_demand_cores=s.thread_demand_ratio, thread_wait_cores=s.thread_wait_ratio,
                   io_bytes_per_second=c.storage, cpu_pressure=s.cpu_pressure_ratio,
                   io_pressure=s.io_pressure_ratio)
