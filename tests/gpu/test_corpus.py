"""The real-GPU corpus's scoring and batching, with plain records (no GPU needed)."""

import ast
from pathlib import Path

from flopwatch.judge.diagnose import CAUSES
from tests.gpu.corpus import agent_digest, estimate, merged, not_yet_measured, plan, read_windows, summary, window_record
from tests.gpu.labels import BUSY_CAUSES, LABELS, PHASES, Label

WORKLOADS = Path(__file__).parent / "workloads"


def record(workload, expected, cause, severity=None, utilization=0.1, stacks=None, culprit=None):
    return {"workload": workload, "expected": expected, "window": 0, "cause": cause, "severity": severity,
            "right": cause == expected, "utilization_mean": utilization, "stacks": stacks,
            "culprit_named": culprit}


def test_the_batches_hold_every_workload_once_and_each_fits_a_command():
    batches = plan(windows=3, window_seconds=8.0, warmup=3.0, budget=540)
    assert sorted(k for b in batches for k in b) == sorted(LABELS)
    assert all(sum(estimate(k, 3, 8.0, 3.0) for k in b) <= 540 for b in batches)


def test_the_corpus_goes_on_with_the_workloads_no_run_measured_every_window_of():
    whole = [record("a", None, None), record("a", None, None), record("a", None, None)]
    cut_short = [record("b", None, None)]
    failed = [{"workload": "c", "expected": None, "window": None, "failed": "no first step", "right": False}]
    assert not_yet_measured(["a", "b", "c", "d"], [whole, cut_short + failed], windows=3) == ["b", "c", "d"]


def test_a_budget_shorter_than_a_workload_plans_one_workload_a_batch():
    assert len(plan(windows=3, window_seconds=8.0, warmup=2.0, budget=5.0)) == len(LABELS)


def test_windows_one_at_a_time_are_planned_half_a_second_longer_each():
    host_side = next(k for k, label in LABELS.items() if label.cause == "input_starved")
    assert estimate(host_side, 3, 8.0, 2.0, staggered=False) - estimate(host_side, 3, 8.0, 2.0) == 3 * 0.5


