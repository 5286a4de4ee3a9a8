"""The history store on SQLite: writes off the sampling path, outages, rollups, retention, reads."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from flopwatch.history import schema as store_schema
from flopwatch.config import ConfigError, HistoryConfig
from flopwatch.commands.history import history, parse_time
from flopwatch.model import StackProfile, StackShare
from flopwatch.history.store import HistoryStore, Retention, choose_level, open_engine, query_history
from tests.agent_process import agent_env
from tests.store_ticks import process_samples_by_pid, starved, tick

WRITER = Path(__file__).resolve().parents[1] / "store_writer.py"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def sqlite_url(tmp_path: Path, name: str = "history.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def scalar(store: HistoryStore, sql: str):
    with store.engine.connect() as connection:
        return connection.execute(text(sql)).scalar()


def record_seconds(store: HistoryStore, start: float, seconds: int, **kwargs) -> None:
    for n in range(seconds):
        store.record(tick(start + n, **kwargs))


# -- the file ------------------------------------------------------------------------------


def test_a_new_database_is_created_with_its_directory_mode_0640_in_wal_mode(tmp_path):
    path = tmp_path / "var" / "lib" / "flopwatch" / "history.db"
    store = HistoryStore(f"sqlite:///{path}", "node1")
    assert store.up
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert scalar(store, "PRAGMA journal_mode") == "wal"


def test_the_schema_is_marked_with_the_newest_revision(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    assert scalar(store, f"SELECT version_num FROM {store_schema.VERSION_TABLE}") == store_schema.SCHEMA_REVISION


def test_alembic_reads_the_mark_of_a_new_database_as_the_newest_revision(tmp_path):
    from alembic.migration import MigrationContext

    store = HistoryStore(sqlite_url(tmp_path), "node1")
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": store_schema.VERSION_TABLE})
        assert context.get_current_revision() == store_schema.SCHEMA_REVISION


def test_a_new_database_is_made_without_loading_alembic(tmp_path):
    code = ("import sys; from flopwatch.history.store import HistoryStore; "
            f"assert HistoryStore({sqlite_url(tmp_path)!r}, 'node1').up; print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=agent_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_schema_revision_is_the_newest_migration():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "flopwatch.history:migrations")
    assert ScriptDirectory.from_config(config).get_current_head() == store_schema.SCHEMA_REVISION


def test_the_migrations_build_the_same_schema_as_a_new_database(tmp_path):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    engine = open_engine(sqlite_url(tmp_path))
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", "flopwatch.history:migrations")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")  # every migration from an empty database
        context = MigrationContext.configure(connection, opts={"version_table": store_schema.VERSION_TABLE})
        assert compare_metadata(context, store_schema.metadata) == []


def test_an_upgrade_migrates_a_revision_0001_file_and_keeps_its_rows(tmp_path):
    url = sqlite_url(tmp_path)
    old = HistoryStore(url, "node1")
    record_seconds(old, T0, 3)
    assert old.flush()
    with old.engine.begin() as connection:  # what a 0001 agent left behind
        connection.execute(text("DROP TABLE alerts_outbox"))
        connection.execute(text("DROP TABLE reclaim_actions"))  # 0005's
        connection.execute(text("DROP TABLE job_verdicts"))
        connection.execute(text("DROP INDEX ix_job_spans_end"))
        for table in ("processes", "job_spans"):
            connection.execute(text(f"ALTER TABLE {table} DROP COLUMN rank"))
        connection.execute(text(f"UPDATE {store_schema.VERSION_TABLE} SET version_num = '0001'"))
    old.engine.dispose()

    new = HistoryStore(url, "node1", clock=lambda: T0)
    assert new.up
    assert scalar(new, f"SELECT version_num FROM {store_schema.VERSION_TABLE}") == store_schema.SCHEMA_REVISION
    assert scalar(new, "SELECT count(*) FROM gpu_raw") == 3
    assert new.outbox_enqueue({"alertname": "GPUUnderutilized"}) == 1


def test_an_agent_older_than_the_databases_schema_writes_on(tmp_path):
    url = sqlite_url(tmp_path)
    newer = HistoryStore(url, "node1")
    with newer.engine.begin() as connection:  # a newer agent of the fleet migrated it
        connection.execute(text(f"UPDATE {store_schema.VERSION_TABLE} SET version_num = '9999'"))
    newer.engine.dispose()
    older = HistoryStore(url, "node2")
    record_seconds(older, T0, 3)
    assert older.flush() and older.up
    assert scalar(older, "SELECT count(*) FROM gpu_raw WHERE host = 'node2'") == 3


# -- writing -------------------------------------------------------------------------------


def test_record_only_queues_rows_and_flush_writes_them(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    record_seconds(store, T0, 10, gpus=2, processes=3)
    assert scalar(store, "SELECT count(*) FROM gpu_raw") == 0
    assert store.pending_rows > 0
    assert store.flush()
    assert store.pending_rows == 0
    assert scalar(store, "SELECT count(*) FROM gpu_raw") == 20
    assert scalar(store, "SELECT count(*) FROM process_samples") == 60
    assert scalar(store, "SELECT count(*) FROM processes") == 6  # one identity per process
    assert scalar(store, "SELECT count(*) FROM gpus") == 2


def test_many_new_processes_in_one_flush_each_get_their_own_samples(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    record_seconds(store, T0, 3, gpus=2, processes=5)
    assert store.flush()
    stored = process_samples_by_pid(store.engine, "node1")
    assert len(stored) == 30
    assert all(memory == (20 + (pid - 1000) % 10) * 2**30 for pid, memory in stored)


def test_process_readings_handed_back_unchanged_get_no_new_rows_until_they_change(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    first = tick(T0, processes=2)
    store.record(first)
    for ts in (T0 + 1, T0 + 2):  # the agent hands back the very same views while nothing is new
        later = tick(ts, processes=2)
        store.record(replace(later, gpus=(replace(later.gpus[0], processes=first.gpus[0].processes),)))
    store.record(tick(T0 + 10, processes=2))  # read anew
    assert store.flush()
    assert scalar(store, "SELECT count(*) FROM gpu_raw") == 4
    assert scalar(store, "SELECT count(DISTINCT ts) FROM process_samples") == 2
    assert scalar(store, "SELECT count(*) FROM gpu_raw WHERE job = 'slurm:4242'") == 4


def test_a_tick_keeps_its_figures_to_a_hundredth_of_a_percent(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    store.record(tick(T0, utilization=0.87654, finding=starved()), tokens_by_gpu={0: 1200.0})
    store.flush()
    [row] = query_history(url, T0, T0 + 1, level="raw")
    assert row.host == "node1" and row.gpu == 0 and row.uuid.startswith("GPU-00000000")
    assert row.utilization == pytest.approx(0.8765, abs=1e-4)
    assert (row.flops_utilization, row.power_watts, row.energy_joules) == (0.31, 512.5, 512.5)
    assert (row.cause, row.wasted_seconds, row.tokens, row.job) == ("input_starved", 1.0, 1200.0, "slurm:4242")


def test_a_reading_that_is_not_a_number_is_stored_empty_and_holds_no_row_back(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    store.record(tick(T0, utilization=float("nan")))
    store.record(tick(T0 + 1, utilization=0.5))
    assert store.flush()
    rows = query_history(url, T0, T0 + 2, level="raw")
    assert [row.utilization for row in rows] == [None, 0.5]


def test_a_ticket_finding_is_not_below_the_threshold_and_wastes_nothing(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    ticket = starved().__class__(cause="no_tensor_cores", severity="ticket", confidence=0.9,
                                 evidence={}, advice="Use bf16.")
    store.record(tick(T0, finding=ticket))
    store.flush()
    with store.engine.connect() as connection:
        row = connection.execute(text("SELECT cause, below_threshold, wasted_seconds FROM gpu_raw")).one()
    assert tuple(row) == ("no_tensor_cores", 0, 0.0)


def test_findings_are_kept_from_start_to_end_with_evidence_and_advice(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    for n in range(10):
        store.record(tick(T0 + n, finding=starved() if 3 <= n < 7 else None))
    store.flush()
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT cause, severity, start_ts, end_ts, evidence, advice FROM findings")).all()
    [(cause, severity, start, end, evidence, advice)] = rows
    assert (cause, severity, start - T0, end - T0) == ("input_starved", "page", 3, 7)
    assert json.loads(evidence) == {"busiest_thread_cpu_ratio": 0.98, "utilization": 0.31}
    assert advice == "Raise DataLoader num_workers."


def test_stacks_sampled_after_a_finding_opened_are_written_into_its_evidence(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    profile = StackProfile(pids=(1000,), samples=40, stacks=(
        StackShare(share=0.62, frames=("encode (prep.py:88)", "collate (train.py:41)"), thread="MainThread", pid=1000),))
    for n in range(6):
        store.record(tick(T0 + n, finding=replace(starved(), stacks=profile) if n >= 3 else starved()))
    store.flush()
    [(start, evidence)] = _rows(store, "SELECT start_ts, evidence FROM findings")
    assert start == T0
    assert json.loads(evidence)["stack_summary"] == "62 % in encode (prep.py:88) ← collate (train.py:41)"


def _rows(store: HistoryStore, sql: str) -> list[tuple]:
    with store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql))]


def test_a_finding_left_open_by_a_crashed_run_ends_at_its_last_tick(tmp_path):
    url = sqlite_url(tmp_path)
    first = HistoryStore(url, "node1")
    record_seconds(first, T0, 5, finding=starved())
    first.flush()  # and the process dies: the finding stays open
    second = HistoryStore(url, "node1")
    record_seconds(second, T0 + 100, 2)
    second.flush()
    assert scalar(second, "SELECT end_ts FROM findings") == T0 + 4


def test_the_job_of_a_gpu_is_kept_as_spans(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    record_seconds(store, T0, 3, job="slurm:1")
    record_seconds(store, T0 + 3, 2, job="slurm:2")
    store.flush()
    with store.engine.connect() as connection:
        spans = connection.execute(text("SELECT job, start_ts, end_ts FROM job_spans ORDER BY id")).all()
    assert [(job, start - T0, end and end - T0) for job, start, end in spans] == [
        ("slurm:1", 0, 3), ("slurm:2", 3, None)]


# -- outages -------------------------------------------------------------------------------


def blocked_url(tmp_path: Path) -> tuple[str, Path]:
    """A database whose directory cannot be created while ``blocker`` (a file) is in the way."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return f"sqlite:///{blocker / 'history.db'}", blocker


