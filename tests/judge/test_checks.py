import dataclasses

import pytest

from flopwatch.judge.calibration import Calibrations, Factors
from flopwatch.judge.checks import (
    Check, check_clock_events, check_cuda, check_driver, check_ecc, check_flops_calibration, check_gpm, check_mig,
    check_numa, check_pcie_link, check_persistence_mode, check_power_limit, check_remapped_rows, check_xid, cpu_ranges, run_checks, worst,
)
from flopwatch.sources.sysfacts import GpuFacts, NodeFacts, XidEvent, parse_xid_events, same_pci_device

NODE = NodeFacts(os_name="Linux", os_release="6.1.0", driver_version="580.95.05", cuda_driver_version=13000,
                 numa_nodes=2, kernel_log_readable=True, seconds_since_boot=10_000.0)
GOOD_GPU = GpuFacts(
    index=0, name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:18:00.0", persistence_mode=True,
    pcie_gen_current=5, pcie_gen_max=5, pcie_gen_gpu_max=5, pcie_width_current=16, pcie_width_max=16,
    utilization_ratio=0.9, power_limit_watts=700.0, default_power_limit_watts=700.0, clock_event_reasons=0,
    ecc_enabled=True, ecc_pending_enabled=True, ecc_uncorrected_volatile=0, ecc_uncorrected_aggregate=0,
    remapped_rows_uncorrectable=0, remap_pending=False, remap_failure=False, mig_enabled=False,
    mig_pending_enabled=False, gpm_supported=True, numa_node=0, cpus=tuple(range(32)),
)


def gpu(**changes) -> GpuFacts:
    return dataclasses.replace(GOOD_GPU, **changes)


def node(**changes) -> NodeFacts:
    return dataclasses.replace(NODE, **changes)


def test_a_well_set_up_node_passes_every_check():
    checks = run_checks(node(gpus=(GOOD_GPU,)))
    assert worst(checks) == "pass"
    assert {c.name for c in checks} >= {"os", "driver", "cuda", "gpus", "persistence_mode", "pcie_link",
                                        "power_limit", "clock_events", "ecc", "remapped_rows", "mig_mode",
                                        "gpm", "xid_events", "numa_affinity"}


def test_per_gpu_checks_name_their_gpu():
    checks = run_checks(node(gpus=(GOOD_GPU, gpu(index=1))))
    assert [c.gpu for c in checks if c.name == "ecc"] == [0, 1]


def test_driver_older_than_530_fails_with_the_fix():
    check = check_driver(node(driver_version="525.60.13"))
    assert (check.status, check.value) == ("fail", "525.60.13")
    assert "530" in check.fix


def test_driver_530_passes():
    assert check_driver(node(driver_version="530.30.02")).status == "pass"


@pytest.mark.parametrize("encoded, status, shown", [(12000, "fail", "12.0"), (12010, "pass", "12.1"),
                                                    (12080, "pass", "12.8"), (13000, "pass", "13.0")])
def test_cuda_version_supported_by_the_driver(encoded, status, shown):
    check = check_cuda(node(cuda_driver_version=encoded))
    assert check.status == status and check.value.startswith(shown)


def test_without_nvml_only_the_system_checks_run_and_fail():
    checks = run_checks(node(nvml_error="NVML Shared Library Not Found", driver_version=None))
    assert [(c.name, c.status) for c in checks] == [("os", "pass"), ("driver", "fail"), ("cuda", "fail")]


def test_a_node_without_gpus_fails():
    assert [c.status for c in run_checks(node()) if c.name == "gpus"] == ["fail"]


def test_not_linux_fails():
    assert run_checks(node(os_name="Darwin"))[0].status == "fail"


def test_persistence_mode_off_warns():
    check = check_persistence_mode(gpu(persistence_mode=False))
    assert (check.status, check.value) == ("warn", "off") and "persistenced" in check.fix


def test_a_narrow_pcie_link_fails():
    check = check_pcie_link(gpu(pcie_width_current=4))
    assert (check.status, check.value) == ("fail", "Gen5 x4 (max Gen5 x16)")


