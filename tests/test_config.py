"""Configuration: file, environment and flags; mistakes name the key."""

import re
import tomllib
from pathlib import Path

import pytest

from flopwatch import config
from flopwatch.config import ConfigError


def written(tmp_path: Path, text: str) -> Path:
    """A configuration file holding ``text``."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    c = config.load(env={})
    assert c.agent.listen == "0.0.0.0:9765" and c.diagnosis.utilization_threshold == 0.6


def test_file_sets_keys(tmp_path):
    path = written(tmp_path, '[agent]\ninterval_seconds = 2\n[diagnosis]\nutilization_threshold = 0.5\n')
    c = config.load(path, env={})
    assert c.agent.interval_seconds == 2.0 and c.diagnosis.utilization_threshold == 0.5


def test_environment_overrides_the_file(tmp_path):
    path = written(tmp_path, '[history]\nurl = "sqlite:////tmp/a.db"\n')
    c = config.load(path, env={"FLOPWATCH_HISTORY_URL": "none"})
    assert c.history.url == "none"


def test_environment_lists_are_comma_separated():
    c = config.load(env={"FLOPWATCH_ALERTING_ALERTMANAGER_URLS": "http://a:9093, http://b:9093"})
    assert c.alerting.alertmanager_urls == ["http://a:9093", "http://b:9093"]


def test_unknown_key_is_named(tmp_path):
    path = written(tmp_path, '[agent]\nintervall = 2\n')
    with pytest.raises(ConfigError, match=r"\[agent\]\.intervall"):
        config.load(path, env={})


def test_wrong_type_is_named(tmp_path):
    path = written(tmp_path, '[diagnosis]\nutilization_threshold = "high"\n')
    with pytest.raises(ConfigError, match=r"\[diagnosis\]\.utilization_threshold"):
        config.load(path, env={})


def test_a_stack_sampling_interval_of_zero_is_named(tmp_path):
    path = written(tmp_path, '[stacks]\nphase_interval_seconds = 0\n')
    with pytest.raises(ConfigError, match=r"\[stacks\]\.phase_interval_seconds: 0(\.0)?; it must be > 0"):
        config.load(path, env={})


@pytest.mark.parametrize("section, key", [
    ("agent", "interval_seconds"), ("history", "flush_interval_seconds"), ("alerting", "resend_interval_seconds"),
    ("alerting", "timeout_seconds"), ("tokens", "scrape_interval_seconds"), ("tokens", "window_seconds"),
    ("kubernetes", "refresh_interval_seconds"), ("kubernetes", "timeout_seconds"), ("slurm", "refresh_interval_seconds"),
    ("slurm", "timeout_seconds"), ("reclaim", "timeout_seconds"), ("judge", "interval_seconds"),
    ("judge", "window_seconds"), ("judge", "stale_seconds"),
])
def test_an_interval_or_timeout_of_zero_is_named(tmp_path, section, key):
    # A job every 0 s would run once a second instead (the scheduler's floor); a 0 s timeout would not wait.
    path = written(tmp_path, f'[{section}]\n{key} = 0\n')
    with pytest.raises(ConfigError, match=rf"\[{section}\]\.{key}: 0(\.0)?; it must be > 0"):
        config.load(path, env={})


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match="FLOPWATCH_AGENT_INTERVAL_SECONDS"):
        config.load(env={"FLOPWATCH_AGENT_INTERVAL_SECONDS": "soon"})


def test_unknown_section_is_named(tmp_path):
    path = written(tmp_path, '[agnet]\nlisten = "x"\n')
    with pytest.raises(ConfigError, match=r"\[agnet\]"):
        config.load(path, env={})


def test_invalid_toml_says_so(tmp_path):
    path = written(tmp_path, '[agent\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path, env={})


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", env={})



def test_the_readmes_configuration_block_loads_and_shows_each_default(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Configuration.*?```toml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "config.toml").write_text(block)
    config.load(tmp_path / "config.toml", env={})  # every key known, every value valid
    defaults = config.Config()
    shown_otherwise = {(section, key) for section, keys in tomllib.loads(block).items() for key, value in keys.items()
                       if _plain(getattr(getattr(defaults, section), key)) != value}
    assert shown_otherwise == {("alerting", "alertmanager_urls")}  # an example address: none by default


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_waste_settling_past_its_hold_is_refused_naming_both_keys(tmp_path):
    path = written(tmp_path, '[diagnosis]\ncharge_hold_seconds = 8\n')
    with pytest.raises(ConfigError, match=r"\[diagnosis\]\.charge_settle_seconds: 10\.0; .*charge_hold_seconds \(8\.0\)"):
        config.load(path, env={})


def test_keys_checked_together_may_be_set_in_any_order(tmp_path):
    path = written(tmp_path, '[diagnosis]\ncharge_hold_seconds = 8\ncharge_settle_seconds = 4\n')
    assert config.load(path, env={}).diagnosis.charge_settle_seconds == 4.0
