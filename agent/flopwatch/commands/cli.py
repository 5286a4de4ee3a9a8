"""The `flopwatch` command group. Exit codes: 0 ok, 1 a failed check, 2 usage or configuration error."""

from __future__ import annotations

import sys

import click

from flopwatch import __version__
from flopwatch.commands.calibrate import calibrate_command
from flopwatch.commands.doctor import doctor_command
from flopwatch.commands.history import history
from flopwatch.commands.judge import jobs_command, judge_command
from flopwatch.commands.report import report_command
from flopwatch.commands.run import run
from flopwatch.commands.status import status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """flopwatch: what your GPUs really do, why they idle, and the fix."""


main.add_command(run)
main.add_command(status)
main.add_command(doctor_command)
main.add_command(calibrate_command)
main.add_command(history)
main.add_command(report_command)
main.add_command(judge_command)
main.add_command(jobs_command)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"flopwatch {__version__}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