def test_staggered_windows_start_a_window_apart_and_each_reads_a_whole_status_document(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[agent]\nsimulate = ["input_starved"]\n')
    waits = []
    windows = read_windows(3, 3.0, config=config, wait=waits.append)
    assert [round(w) for w in waits] == [0, 3, 6]  # each from the first start (the recorder does not sleep)
    assert [w["finding"]["cause"] for w in windows] == ["input_starved"] * 3


def test_a_window_whose_status_fails_says_why(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[agent]\nsimulate = ["no_such_scenario"]\n')
    [window] = read_windows(1, 1.0, staggered=False, config=config)
    assert "status exited 2" in window["error"] and "no_such_scenario" in window["error"]


def test_a_batch_count_asked_for_is_kept():
    assert len(plan(windows=3, window_seconds=8.0, warmup=3.0, budget=540, batches=9)) == 9


def test_a_phase_named_as_the_findings_phase_is_right():
    label = Label("loading_weights", ("load_file",), "")
    gpu = {"finding": {"cause": "io_bound", "phase": "loading_weights", "severity": "page"}}
    assert window_record("w", label, 0, gpu)["right"]


def test_the_expected_contributing_cause_is_scored_apart_from_the_primary():
    label = Label("launch_bound", (), "", contributing=("contention",))
    gpu = {"finding": {"cause": "launch_bound", "contributing": [{"cause": "contention", "evidence": {}}]}}
    record = window_record("w", label, 0, gpu)
    assert record["right"] and record["contributing_named"]
    assert not window_record("w", label, 0, {"finding": {"cause": "launch_bound"}})["contributing_named"]


STARVED = Label("input_starved", (), "", contributing=("memory_bound",))


def test_a_window_over_the_threshold_with_no_finding_is_right_for_a_waiting_gpus_label_but_not_by_its_cause():
    record = window_record("w", STARVED, 0, {"utilization": 0.64, "finding": None})
    assert (record["right"], record["right_by_label"]) == (True, False)


def test_a_window_over_the_threshold_with_a_ticket_for_a_contributing_cause_is_right():
    gpu = {"utilization": 0.61, "finding": {"cause": "memory_bound", "severity": "ticket"}}
    assert window_record("w", STARVED, 0, gpu)["right"]


def test_a_page_over_the_threshold_is_never_right_by_the_threshold():
    gpu = {"utilization": 0.65, "finding": {"cause": "launch_bound", "severity": "page"}}
    assert not window_record("w", STARVED, 0, gpu)["right"]


def test_no_finding_under_the_threshold_is_wrong_for_a_waiting_gpus_label():
    assert not window_record("w", STARVED, 0, {"utilization": 0.59, "finding": None})["right"]


def test_no_finding_over_the_threshold_is_wrong_for_a_busy_gpus_label():
    label = Label("no_tensor_cores", (), "")
    assert not window_record("w", label, 0, {"utilization": 0.95, "finding": None})["right"]


def test_the_totals_say_how_many_windows_were_right_over_the_threshold_and_the_score_by_the_cause_alone():
    lines = summary([record("tokenizer_in_loop", "input_starved", None, utilization=0.64),
                     record("tokenizer_in_loop", "input_starved", "input_starved", "page")], windows=2)
    assert "windows right: 2/2 = 100.0%" in lines
    assert "  of them over the threshold with no page: 1; by the label's cause alone: 1/2 = 50.0%" in lines


def test_a_page_on_healthy_work_is_counted():
    lines = summary([record("healthy", None, "memory_bound", "page", utilization=0.9)], windows=1)
    assert "pages on healthy work: 1" in lines


def test_a_page_over_the_threshold_is_counted_and_one_under_it_is_not():
    lines = summary([record("a", "input_starved", "input_starved", "page", utilization=0.65),
                     record("b", "input_starved", "input_starved", "page", utilization=0.2)], windows=1)
    assert "pages whose own window's utilization is ≥ 0.6: 1" in lines


def test_a_workload_rerun_in_a_later_file_counts_only_its_rerun_windows():
    first = [record("a", "input_starved", "launch_bound"), record("a", "input_starved", "input_starved"),
             record("b", None, None)]
    rerun = [record("a", "input_starved", "input_starved")]
    lines = summary(merged([first, rerun]), windows=1)
    assert any(line.startswith("windows right: 2/2 = 100.0%") for line in lines)


def test_a_workload_that_never_started_counts_its_windows_wrong():
    lines = summary([record("a", None, None), {"workload": "b", "expected": None, "window": None,
                                                "failed": "exited 1", "right": False}], windows=3)
    assert any(line.startswith("windows right: 1/4 = 25.0%") for line in lines)


def test_a_stack_names_the_culprit_by_a_frame_holding_a_responsible_function():
    label = Label("io_bound", ("read_batch",), "")
    assert label.names_culprit(["read_batch (host.py:48)", "odirect_file_loader (host.py:71)"])
    assert not label.names_culprit(["select (selectors.py:415)"])


def test_every_label_names_a_cause_of_the_taxonomy_or_a_phase():
    named = {label.cause for label in LABELS.values()} | {c for label in LABELS.values() for c in label.contributing}
    assert named - {None} <= set(CAUSES) | set(PHASES)


def test_the_busy_gpus_causes_are_causes_of_the_taxonomy():
    assert BUSY_CAUSES <= set(CAUSES)


def test_every_label_runs_workloads_that_exist():
    defined = set()
    for module in WORKLOADS.glob("*.py"):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WORKLOADS" for t in node.targets):
                defined |= {element.id for element in node.value.elts}
    used = {name.partition(" x")[0] for key in LABELS for name in key.split("+")}
    assert used <= defined


def test_the_agents_digest_changes_with_its_code_and_not_with_its_caches(tmp_path):
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "rules.py").write_text("THRESHOLD = 0.6\n")
    before = agent_digest(tmp_path)
    (tmp_path / "judge" / "__pycache__").mkdir()
    (tmp_path / "judge" / "__pycache__" / "rules.py").write_text("compiled")
    assert agent_digest(tmp_path) == before
    (tmp_path / "judge" / "rules.py").write_text("THRESHOLD = 0.5\n")
    assert agent_digest(tmp_path) != before


def test_the_totals_say_which_agent_read_how_many_windows():
    records = [dict(record("a", None, None), agent="aaa"), dict(record("b", None, None), agent="aaa"),
               record("c", None, None),
               {"workload": "d", "expected": None, "window": None, "failed": "no first step", "right": False,
                "agent": "bbb"}]
    assert summary(records, windows=3)[-1] == \
        "agent (digest of its code): bbb 3 window(s), aaa 2 window(s), not recorded 1 window(s)"
