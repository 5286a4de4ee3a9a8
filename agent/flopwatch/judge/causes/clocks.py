"""The clocks are held down: power_capped, thermal_throttled, clocks_capped (busy GPUs: tickets)."""

from __future__ import annotations

from flopwatch.model import Finding
from flopwatch.thresholds import Thresholds
from flopwatch.judge.causes.rule import Cause, Context, finding, strength
from flopwatch.judge.signals import Signals

POWER_CAPPED = Cause(
    "power_capped", "GPU clocks held down by a lowered power limit",
    "The power limit is below the card's default and the clocks drop to fit it. Restore the default limit "
    "(nvidia-smi -pl) or accept the slower clocks knowingly.")
THERMAL_THROTTLED = Cause(
    "thermal_throttled", "GPU clocks held down by temperature",
    "The GPU slows itself to cool down. Check airflow, fans, inlet temperature and the data-centre cooling "
    "for this node.")
CLOCKS_CAPPED = Cause(
    "clocks_capped", "GPU clocks locked below maximum",
    "Application or locked clocks hold the SM clock below its maximum. Reset them (nvidia-smi -rac / -rgc) "
    "unless the cap is intended.")


def power_capped(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """An administrator lowered the power limit below the card's default; the clocks drop to fit it.
    A job touching the default limit is the card doing its job."""
    if s.power_limit_ratio is not None and s.power_limit_ratio < 0.98 and c.clocks_low and \
            s.throttle.get("sw_power_cap", 0.0) >= th.throttle_fraction:
        return finding(POWER_CAPPED, "ticket", 0.85, s, power_limit_ratio=s.power_limit_ratio,
                       sm_clock_ratio=s.sm_clock_ratio, sw_power_cap_fraction=s.throttle.get("sw_power_cap"))
    return None


def thermal_throttled(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """The GPU slows itself to cool down (software or hardware thermal slowdown)."""
    thermal = s.throttle.get("sw_thermal_slowdown", 0.0) + s.throttle.get("hw_thermal_slowdown", 0.0)
    if thermal >= th.throttle_fraction and c.clocks_low:
        return finding(THERMAL_THROTTLED, "ticket", strength(thermal, th.throttle_fraction), s,
                       thermal_throttle_fraction=min(thermal, 1.0), sm_clock_ratio=s.sm_clock_ratio)
    return None


def clocks_capped(s: Signals, c: Context, th: Thresholds) -> Finding | None:
    """A leftover application or locked clock (nvidia-smi -ac / -lgc)."""
    if s.throttle.get("clocks_setting", 0.0) >= th.throttle_fraction and c.clocks_low:
        return finding(CLOCKS_CAPPED, "ticket", 0.8, s, sm_clock_ratio=s.sm_clock_ratio,
                       clocks_setting_fraction=s.throttle.get("clocks_setting"))
    return None
