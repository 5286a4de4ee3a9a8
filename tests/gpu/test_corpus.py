"""The real-GPU corpus's scoring and batching, with plain records (no GPU needed)."""

from flopwatch.judge.diagnose import CAUSES
from tests.gpu.corpus import estimate, plan, summary
from tests.gpu.labels import LABELS, Label


def record(workload, expected, cause, severity=None, utilization=0.1, stacks=None, culprit=None):
    return {"workload": workload, "expected": expected, "window": 0, "cause": cause, "severity": severity,
            "right": cause == expected, "utilization_mean": utilization, "stacks": stacks,
            "culprit_named": culprit}


def test_the_batches_hold_every_workload_once_and_each_fits_a_command():
    batches = plan(4, windows=3, window_seconds=8.0, warmup=3.0)
    assert sorted(k for b in batches for k in b) == sorted(LABELS)
    assert all(sum(estimate(k, 3, 8.0, 3.0) for k in b) <= 540 for b in batches)


def test_a_page_on_healthy_work_is_counted():
    lines = summary([record("healthy", None, "memory_bound", "page", utilization=0.9)], windows=1)
    assert "pages on healthy work: 1" in lines


def test_a_page_over_the_threshold_is_counted_and_one_under_it_is_not():
    lines = summary([record("a", "input_starved", "input_starved", "page", utilization=0.65),
                     record("b", "input_starved", "input_starved", "page", utilization=0.2)], windows=1)
    assert "pages whose own window's utilization is ≥ 0.6: 1" in lines


def test_a_workload_that_never_started_counts_its_windows_wrong():
    lines = summary([record("a", None, None), {"workload": "b", "expected": None, "window": None,
                                                "failed": "exited 1", "right": False}], windows=3)
    assert any(line.startswith("windows right: 1/4 = 25.0%") for line in lines)


def test_a_stack_names_the_culprit_by_a_frame_holding_a_responsible_function():
    label = Label("io_bound", ("read_batch",), "")
    assert label.names_culprit(["read_batch (host.py:48)", "odirect_file_loader (host.py:71)"])
    assert not label.names_culprit(["select (selectors.py:415)"])


def test_every_label_names_a_cause_of_the_taxonomy():
    assert {label.cause for label in LABELS.values()} - {None} <= set(CAUSES)
