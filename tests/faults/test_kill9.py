"""kill -9 at random points, 50 times, of a process writing history as the agent does: each time
the database opens clean and what is missing is at most the one batch that was being flushed."""

import collections
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from flopwatch.history.store import HistoryStore
from tests.store_writer import GPUS, PROCESSES

WRITER = Path(__file__).resolve().parents[1] / "store_writer.py"
BATCH = 25  # ticks per flush
T0 = 1_767_225_600.0
SPAN = 1_000_000  # each run writes its ticks from T0 + run * SPAN


def test_kill_9_at_random_points_50_times_opens_clean_and_loses_at_most_one_batch(tmp_path):
    rng = random.Random(9)
    outcomes: collections.Counter = collections.Counter()
    for run in range(50):
        # Every fifth run starts on a new file and dies anywhere from start-up to its first
        # flushes (creating the schema included); the others die while writing to the shared one.
        fresh = run % 5 == 0
        path = tmp_path / (f"new{run}.db" if fresh else "history.db")
        url, start = f"sqlite:///{path}", T0 + run * SPAN
        writer = subprocess.Popen([sys.executable, str(WRITER), url, str(start), str(BATCH)],
                                  stdout=subprocess.PIPE, text=True)
        output = "" if fresh else writer.stdout.readline()
        time.sleep(rng.uniform(0.2, 1.0) if fresh else rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        output += writer.communicate()[0]
        acknowledged = max((int(line.split()[1]) for line in output.splitlines() if line.startswith("flushed")),
                           default=0)
        store = HistoryStore(url, "writer")  # opens clean: schema current, writable
        assert store.up and store.last_error is None, (run, store.last_error)
        store.engine.dispose()
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            ticks, first, last, rows = connection.execute(
                "SELECT count(DISTINCT ts), min(ts), max(ts), count(*) FROM gpu_raw WHERE ts >= ? AND ts < ?",
                (start, start + SPAN)).fetchone()
            processes = connection.execute("SELECT count(*) FROM process_samples WHERE ts >= ? AND ts < ?",
                                           (start, start + SPAN)).fetchone()[0]
        # Every acknowledged batch is there; at most the one being flushed at the kill is there
        # without its acknowledgement, or missing with the ticks recorded since.
        assert ticks - acknowledged in (0, BATCH), (run, ticks, acknowledged)
        assert ticks == 0 or (first, last - first + 1) == (start, ticks)  # no hole before the cut
        assert (rows, processes) == (ticks * GPUS, ticks * GPUS * PROCESSES)
        outcomes["before the store was open" if "ready" not in output
                 else "mid-flush (committed, not yet acknowledged)" if ticks > acknowledged
                 else "between flushes"] += 1
    print(f"\n50 kills: {dict(outcomes)}")
