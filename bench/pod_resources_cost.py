"""What reading the kubelet's pod-resources API costs the agent: RSS and CPU, on against off.

Serves a pod-resources API on a unix socket (the tests' gRPC server) that gives each of --gpus
simulated GPUs to a pod, then runs ``flopwatch run --simulate healthy --simulate-gpus N`` (no
history store) with the reader off, and on pointed at the socket, in turn for --rounds rounds, and
measures each for --seconds from outside (peak RSS, CPU share of one core).

    python3 bench/pod_resources_cost.py [--seconds 30] [--gpus 8] [--rounds 2] [--refresh 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from common import final, free_port, measure, start_agent, stop, table

from tests.servers.kubelet import PodResourcesServer, pod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--refresh", type=float, default=10.0, help="[kubernetes] refresh_interval_seconds")
    args = parser.parse_args()

    socket_path = Path(tempfile.mkdtemp(prefix="flopwatch-bench-")) / "kubelet.sock"
    uuids = [f"GPU-5f1a0c00-0000-4000-8000-000000{i:06d}" for i in range(args.gpus)]
    rows, added = [], []
    with PodResourcesServer(socket_path) as kubelet:
        kubelet.pods = [pod("bench", f"job-{i}", main=[uuid]) for i, uuid in enumerate(uuids)]
        for round_ in range(args.rounds):
            cost = {}
            for mode, socket in (("off", "off"), ("on", str(socket_path))):
                os.environ["FLOPWATCH_KUBERNETES_POD_RESOURCES_SOCKET"] = socket
                os.environ["FLOPWATCH_KUBERNETES_REFRESH_INTERVAL_SECONDS"] = str(args.refresh)
                agent = start_agent(["--simulate", "healthy", "--simulate-gpus", str(args.gpus)], free_port())
                try:
                    cost[mode] = measure(agent, args.seconds)
                finally:
                    stop(agent)
                rows.append([round_ + 1, mode, cost[mode]["core_percent"], cost[mode]["peak_rss_mb"]])
            added.append(cost["on"]["peak_rss_mb"] - cost["off"]["peak_rss_mb"])
        calls = kubelet.calls
    print(table(["round", "pod-resources", "% of one core", "peak RSS MB"], rows))
    print(f"List calls answered: {calls}")
    final("pod-resources reader's added peak RSS", f"{statistics.median(added):.1f} MB (median of {len(added)})",
          "as small as it can be; grpc is imported only when on")


if __name__ == "__main__":
    main()