def test_rows_wait_while_the_database_is_down_and_are_written_when_it_is_back(tmp_path):
    url, blocker = blocked_url(tmp_path)
    store = HistoryStore(url, "node1")
    assert not store.up and "blocker" in store.last_error
    record_seconds(store, T0, 30)
    assert not store.flush()
    assert store.pending_rows == 30 * 3 + 4  # a GPU and 2 processes a tick; at first, spans and the GPU
    blocker.unlink()
    assert store.flush() and store.up and store.last_error is None
    assert scalar(store, "SELECT count(*) FROM gpu_raw") == 30
    assert store.dropped_rows_total == 0


def test_past_its_size_the_buffer_drops_the_oldest_rows_and_counts_them(tmp_path):
    url, blocker = blocked_url(tmp_path)
    store = HistoryStore(url, "node1", buffer_rows=10)
    record_seconds(store, T0, 10, processes=0)  # the first tick also queues the GPU and a span
    assert store.pending_rows == 10
    assert store.dropped_rows_total == 3
    blocker.unlink()
    store.flush()
    assert scalar(store, "SELECT min(ts) FROM gpu_raw") == T0 + 1  # the oldest went


def store_samples(store: HistoryStore) -> dict[str, float]:
    return {s.name: s.value for family in store.collect() for s in family.samples if "_bucket" not in s.name}


