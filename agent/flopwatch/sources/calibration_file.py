"""The calibration file `flopwatch calibrate` writes: its JSON, read as it is (judge/calibration.py
parses it)."""

from __future__ import annotations

import json
from pathlib import Path


class CalibrationFileUnreadable(OSError):
    """The file exists but cannot be read as JSON; the message names the file."""


def read_document(path: str | Path) -> object | None:
    """The file's JSON, or None where there is no file (nothing calibrated on this node yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CalibrationFileUnreadable(f"{path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise CalibrationFileUnreadable(f"{path}: not JSON ({e})") from None
