"""Storage faults under a running agent: PostgreSQL crashed and restarted, a read-only SQLite file,
a full disk. Sampling and /metrics go on, rows wait in the buffer and land when the database is
back, and the rows lost (flopwatch_store_dropped_rows_total) are exported: 0 within the buffer."""

import collections
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from flopwatch.history.store import HistoryStore
from tests.agent_process import agent_env, get
from tests.faults import live
from tests.servers import free_port

INTERVAL = 0.2
FLUSH = 0.3


def start_with_store(url: str, buffer_rows: int = 200_000) -> live.LiveAgent:
    config = live.simulated_config(["healthy", "input_starved"], interval=INTERVAL)
    config.history.url, config.history.flush_interval_seconds, config.history.buffer_rows = url, FLUSH, buffer_rows
    return live.start(config, sinks=[HistoryStore.from_config(config.history, "node1")])


def store_metrics(agent: live.LiveAgent) -> dict[str, float]:
    return {name: value for (name, _), value in agent.metrics().items() if name.startswith("flopwatch_store_")}


def ride_out_outage(agent: live.LiveAgent, restore) -> None:
    """While the store is down: ticks go on, /metrics says so and rows wait; then restore it."""
    assert live.wait_for(lambda: store_metrics(agent)["flopwatch_store_up"] == 0)
    agent.wait_ticks(10)
    down = store_metrics(agent)
    assert down["flopwatch_store_pending_rows"] > 0 and down["flopwatch_store_dropped_rows_total"] == 0
    restore()
    # New ticks keep queueing rows, so the buffer drains to below the outage's, not to 0.
    assert live.wait_for(lambda: (lambda m: m["flopwatch_store_up"] == 1 and m["flopwatch_store_pending_rows"]
                                  < down["flopwatch_store_pending_rows"])(store_metrics(agent)))
    assert store_metrics(agent)["flopwatch_store_dropped_rows_total"] == 0


@pytest.fixture
def stopping():
    """Stops the agents a test started, however the test ends."""
    agents = []
    yield lambda agent: agents.append(agent) or agent
    for agent in agents:
        agent.stop()


def assert_every_tick_written(agent: live.LiveAgent) -> None:
    store = next(s for s in agent.sinks if isinstance(s, HistoryStore))
    agent.stop()  # the final flush included
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT gpu, count(*) FROM gpu_raw GROUP BY gpu ORDER BY gpu")).all()
    # Every tick in which a GPU was read has its row (a loaded machine can make a read miss its
    # deadline; that GPU was then marked for the tick, and there is no reading to store).
    read = collections.Counter(gpu for errors in agent.ticks.since(0) for gpu, error in errors.items() if error is None)
    assert [tuple(r) for r in rows] == [(0, read[0]), (1, read[1])]
    assert min(read.values()) >= agent.agent.state.ticks - 2


def durable(url: str) -> str:
    """The test server commits asynchronously for speed; a production one keeps what it acknowledged."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE {name} SET synchronous_commit = on")
    return url


def test_postgres_crashed_and_restarted_loses_no_tick(postgres_server, postgres_url, stopping):
    agent = stopping(start_with_store(durable(postgres_url)))
    assert live.wait_for(lambda: store_metrics(agent)["flopwatch_store_up"] == 1)
    # Immediate mode is a crash as the agent sees it: connections cut, no checkpoint, recovery at
    # the next start. (A SIGKILLed postmaster stays a zombie here, and its PID blocks the restart.)
    postgres_server._run("pg_ctl", "-D", str(postgres_server.data), "-m", "immediate", "-w", "stop")
    try:
        ride_out_outage(agent, postgres_server.start)
    finally:
        if not (postgres_server.data / "postmaster.pid").exists():
            postgres_server.start()
    assert_every_tick_written(agent)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB filesystem of its own (tmpfs), so filling it touches nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:  # ENOSPC: the disk is full
            pass
    return filler


def test_a_full_disk_holds_rows_in_memory_until_there_is_room(small_disk, stopping, caplog):
    agent = stopping(start_with_store(f"sqlite:///{small_disk}/history.db"))
    assert live.wait_for(lambda: store_metrics(agent)["flopwatch_store_up"] == 1)
    filler = fill(small_disk)
    ride_out_outage(agent, filler.unlink)
    assert "database or disk is full" in caplog.text
    assert_every_tick_written(agent)


def test_past_the_buffer_the_lost_rows_are_counted_in_metrics(tmp_path, stopping):
    blocker = tmp_path / "blocker"
    blocker.write_text("")  # a file where the database's directory should be: the store stays down
    agent = stopping(start_with_store(f"sqlite:///{blocker}/history.db", buffer_rows=50))
    assert live.wait_for(lambda: store_metrics(agent)["flopwatch_store_dropped_rows_total"] > 0)
    assert store_metrics(agent)["flopwatch_store_pending_rows"] == 50
    agent.wait_ticks(3)  # and sampling goes on


def test_a_read_only_database_file_is_written_again_once_fixed(tmp_path):
    db = tmp_path / "history.db"
    HistoryStore(f"sqlite:///{db}", "node1").engine.dispose()
    db.chmod(0o444)
    port = free_port()
    # Root writes read-only files; without the capability to override permissions it does not.
    as_user = (["setpriv", "--inh-caps=-dac_override,-fowner", "--bounding-set=-dac_override,-fowner"]
               if os.geteuid() == 0 else [])
    agent = subprocess.Popen(
        [*as_user, sys.executable, "-m", "flopwatch", "run", "--listen", f"127.0.0.1:{port}", "--simulate",
         "healthy,idle", "--interval", str(INTERVAL), "--history", f"sqlite:///{db}"],
        env=agent_env({"FLOPWATCH_HISTORY_FLUSH_INTERVAL_SECONDS": str(FLUSH)}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def metric(name: str) -> float | None:
        try:
            page = get(url)
        except OSError:
            return None
        return next((float(line.split()[-1]) for line in page.splitlines() if line.startswith(name + " ")), None)

    try:
        assert live.wait_for(lambda: metric("flopwatch_store_up") == 0)  # after its first flush
        assert metric("flopwatch_store_pending_rows") > 0
        ticks = metric("flopwatch_ticks_total")
        assert live.wait_for(lambda: metric("flopwatch_ticks_total") >= ticks + 5)  # sampling goes on
        for path in tmp_path.glob("history.db*"):  # as an operator would: chmod 644 history.db*
            path.chmod(0o644)
        assert live.wait_for(lambda: metric("flopwatch_store_pending_rows") == 0 and metric("flopwatch_store_up") == 1)
        assert metric("flopwatch_store_dropped_rows_total") == 0
        ticks = metric("flopwatch_ticks_total")
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0
    assert "read-only" in output
    with sqlite3.connect(db) as connection:
        per_gpu = connection.execute("SELECT count(*) FROM gpu_raw GROUP BY gpu").fetchall()
    assert len(per_gpu) == 2 and all(count >= ticks for count, in per_gpu)