def test_the_metrics_tell_whether_the_store_is_up_and_what_it_dropped(tmp_path):
    url, _ = blocked_url(tmp_path)
    store = HistoryStore(url, "node1", buffer_rows=5)
    record_seconds(store, T0, 5, processes=0)
    samples = store_samples(store)
    assert {name: samples[name] for name in ("flopwatch_store_up", "flopwatch_store_dropped_rows_total",
                                             "flopwatch_store_pending_rows")} == {
        "flopwatch_store_up": 0, "flopwatch_store_dropped_rows_total": 3, "flopwatch_store_pending_rows": 5}


def test_the_buffers_high_water_mark_stays_after_it_drains(tmp_path):
    url, blocker = blocked_url(tmp_path)
    store = HistoryStore(url, "node1")
    record_seconds(store, T0, 10, processes=0)
    blocker.unlink()
    assert store.flush()
    samples = store_samples(store)
    assert samples["flopwatch_store_pending_rows"] == 0
    assert samples["flopwatch_store_pending_rows_max"] == 10 + 3  # a row a tick; at first, the GPU and a span


def test_each_flush_is_timed_in_a_histogram(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1")
    record_seconds(store, T0, 3)
    store.flush()
    store.flush()
    samples = store_samples(store)
    assert samples["flopwatch_store_flush_seconds_count"] == 2
    assert samples["flopwatch_store_flush_seconds_sum"] > 0


def test_while_the_database_is_down_scheduled_flushes_back_off_doubling_to_twelve_intervals(tmp_path):
    url, _ = blocked_url(tmp_path)
    now = [T0]
    store = HistoryStore(url, "node1", flush_interval_seconds=5.0, clock=lambda: now[0], jitter=lambda: 1.0)
    delays = []
    for _ in range(7):
        now[0] = store.retry_at
        assert not store.flush_when_due()
        delays.append(store.retry_at - now[0])
    assert delays == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 60.0]  # the first failure, at start, waited 5 s


