"""A GPU whose work changes is judged segment by segment: each side of a change has its own
verdict, and its waste is charged to it (simulated GPUs whose scenario is switched mid-run)."""

from flopwatch.commands.build import VirtualClock, build_agent
from flopwatch.config import Config
from flopwatch.history.report import read_history
from flopwatch.history.store import HistoryStore, query_history


def agent(first: str, sinks=()):
    config = Config()
    config.agent.simulate = [first]
    clock, wall = VirtualClock(0.0), VirtualClock(1.8e9)
    built = build_agent(config, clock=clock, wall_clock=wall, sinks=list(sinks))

    def run(seconds: int):
        state = None
        for _ in range(seconds):
            clock.now += 1.0
            wall.now += 1.0
            state = built.agent.tick()
        return state.gpus[0]
    return built.lib, run


def test_a_job_that_starts_on_an_idle_gpu_is_charged_to_its_own_cause_not_to_idle():
    lib, run = agent("idle")
    run(40)
    lib.set_scenario(0, "input_starved")
    gpu = run(30)
    assert gpu.finding.cause == "input_starved"
    # Every tick of the job under the threshold (its loader stalls three seconds in four) is its own.
    assert gpu.wasted_seconds == {"idle": 40.0, "input_starved": 22.0}


def test_a_healthy_run_after_a_stall_loses_the_stalls_finding_within_seconds():
    lib, run = agent("input_starved")
    run(40)
    lib.set_scenario(0, "healthy")
    gpu = run(10)
    assert gpu.finding is None
    assert not gpu.below_threshold


def test_a_change_of_activity_on_the_same_side_of_the_threshold_is_named_alone():
    # The same process, starved, then holding its memory and doing nothing: under the threshold
    # throughout. Its CPU is read every 10 s, so the change shows within two reads.
    lib, run = agent("input_starved")
    run(40)
    lib.set_scenario(0, "held_idle")
    gpu = run(25)
    assert gpu.finding.cause == "held_idle"
    assert gpu.wasted_seconds.get("unknown", 0.0) == 0.0


def test_the_history_charges_each_tick_as_the_counter_did(tmp_path):
    url = f"sqlite:///{tmp_path}/history.db"
    store = HistoryStore(url, "node1")
    lib, run = agent("idle", sinks=[store])
    run(20)
    lib.set_scenario(0, "input_starved")
    run(20)
    lib.set_scenario(0, "held_idle")
    gpu = run(25)
    store.close()
    rows = query_history(url, 0, 2e9, level="raw")
    charged: dict[str, float] = {}
    for row in rows:
        if row.wasted_seconds:
            charged[row.cause] = charged.get(row.cause, 0.0) + row.wasted_seconds
    assert charged == {cause: seconds for cause, seconds in gpu.wasted_seconds.items()}


def test_a_healthy_job_that_starts_to_stall_charges_the_stall_from_its_first_tick_to_its_cause():
    # The regime tracker needs a few ticks on the new side to see the change: those ticks wait in
    # the healthy segment, then join the new one, instead of going to `unknown`.
    lib, run = agent("healthy")
    run(40)
    lib.set_scenario(0, "input_starved")
    gpu = run(30)
    assert gpu.finding.cause == "input_starved"
    assert set(gpu.wasted_seconds) == {"input_starved"}
