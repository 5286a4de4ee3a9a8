"""A rolling upgrade under load: agents of two versions writing to one PostgreSQL while the newer
ones migrate its schema.

--old is a copy of an older flopwatch (``mkdir /tmp/flopwatch-old && git archive main | tar -x -C
/tmp/flopwatch-old``). All
--nodes agents start on the old code; then one by one, half of them are restarted on this tree's
code (the first to connect migrates the schema), and last one old agent is restarted, as a node
that reboots before its upgrade. Every agent's ``flopwatch_store_up`` and rows written are read
after each step: old agents must keep writing while the newer ones migrate.

    python3 bench/fleet_upgrade.py --old /tmp/flopwatch-old [--nodes 8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import AGENT_DIR, free_port, metric_value, postgres_server, scrape, sql, start_agent, stop, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, type=Path, help="the older checkout (its agent/ is imported)")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="between steps")
    args = parser.parse_args()
    agents: dict[int, tuple[str, int, object]] = {}
    with postgres_server("flopwatch-upgrade-") as server:
        try:
            rolling_upgrade(server.url(), args, agents)
        finally:
            for _, _, process in agents.values():
                stop(process)


def rolling_upgrade(url: str, args: argparse.Namespace, agents: dict) -> None:
    def launch(i: int, version: str) -> None:
        port = free_port()
        code = args.old / "agent" if version == "old" else AGENT_DIR
        env = {"PYTHONPATH": str(code), "FLOPWATCH_AGENT_HOSTNAME": f"node{i:03d}",
               "FLOPWATCH_TOKENS_PUSH_LISTEN": f"127.0.0.1:{free_port()}"}
        agents[i] = (version, port, start_agent(["--simulate", "healthy", "--history", url], port, env))

    def step(name: str) -> list:
        time.sleep(args.seconds)
        written = dict(sql(url, "SELECT host, max(ts) FROM gpu_raw GROUP BY host"))
        revision = sql(url, "SELECT version_num FROM flopwatch_schema_version")[0][0]
        up, fresh = [], []
        for i, (version, port, _) in sorted(agents.items()):
            up.append(metric_value(scrape(f"http://127.0.0.1:{port}/metrics"), "flopwatch_store_up"))
            fresh.append(time.time() - (written.get(f"node{i:03d}") or 0) < 15)
        versions = "".join("o" if agents[i][0] == "old" else "N" for i in sorted(agents))
        return [name, revision, versions, "".join(str(int(u or 0)) for u in up),
                "".join("y" if f else "-" for f in fresh)]

    rows = []
    for i in range(args.nodes):
        launch(i, "old")
    rows.append(step("all old"))
    for i in range(args.nodes // 2):
        stop(agents[i][2])
        launch(i, "new")
    rows.append(step("half upgraded"))
    last = args.nodes - 1
    stop(agents[last][2])
    launch(last, "old")
    rows.append(step("an old agent restarted"))
    print(table(["step", "schema", "agents (o old, N new)", "store up", "rows in the last 15 s"], rows))
    held = all(set(r[4]) == {"y"} for r in rows[:2])
    print(f"{'PASS' if held else 'FAIL'} fleet_upgrade_running_agents_write_on: "
          f"{'every' if held else 'not every'} agent wrote through the migration (target every)")
    restarted = rows[2][3][last] == "1"
    print(f"{'PASS' if restarted else 'FAIL'} fleet_upgrade_old_agent_restarted: store up "
          f"{rows[2][3][last]} (target 1)")


if __name__ == "__main__":
    main()