def test_a_backed_off_flush_does_not_touch_the_database(tmp_path):
    url, _ = blocked_url(tmp_path)
    now = [T0]
    store = HistoryStore(url, "node1", clock=lambda: now[0], jitter=lambda: 1.0)
    tried = store_samples(store)["flopwatch_store_connect_attempts_total"]
    now[0] = store.retry_at - 0.1
    assert not store.flush_when_due()
    assert store_samples(store)["flopwatch_store_connect_attempts_total"] == tried


def test_the_backoff_is_jittered_between_half_and_all_of_the_delay(tmp_path):
    url, _ = blocked_url(tmp_path)
    earliest = HistoryStore(url, "a", flush_interval_seconds=5.0, clock=lambda: T0, jitter=lambda: 0.0)
    latest = HistoryStore(url, "b", flush_interval_seconds=5.0, clock=lambda: T0, jitter=lambda: 0.999)
    assert earliest.retry_at == T0 + 2.5
    assert T0 + 4.99 < latest.retry_at < T0 + 5.0


def test_once_the_database_is_back_flushes_are_due_every_interval_again(tmp_path):
    url, blocker = blocked_url(tmp_path)
    now = [T0]
    store = HistoryStore(url, "node1", clock=lambda: now[0], jitter=lambda: 1.0)
    blocker.unlink()
    now[0] = store.retry_at
    assert store.flush_when_due()
    assert store.flush_when_due()  # no waiting once it worked