def test_an_idle_link_at_a_lower_generation_is_normal():
    assert check_pcie_link(gpu(pcie_gen_current=1, utilization_ratio=0.0)).status == "pass"


def test_a_busy_link_below_its_generation_warns():
    assert check_pcie_link(gpu(pcie_gen_current=3, utilization_ratio=0.8)).status == "warn"


def test_a_card_in_a_slower_slot_warns():
    check = check_pcie_link(gpu(pcie_gen_current=4, pcie_gen_max=4))
    assert check.status == "warn" and "Gen5" in check.value


def test_power_limit_below_default_warns_with_the_command_to_restore_it():
    check = check_power_limit(gpu(power_limit_watts=400.0))
    assert (check.status, check.value) == ("warn", "400 W (default 700 W)")
    assert "nvidia-smi -i 0 -pl 700" in check.fix


@pytest.mark.parametrize("reasons, status, shown", [
    (0x0, "pass", "none"),
    (0x1, "pass", "gpu_idle"),
    (0x4, "pass", "sw_power_cap"),  # at the default limit under full load: the card doing its job
    (0x2, "warn", "clocks_setting"),
    (0x20, "warn", "sw_thermal_slowdown"),
    (0x40 | 0x20, "fail", "sw_thermal_slowdown, hw_thermal_slowdown"),
    (0x80, "fail", "hw_power_brake_slowdown"),
])
def test_clock_event_reasons(reasons, status, shown):
    check = check_clock_events(gpu(clock_event_reasons=reasons))
    assert (check.status, check.value) == (status, shown)


def test_uncorrectable_ecc_errors_since_boot_fail():
    check = check_ecc(gpu(ecc_uncorrected_volatile=2, ecc_uncorrected_aggregate=5))
    assert check.status == "fail" and "2 since driver load, 5 lifetime" in check.value


def test_old_uncorrectable_ecc_errors_warn():
    assert check_ecc(gpu(ecc_uncorrected_aggregate=1)).status == "warn"


def test_ecc_off_warns():
    assert check_ecc(gpu(ecc_enabled=False, ecc_pending_enabled=False)).status == "warn"


def test_ecc_on_a_card_without_it_passes_as_not_supported():
    check = check_ecc(gpu(ecc_enabled=None))
    assert (check.status, check.value) == ("pass", "not supported")


def test_a_failed_row_remap_fails_and_a_pending_one_warns():
    assert check_remapped_rows(gpu(remap_failure=True)).status == "fail"
    check = check_remapped_rows(gpu(remapped_rows_uncorrectable=3, remap_pending=True))
    assert check.status == "warn" and "nvidia-smi -r" in check.fix


def test_pending_mig_change_warns_and_enabled_mig_passes():
    assert check_mig(gpu(mig_pending_enabled=True)).status == "warn"
    assert check_mig(gpu(mig_enabled=True, mig_pending_enabled=True)).status == "pass"


def test_without_gpm_the_figures_are_coarse():
    check = check_gpm(gpu(gpm_supported=False))
    assert check.status == "warn" and "coarse" in check.value


def test_a_hardware_xid_fails():
    events = (XidEvent("0000:18:00", 79, 9_000.0, "NVRM: Xid (PCI:0000:18:00): 79, GPU has fallen off the bus."),)
    check = check_xid(gpu(xid_events=events), NODE)
    assert check.status == "fail"
    assert check.value == "1 event(s): Xid 79, last 17 min ago (GPU has fallen off the bus)"


def test_an_application_xid_warns():
    events = (XidEvent("0000:18:00", 13, 9_990.0, "NVRM: Xid (PCI:0000:18:00): 13, Graphics Exception"),)
    assert check_xid(gpu(xid_events=events), NODE).status == "warn"


def test_an_unreadable_kernel_log_is_a_node_warning():
    checks = run_checks(node(kernel_log_readable=False, gpus=(GOOD_GPU,)))
    assert [(c.status, c.gpu) for c in checks if c.name == "xid_events"][0] == ("warn", None)


