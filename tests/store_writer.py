"""A process that writes history as the agent does, for crash and shutdown tests.

    python tests/store_writer.py URL START FLUSH_EVERY

Records one 1 Hz tick of ``GPUS`` GPUs at a time from ``START`` (synthetic timestamps, as fast as
it can), flushes every ``FLUSH_EVERY`` ticks (0: never) and prints ``flushed N`` once the first
N ticks are committed. On SIGTERM it stops recording, closes the store (final flush), prints
``closed N`` and exits 0 — the agent's shutdown path.
"""

import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT)]

from flopwatch.history.store import HistoryStore  # noqa: E402
from tests.store_ticks import tick  # noqa: E402

GPUS = 8
PROCESSES = 2


def main() -> None:
    url, start, flush_every = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    stopping = []
    # The handler only asks to stop: closing inside it could interrupt record() mid-append.
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    store = HistoryStore(url, "writer", buffer_rows=10_000_000)
    print("ready", flush=True)
    ticks = 0
    while not stopping:
        store.record(tick(start + ticks, gpus=GPUS, processes=PROCESSES))
        ticks += 1
        if flush_every and ticks % flush_every == 0:
            if store.flush():
                print(f"flushed {ticks}", flush=True)
        elif not flush_every:
            print(f"recorded {ticks}", flush=True)
    store.close()
    print(f"closed {ticks} {store.pending_rows}", flush=True)


if __name__ == "__main__":
    main()
