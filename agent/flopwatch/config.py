"""Configuration: defaults ← TOML file ← FLOPWATCH_<SECTION>_<KEY> environment ← command-line flags.

Every section is a dataclass; its field names are the TOML keys. A wrong type or an unknown key
is a ConfigError naming ``[section].key``, which the CLI turns into exit 2.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from flopwatch.model import owner_label
from flopwatch.thresholds import Thresholds

DEFAULT_PATH = Path("/etc/flopwatch/config.toml")
# [attribution].job_rules: how a GPU process is named to a job, tried in this order (sources/identity.py).
JOB_RULES = ("slurm", "pod", "torchrun", "container", "unit", "user_command")
ENV_PREFIX = "FLOPWATCH_"


class ConfigError(ValueError):
    """A user's configuration mistake; the message names the key."""


def _require_positive(section: Any, name: str) -> None:
    """Refuse a setting of ``[name]`` that must be > 0 and is not, naming it: the keys its class
    lists in ``POSITIVE``, its intervals and timeouts (the scheduler would run a job every 0 s once
    a second without a word; a 0 s timeout would give up at once)."""
    for key in getattr(section, "POSITIVE", ()):
        if getattr(section, key) <= 0:
            raise ConfigError(f"bad value for [{name}].{key}: {getattr(section, key)!r}; it must be > 0")


@dataclass
class AgentConfig:
    POSITIVE: ClassVar = ("interval_seconds",)

    listen: str = "0.0.0.0:9765"
    interval_seconds: float = 1.0
    # The energy counter (~4 ms of CPU a read), the throttle-time counters (~1 ms) and per-process
    # utilization (~2 ms) are read this often; they are counters, so nothing is lost between.
    counter_interval_seconds: float = 10.0
    simulate: list[str] = field(default_factory=list)
    simulate_gpus: int = 1
    simulate_processes: int = 1
    # Simulated GPUs' first processes as ranks of one Slurm job spread over several agents: the job
    # id, the rank of GPU 0 (GPU i is rank simulate_rank + i) and the job's world size (0: the GPUs).
    simulate_job: str = ""
    simulate_rank: int = 0
    simulate_world_size: int = 0
    seed: int = 0
    hostname: str = ""
    web_config_file: str = ""
    log_level: str = "info"

    def node_name(self) -> str:
        """This node's name in metrics, history and alerts: ``hostname`` if set, else the host's."""
        return self.hostname or socket.gethostname()


@dataclass
class HistoryConfig:
    POSITIVE: ClassVar = ("flush_interval_seconds",)

    url: str = "sqlite:////var/lib/flopwatch/history.db"
    flush_interval_seconds: float = 5.0
    buffer_rows: int = 200_000
    retention_raw_days: float = 7.0
    retention_minute_days: float = 90.0
    retention_hour_days: float = 730.0


@dataclass
class AlertingConfig:
    POSITIVE: ClassVar = ("resend_interval_seconds", "timeout_seconds")

    alertmanager_urls: list[str] = field(default_factory=list)
    resend_interval_seconds: float = 60.0
    timeout_seconds: float = 5.0
    external_url: str = ""
    # The alerts' `job` label: the name of Prometheus's scrape job for the agents, so an alert the
    # agent pushes and the same alert from alerts/flopwatch.rules.yml are one alert.
    job: str = "flopwatch"


@dataclass
class AttributionConfig:
    # First rule that yields a name wins: slurm job, Kubernetes pod, container, systemd unit,
    # user:command (sources/identity.py names the forms).
    job_rules: list[str] = field(default_factory=lambda: list(JOB_RULES))
    top_processes: int = 10


@dataclass
class TokensConfig:
    POSITIVE: ClassVar = ("scrape_interval_seconds", "window_seconds")

    push_listen: str = "127.0.0.1:9766"
    allow_remote_push: bool = False
    scrape_urls: list[str] = field(default_factory=list)
    scrape_interval_seconds: float = 5.0
    window_seconds: float = 60.0  # joules per token and the other costs are over this window
    price_per_gpu_hour: float = 0.0
    price_per_kwh: float = 0.0
    currency: str = "USD"


