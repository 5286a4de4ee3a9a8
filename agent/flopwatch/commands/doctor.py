"""``flopwatch doctor``: the system-level checks as a table or JSON; exit 1 if one fails."""

from __future__ import annotations

import json
import socket
import sys

import click

from flopwatch.commands.build import read_calibrations
from flopwatch.commands.options import config_option, load_config
from flopwatch.judge.checks import Check, run_checks, worst
from flopwatch.sources import sysfacts
from flopwatch.sources.sysfacts import NodeFacts

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


@click.command("doctor")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--simulate", metavar="SCENARIO[,SCENARIO...]", default="",
              help="Check simulated GPUs, one per scenario, instead of the real ones.")
def doctor_command(config_path: str | None, as_json: bool, simulate: str) -> None:
    """Check the driver, CUDA, and each GPU's link, power, clocks, memory errors, Xids, MIG, GPM,
    NUMA affinity and flops calibration. Exit 1 if a check fails."""
    config = load_config(config_path, {})
    facts = _read(simulate)
    calibrations, problem = read_calibrations(config.calibration.file)
    checks = run_checks(facts, calibrations, problem)
    if as_json:
        click.echo(json.dumps({
            "host": socket.gethostname(),
            "status": worst(checks),
            "checks": [c.to_dict() for c in checks],
        }, indent=2))
    else:
        _print_table(checks)
    sys.exit(1 if worst(checks) == "fail" else 0)


def _read(simulate: str) -> NodeFacts:
    if simulate:
        from flopwatch.sources.simulated import SimulatedNvml, UnknownScenario

        try:
            lib = SimulatedNvml([s.strip() for s in simulate.split(",") if s.strip()])
        except UnknownScenario as e:
            raise click.BadParameter(str(e), param_hint="--simulate") from None
        # Simulated GPUs leave no trace in this host's kernel log.
        return sysfacts.read_facts(lib)
    import pynvml

    records = sysfacts.read_kernel_log()
    return sysfacts.read_facts(pynvml, records or (), kernel_log_readable=records is not None)


def _print_table(checks: list[Check]) -> None:
    rows = [("" if c.gpu is None else str(c.gpu), c.name, c.status, c.value, c.fix) for c in checks]
    headers = ("GPU", "CHECK", "STATUS", "VALUE", "FIX")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(4)]
        for row in (headers, *rows):
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
        return
    table = Table(*headers, show_lines=False)
    for gpu, name, status, value, fix in rows:
        table.add_row(gpu, name, f"[{_STYLE[status]}]{status}[/]", value, fix)
    Console().print(table)
