"""Secrets out of command lines before they are exported, stored or printed."""

from __future__ import annotations

import re
from typing import Sequence

_SECRET_WORD = r"(?:token|passw(?:or)?d|secret|api[-_]?key|access[-_]?key|private[-_]?key|credential|auth)"
_FLAG_EQ = re.compile(rf"^(--?[\w-]*{_SECRET_WORD}[\w-]*=)(.+)$", re.IGNORECASE)
_FLAG = re.compile(rf"^--?[\w-]*{_SECRET_WORD}[\w-]*$", re.IGNORECASE)
_ENV = re.compile(rf"^([A-Za-z_]*{_SECRET_WORD}[A-Za-z_]*=)(.+)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(\w+://[^/\s:@]+:)[^@/\s]+(@)")

MASK = "***"


def redact_cmdline(argv: Sequence[str]) -> str:
    """Join argv with secrets masked: --token=x, --password x, KEY=x, scheme://user:pass@host."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        arg = _URL_CREDENTIALS.sub(rf"\g<1>{MASK}\g<2>", arg)
        if m := _FLAG_EQ.match(arg) or _ENV.match(arg):
            arg = m.group(1) + MASK
        elif _FLAG.match(arg):
            mask_next = True
        out.append(arg)
    return " ".join(out)
