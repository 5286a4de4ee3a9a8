"""What the commands share: how a configuration is loaded from file, environment and flags, the
usage error (exit 2), and the options several commands take."""

from __future__ import annotations

from typing import Any, Callable

import click

from flopwatch import config as config_mod
from flopwatch.config import Config, ConfigError


class UsageError(click.ClickException):
    exit_code = 2


def load_config(path: str | None, overrides: dict[tuple[str, str], Any]) -> Config:
    try:
        config = config_mod.load(path)
        for (section, key), value in overrides.items():
            if value is not None:
                config_mod.override(config, section, key, value)
        config_mod.check_relations(config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return config


def simulate_list(value: str | None) -> list[str] | None:
    """Scenario names, comma-separated; ``name*N`` is N GPUs of it (``input_starved,communication_bound*7``)."""
    if not value:
        return None
    names = []
    for item in (v.strip() for v in value.split(",")):
        name, star, count = item.partition("*")
        if star and not count.strip().isdigit():
            raise click.BadParameter(f"{item!r}: the count after '*' must be a whole number", param_hint="--simulate")
        names += [name.strip()] * (int(count) if star else 1) if name.strip() else []
    return names


def config_option(f: Callable) -> Callable:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="TOML configuration (default /etc/flopwatch/config.toml if present).")(f)


def simulate_options(f: Callable) -> Callable:
    f = click.option("--simulate-gpus", type=click.IntRange(min=1), help="Repeat the scenarios N times.")(f)
    f = click.option("--simulate", help="Simulated GPUs, one per scenario: healthy,input_starved,…")(f)
    return f