def test_a_read_only_database_file_leaves_the_agent_running_and_says_so(tmp_path):
    url = sqlite_url(tmp_path)
    HistoryStore(url, "node1").engine.dispose()
    (tmp_path / "history.db").chmod(0o444)
    probe = ("from flopwatch.history.store import HistoryStore; from tests.store_ticks import tick; "
             "import sys; s = HistoryStore(sys.argv[1], 'node1'); s.record(tick(1.0)); "
             "print(s.flush(), s.up, s.pending_rows > 0, s.last_error)")
    # Root writes read-only files; without the capability to override permissions it does not.
    as_user = (["setpriv", "--inh-caps=-dac_override,-fowner", "--bounding-set=-dac_override,-fowner"]
               if os.geteuid() == 0 else [])
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([*as_user, sys.executable, "-c", probe, url], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{root / 'agent'}:{root}"}, timeout=60)
    assert result.returncode == 0, result.stderr
    flushed, up, pending, error = result.stdout.split(" ", 3)
    assert (flushed, up, pending) == ("False", "False", "True")
    assert "read-only" in error
    assert "read-only" in result.stderr  # the agent's log says it at start


# -- crashes and shutdown ------------------------------------------------------------------


def start_writer(url: str, start: float, flush_every: int) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, str(WRITER), url, str(start), str(flush_every)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "ready\n"
    return writer


def test_kill_9_while_writing_20_times_loses_at_most_the_unflushed_batch(tmp_path):
    url = sqlite_url(tmp_path)
    path = tmp_path / "history.db"
    rng = random.Random(7)
    for run in range(20):
        start = T0 + run * 1_000_000
        writer = start_writer(url, start, flush_every=25)
        acknowledged = 0
        for _ in range(rng.randint(1, 6)):
            acknowledged = int(writer.stdout.readline().split()[1])
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            ticks, first, last = connection.execute(
                "SELECT count(DISTINCT ts), min(ts), max(ts) FROM gpu_raw WHERE ts >= ? AND ts < ?",
                (start, start + 1_000_000)).fetchone()
            rows = connection.execute("SELECT count(*) FROM gpu_raw WHERE ts >= ? AND ts < ?",
                                      (start, start + 1_000_000)).fetchone()[0]
            processes = connection.execute("SELECT count(*) FROM process_samples WHERE ts >= ? AND ts < ?",
                                           (start, start + 1_000_000)).fetchone()[0]
        assert ticks >= acknowledged  # every acknowledged flush survived
        assert (first, last - first + 1) == (start, ticks)  # and nothing before the cut is missing
        assert ticks % 25 == 0  # whole batches: a transaction is there or not
        assert (rows, processes) == (ticks * 8, ticks * 8 * 2)


def test_sigterm_flushes_the_queue_before_exit(tmp_path):
    url = sqlite_url(tmp_path)
    writer = start_writer(url, T0, flush_every=0)  # never flushes on its own
    while int(writer.stdout.readline().split()[1]) < 50:
        pass
    writer.send_signal(signal.SIGTERM)
    out, _ = writer.communicate(timeout=60)
    _, ticks, pending = out.strip().splitlines()[-1].split()
    assert writer.returncode == 0 and pending == "0"
    with sqlite3.connect(tmp_path / "history.db") as connection:
        assert connection.execute("SELECT count(*) FROM gpu_raw").fetchone()[0] == int(ticks) * 8


# -- rollups and retention -----------------------------------------------------------------


def test_a_minute_holds_means_maxima_sums_and_the_dominant_cause(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    for n in range(60):
        below = n < 40
        store.record(tick(T0 + n, utilization=0.2 if below else 0.8,
                                   finding=starved() if below else None), tokens_by_gpu={0: 10.0})
    store.flush()
    assert store.rollup(T0 + 60)
    [minute] = query_history(url, T0, T0 + 59, level="minute")
    assert minute.ts == T0 and minute.samples == 60
    assert minute.utilization == pytest.approx((40 * 0.2 + 20 * 0.8) / 60)
    assert minute.utilization_max == pytest.approx(0.8)
    assert minute.energy_joules == pytest.approx(60 * 512.5)
    assert (minute.wasted_seconds, minute.tokens, minute.cause) == (40.0, 600.0, "input_starved")
    [hour] = query_history(url, T0, T0 + 59, level="hour")
    assert (hour.samples, hour.wasted_seconds, hour.cause) == (60, 40.0, "input_starved")
    assert hour.utilization == pytest.approx(minute.utilization)


def test_rolling_up_again_does_not_count_twice(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    record_seconds(store, T0, 120)
    store.flush()
    store.rollup(T0 + 120)
    again = HistoryStore(url, "node1")  # a restarted agent resumes from the last minute
    again.rollup(T0 + 120)
    assert [row.samples for row in query_history(url, T0, T0 + 119, level="minute")] == [60, 60]
    assert [row.samples for row in query_history(url, T0, T0 + 119, level="hour")] == [120]


def test_rows_written_late_land_in_their_minute(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    record_seconds(store, T0, 30)
    store.flush()
    store.rollup(T0 + 30)
    record_seconds(store, T0 + 30, 30)  # the rest of the minute, after an outage
    store.flush()
    store.rollup(T0 + 300)
    assert [row.samples for row in query_history(url, T0, T0 + 59, level="minute")] == [60]


def test_retention_deletes_each_level_past_its_age(tmp_path):
    day = 86_400
    store = HistoryStore(sqlite_url(tmp_path), "node1",
                         retention=Retention(raw_days=1, minute_days=2, hour_days=3))
    for age_days in (3.5, 2.5, 1.5, 0.5):  # an agent that ran a little every day
        record_seconds(store, T0 - age_days * day, 2)
        store.flush()
        store.rollup(T0 - age_days * day + 2)
    assert store.retain(T0)
    counts = {table: scalar(store, f"SELECT count(*) FROM {table}")
              for table in ("gpu_raw", "process_samples", "gpu_minute", "gpu_hour")}
    assert counts == {"gpu_raw": 2, "process_samples": 4, "gpu_minute": 2, "gpu_hour": 3}


# -- the alerts outbox ---------------------------------------------------------------------


def test_the_outbox_keeps_an_alert_until_it_is_marked_sent(tmp_path):
    store = HistoryStore(sqlite_url(tmp_path), "node1", clock=lambda: T0)
    first = store.outbox_enqueue({"alertname": "GPUUnderutilized", "cause": "held_idle"})
    second = store.outbox_enqueue({"alertname": "GPUUnderutilized", "cause": "io_bound"})
    store.outbox_mark([first], sent=False)
    assert [payload["cause"] for _, payload in store.outbox_pending()] == ["held_idle", "io_bound"]
    store.outbox_mark([first], sent=True)
    assert store.outbox_pending() == [(second, {"alertname": "GPUUnderutilized", "cause": "io_bound"})]
    assert scalar(store, f"SELECT attempts FROM alerts_outbox WHERE id = {first}") == 2


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/x", "postgresql+psycopg2://u@h/db",
                                 "mysql+nosuchdriver://u@h/db"])
def test_a_bad_url_is_an_error_naming_the_setting(url):
    with pytest.raises(ConfigError, match=r"--history / \[history\]\.url"):
        HistoryStore(url, "node1")


def test_the_store_takes_its_settings_from_the_history_section(tmp_path):
    config = HistoryConfig(url=sqlite_url(tmp_path), buffer_rows=7, flush_interval_seconds=2.0,
                           retention_raw_days=1.0)
    store = HistoryStore.from_config(config, "node1")
    assert (store.buffer_rows, store.flush_interval_seconds, store.retention.raw_days) == (7, 2.0, 1.0)


# -- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("hours, level", [(1, "raw"), (2, "raw"), (3, "minute"), (24 * 7, "minute"),
                                          (24 * 8, "hour")])