def test_numa_node_and_close_cpus_are_shown():
    assert check_numa(gpu(numa_node=1, cpus=(32, 33, 34, 35, 96)), NODE).value == "node 1, CPUs 32-35,96"


def test_unknown_numa_node_on_a_two_socket_host_warns():
    assert check_numa(gpu(numa_node=-1), NODE).status == "warn"
    assert check_numa(gpu(numa_node=None), node(numa_nodes=1)).status == "pass"


def test_an_unopenable_gpu_fails():
    checks = run_checks(node(gpus=(GpuFacts(index=3, error="cannot open GPU 3: GPU is lost"),)))
    assert [(c.name, c.status, c.gpu) for c in checks][-1] == ("gpu", "fail", 3)


def test_xid_records_are_read_from_kmsg_lines():
    records = [
        "4,1021,5000000,-;NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n",
        "6,1022,5100000,-;eth0: link up\n",
        "4,1023,6000000,-;NVRM: Xid (PCI:0000:2a:00): 13, pid=42, Graphics SM Warp Exception\n",
    ]
    events = parse_xid_events(records)
    assert [(e.pci_bus_id, e.code, e.seconds_since_boot) for e in events] == [
        ("0000:18:00", 79, 5.0), ("0000:2a:00", 13, 6.0)]


def test_xid_bus_ids_match_nvml_bus_ids():
    assert same_pci_device("0000:2a:00", "00000000:2A:00.0")
    assert not same_pci_device("0000:2a:00", "00000000:2B:00.0")


def test_cpu_ranges():
    assert cpu_ranges([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"


def test_worst_status():
    assert worst([Check("a", "pass", ""), Check("b", "warn", "")]) == "warn"
    assert worst([]) == "pass"


def test_a_kernel_that_says_what_gpu_processes_wait_for_passes_the_host_evidence_check():
    [check] = [c for c in run_checks(node(schedstat=True, pressure_stall=True, task_delayacct=False, gpus=(GOOD_GPU,)))
               if c.name == "host_evidence"]
    assert check.status == "pass" and "kernel.task_delayacct=1" in check.value


def test_a_kernel_without_psi_warns_with_the_boot_option_that_turns_it_on():
    [check] = [c for c in run_checks(node(schedstat=True, pressure_stall=False, task_delayacct=True, gpus=(GOOD_GPU,)))
               if c.name == "host_evidence"]
    assert (check.status, check.fix) == ("warn", "boot with psi=1 (kernels built with CONFIG_PSI_DEFAULT_DISABLED)")


def test_a_card_with_a_shipped_flops_factor_passes_and_says_whence():
    check = check_flops_calibration(GOOD_GPU, NODE, Calibrations())
    assert check.status == "pass" and check.value.startswith("shipped: measured on H100 SXM")


def test_a_card_with_no_flops_factor_for_its_model_warns_to_run_calibrate():
    check = check_flops_calibration(gpu(name="NVIDIA H100 PCIe"), NODE, Calibrations())
    assert check.status == "warn" and "flopwatch calibrate" in check.fix


def test_a_factor_stored_only_under_another_driver_leaves_the_card_uncalibrated_and_says_so():
    stored = Calibrations({("H100 PCIe", "550.54.15"): Factors({"bf16": 0.9})})
    check = check_flops_calibration(gpu(name="NVIDIA H100 PCIe"), NODE, stored)
    assert check.status == "warn" and "stored only for driver 550.54.15" in check.value


def test_a_factor_stored_for_this_model_and_driver_passes():
    stored = Calibrations({("H100 PCIe", "580.95.05"): Factors({"bf16": 0.9, "fp32": 1.0})})
    check = check_flops_calibration(gpu(name="NVIDIA H100 PCIe"), NODE, stored)
    assert (check.status, check.value) == ("pass", "stored: measured on this node (tensor 0.900, fp32 1.000)")