@dataclass
class StacksConfig:
    """Python stacks of a GPU's processes, sampled with py-spy when a host-side cause leads (and a
    healthy job once a segment, until seen training)."""

    POSITIVE: ClassVar = ("duration_seconds", "rate_hz", "segment_interval_seconds", "phase_interval_seconds",
                          "timeout_seconds")

    enabled: bool = True
    duration_seconds: float = 2.0
    rate_hz: int = 20
    min_interval_seconds: float = 600.0  # a process is sampled again only after this long
    # ...unless the GPU's work changed (a new segment: judge/regime.py), then after this long,
    segment_interval_seconds: float = 10.0
    # ...or while a passing phase of the job's life (loading, compiling, saving) is named, at each
    # turn of this many seconds: a phase's end only its stacks show is placed between two samples.
    phase_interval_seconds: float = 5.0
    timeout_seconds: float = 15.0  # py-spy is stopped after this long (attaching can hang)
    top_stacks: int = 8
    min_share: float = 0.05  # stacks below this share of their thread's samples are left out


@dataclass
class KubernetesConfig:
    POSITIVE: ClassVar = ("refresh_interval_seconds", "timeout_seconds", "api_timeout_seconds",
                          "event_interval_seconds")

    # "auto": the kubelet's default socket if it exists when the agent starts; a path: that socket,
    # and a warning while it cannot be read; "" or "off": never.
    pod_resources_socket: str = "auto"
    pod_labels: bool = True  # namespace, pod and container labels on per-GPU series
    refresh_interval_seconds: float = 10.0
    timeout_seconds: float = 2.0
    # The API server, for pod Events and reclaim's pod deletion (sources/kubernetes_api.py); only
    # used when one of those is on. "": in the cluster, https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
    api_url: str = ""
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # "" or missing: no Authorization
    ca_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"  # "": the system's CAs
    api_timeout_seconds: float = 5.0
    # An Event on a pod whose GPU it holds unused (held_unused, held_idle), so `kubectl describe pod`
    # shows it: once the finding has lasted event_after_seconds, then at most once per pod every
    # event_interval_seconds.
    events: bool = False
    event_after_seconds: float = 1800.0
    event_interval_seconds: float = 3600.0
    # Pod label or annotation keys naming a GPU's owner (e.g. ["team", "example.com/owner"]), read
    # from the API server and put on alerts and allocation series as owner_<key>; []: not read.
    owner_labels: list[str] = field(default_factory=list)

    def check(self) -> None:
        names = [owner_label(key) for key in self.owner_labels]
        if len(set(names)) != len(names) or "" in self.owner_labels:
            raise ConfigError(f"bad value for [kubernetes].owner_labels: {self.owner_labels!r}; keys must be "
                              "non-empty and differ in more than characters outside [a-zA-Z0-9_]")
        if self.api_url and not self.api_url.startswith("https://"):
            raise ConfigError(f"bad value for [kubernetes].api_url: {self.api_url!r}; it must start with https://")


@dataclass
class CalibrationConfig:
    # Flops factors per GPU model and driver, written by `flopwatch calibrate`, read by the agent
    # and `doctor` (judge/calibration.py).
    file: str = "/var/lib/flopwatch/calibration.json"


@dataclass
class SlurmConfig:
    POSITIVE: ClassVar = ("refresh_interval_seconds", "timeout_seconds")

    # "auto": squeue from the PATH where a slurm.conf exists ($SLURM_CONF or /etc/slurm/slurm.conf)
    # when the agent starts; a path: that squeue; "" or "off": never.
    squeue: str = "auto"
    conf: str = ""  # SLURM_CONF for squeue; "" keeps the environment's
    node_name: str = ""  # this node's NodeName in slurm.conf; "": the short hostname
    # GRES index i (its place in gres.conf) → the NVML minor number of that GPU; []: i itself.
    gres_minor_numbers: list[str] = field(default_factory=list)
    refresh_interval_seconds: float = 30.0
    timeout_seconds: float = 10.0


RECLAIM_MODES = ("off", "dry-run", "on")