def test_the_level_read_follows_the_length_of_the_range(hours, level):
    assert choose_level(T0, T0 + hours * 3600) == level


def test_a_range_with_no_rows_at_its_level_is_read_from_the_next_one(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    record_seconds(store, T0, 120)
    store.flush()
    store.rollup(T0 + 120)
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM gpu_raw"))  # as retention does after 7 days
    assert {row.level for row in query_history(url, T0, T0 + 119)} == {"minute"}


def test_a_job_is_read_only_where_and_while_it_ran(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    record_seconds(store, T0, 5, gpus=2, job="slurm:1")
    record_seconds(store, T0 + 5, 5, gpus=2, job="slurm:2")
    store.flush()
    rows = query_history(url, T0, T0 + 60, job="slurm:2", gpu=1)
    assert [(row.gpu, row.ts - T0, row.job) for row in rows] == [(1, n, "slurm:2") for n in range(5, 10)]
    by_uuid = query_history(url, T0, T0 + 60, job="slurm:2", gpu=rows[0].uuid)
    assert by_uuid == rows


@pytest.mark.parametrize("given, expected", [("now", T0), ("90s", T0 - 90), ("15m", T0 - 900),
                                             ("1h", T0 - 3600), ("2d", T0 - 2 * 86_400),
                                             ("2026-01-01T00:00Z", T0)])
def test_since_takes_an_age_or_a_date(given, expected):
    assert parse_time(given, now=T0) == expected


def test_a_local_date_is_read_as_local_time():
    from datetime import datetime

    assert parse_time("2026-11-25T10:00", now=T0) == datetime(2026, 11, 25, 10, 0).timestamp()


def cli(*args: str):
    """Run ``flopwatch history``; the output holds stdout and stderr, on a wide terminal."""
    return CliRunner().invoke(history, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def test_history_prints_a_table_json_or_csv(tmp_path):
    url = sqlite_url(tmp_path)
    store = HistoryStore(url, "node1")
    record_seconds(store, T0, 3, finding=starved())
    store.flush()
    window = ["--history", url, "--since", "2025-12-31T23:59Z", "--until", "2026-01-01T00:01Z"]
    table = cli(*window)
    assert table.exit_code == 0 and "input_starved" in table.output and "3 rows (raw)" in table.output
    as_json = json.loads(cli(*window, "--json").output)
    assert [row["cause"] for row in as_json] == ["input_starved"] * 3
    lines = cli(*window, "--csv").output.splitlines()
    assert lines[0].startswith("level,host,gpu,uuid,ts,") and len(lines) == 4


def test_history_exits_2_naming_the_setting_for_a_bad_url():
    result = cli("--history", "nosuchdb://x")
    assert result.exit_code == 2
    assert "--history / [history].url" in result.output


def test_history_exits_1_when_there_is_no_database(tmp_path):
    result = cli("--history", sqlite_url(tmp_path, "none.db"))
    assert result.exit_code == 1 and "no history database" in result.output


def test_history_rejects_a_bad_time_with_exit_2(tmp_path):
    result = cli("--history", sqlite_url(tmp_path), "--since", "yesterday-ish")
    assert result.exit_code == 2 and "neither an age" in result.output