@dataclass
class ReclaimConfig:
    """Ending jobs that hold GPUs and use none (outputs/reclaim.py). Off unless asked, per scheduler."""

    POSITIVE: ClassVar = ("timeout_seconds",)

    slurm: str = "off"  # "off"; "dry-run": decide and record, cancel nothing; "on": scancel the job
    kubernetes: str = "off"  # as slurm; "on": delete the pod through the API server ([kubernetes].api_url)
    host: str = "off"  # as slurm, on a GPU no scheduler gave anyone; "on": SIGTERM the held_idle process
    causes: list[str] = field(default_factory=lambda: ["held_unused", "held_idle"])
    after_seconds: float = 7200.0  # every GPU of the job here held unused (or idle) this long, without a break
    min_job_age_seconds: float = 3600.0
    # Allow-lists; empty: none; "*": any. Slurm: partition and user must match; Kubernetes: the
    # pod's namespace; host: the process's user.
    partitions: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    scancel: str = "scancel"
    timeout_seconds: float = 10.0
    attempts: int = 5  # a failed action is tried again after 5 s, 10 s, 20 s, …

    def check(self) -> None:
        for key in ("slurm", "kubernetes", "host"):
            if getattr(self, key) not in RECLAIM_MODES:
                raise ConfigError(f"bad value for [reclaim].{key}: {getattr(self, key)!r}; "
                                  f"valid: {', '.join(RECLAIM_MODES)}")
        for key in ("after_seconds", "min_job_age_seconds"):
            if getattr(self, key) < 0:
                raise ConfigError(f"bad value for [reclaim].{key}: {getattr(self, key)!r}; it must be >= 0")
        if self.attempts < 1:
            raise ConfigError(f"bad value for [reclaim].attempts: {self.attempts!r}; it must be >= 1")

    def enabled(self) -> bool:
        return (self.slurm, self.kubernetes, self.host) != ("off", "off", "off")


@dataclass
class JudgeConfig:
    """`flopwatch judge`: the fleet judge over the shared history ([history].url), paging through
    [alerting].alertmanager_urls."""

    POSITIVE: ClassVar = ("interval_seconds", "window_seconds", "stale_seconds")

    interval_seconds: float = 10.0
    window_seconds: float = 30.0  # each rank's ticks over this window make the job's verdict
    confirm_passes: int = 2  # a new verdict pages once it held this many passes
    stale_seconds: float = 30.0  # a rank with no tick this recent is unknown
    listen: str = "0.0.0.0:9767"  # /metrics of the last pass's verdicts (read-only); "" for none
    web_config_file: str = ""  # TLS and basic auth for it, as [agent].web_config_file


@dataclass
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    diagnosis: Thresholds = field(default_factory=Thresholds)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    alerting: AlertingConfig = field(default_factory=AlertingConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    stacks: StacksConfig = field(default_factory=StacksConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def load(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration. ``path=None`` reads the default file only if it exists."""
    config = Config()
    if path is not None or DEFAULT_PATH.exists():
        _apply_file(config, Path(path) if path is not None else DEFAULT_PATH)
    _apply_env(config, os.environ if env is None else env)
    check_relations(config)
    return config


def check_relations(config: Config) -> None:
    """Checks between keys, once all are set (a key alone is checked as it is set)."""
    th = config.diagnosis
    if not th.charge_settle_seconds < th.charge_hold_seconds:
        # Else the ticks of a named segment settling past the hold would go to `unknown`.
        raise ConfigError(f"bad value for [diagnosis].charge_settle_seconds: {th.charge_settle_seconds!r}; it must "
                          f"be below [diagnosis].charge_hold_seconds ({th.charge_hold_seconds!r})")


def override(config: Config, section: str, key: str, value: Any) -> None:
    """Set one key from a command-line flag, with the same checks as the file."""
    _set(config, section, key, value, source="command line")


def _apply_file(config: Config, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top-level key {section!r} must be a [section]")
        for key, value in values.items():
            _set(config, section, key, value, source=str(path))


def _apply_env(config: Config, env: Mapping[str, str]) -> None:
    sections = {f.name for f in dataclasses.fields(config)}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue  # FLOPWATCH_ variables that are not settings (e.g. of the test suite)
        _set(config, section, rest[len(section) + 1:], value, source=f"environment {name}")


def _set(config: Config, section: str, key: str, value: Any, *, source: str) -> None:
    target = getattr(config, section, None) if section in _section_names() else None
    if target is None:
        raise ConfigError(f"unknown section [{section}] ({source}); valid: {', '.join(_section_names())}")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(
            f"unknown key [{section}].{key} ({source}); valid keys: {', '.join(sorted(fields))}"
        )
    hint = typing.get_type_hints(type(target))[key]
    try:
        setattr(target, key, _coerce(value, hint))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value for [{section}].{key} ({source}): {e}") from None
    _require_positive(target, section)
    check = getattr(target, "check", None)
    if check is not None:
        check()


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return list(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise TypeError(f"expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise TypeError(f"expected a number, got {value!r}") from None
        if number < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {hint!r}")  # pragma: no cover
