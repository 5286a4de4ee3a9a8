"""Hide secrets in command lines and environment values before they are exported, stored or printed.

Errs on the side of hiding: a redacted harmless value costs a little context, a leaked token
costs an incident. A secret is replaced by ``***``; the name it was given under is kept, so a
reader still sees *that* a token was passed.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

MASK = "***"

# A setting's name is secret when one of its words ends like these ("PGPASSWORD", "HF_TOKEN",
# "--api-key", "WANDB_API_KEY"); "--max-tokens" and "--tokenizer" are not.
_SECRET_ENDINGS = ("token", "password", "passwd", "passphrase", "secret", "key", "credential",
                   "credentials")
_SECRET_WORDS = frozenset({"auth", "authorization", "cookie", "pwd"})
# ...unless the name's last word says the value only points at the secret ("--key-file",
# "SSH_AUTH_SOCK") or describes it.
_HARMLESS_LAST_WORDS = frozenset({"file", "path", "dir", "sock", "socket", "type", "len", "length",
                                  "size", "name"})
# PWD is the shell's working directory, not a password.
_HARMLESS_NAMES = frozenset({"pwd", "oldpwd"})

# Programs whose -p flag is a password (mysql -pSECRET, sshpass -p SECRET); elsewhere -p is
# usually a port or a path and is left alone.
_P_IS_PASSWORD_ATTACHED = frozenset({"mysql", "mysqldump", "mysqladmin", "mariadb",
                                     "mariadb-dump", "mysqlimport", "sshpass"})
_P_IS_PASSWORD_SEPARATE = frozenset({"sshpass"})

# Secrets recognisable by their shape, wherever they appear.
_VALUE_PATTERNS = (
    # scheme://user:password@host — keep the user and host, hide the password.
    (re.compile(r"(?P<keep>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s/@]+(?=@)"), r"\g<keep>" + MASK),
    (re.compile(r"(?P<keep>\b(?:Bearer|Basic|Token)\s+)[A-Za-z0-9._~+/=-]{8,}", re.I),
     r"\g<keep>" + MASK),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),  # AWS access key id
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), MASK),  # Hugging Face
    (re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), MASK),  # OpenAI-style API keys
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), MASK),  # Slack
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), MASK),  # JWT
)

# NAME=value or NAME: value inside a longer string (a shell command in one argument, a query
# string, a header); "https://" is not an assignment.
_EMBEDDED_ASSIGNMENT = re.compile(
    r"(?<![\w.-])(?P<name>-{0,2}[A-Za-z_][\w.-]*)(?P<sep>=|:[ \t]*(?!/))(?P<value>[^\s'\";&]+)"
)
# --name value inside a longer string.
_EMBEDDED_FLAG = re.compile(
    r"(?<![\w.-])(?P<name>-{1,2}[A-Za-z_][\w.-]*)(?P<sep>[ \t]+)(?P<value>[^\s'\";&-][^\s'\";&]*)"
)


def is_secret_name(name: str) -> bool:
    """Whether a flag or variable named ``name`` carries a secret (``--token``, ``DB_PASSWORD``)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.lstrip("-"))  # apiKey → api_Key
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]
    if not words or name.lower() in _HARMLESS_NAMES or words[-1] in _HARMLESS_LAST_WORDS:
        return False
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in words)


def redact_value(name: str, value: str) -> str:
    """One environment variable's value: hidden whole under a secret name, else scrubbed."""
    if is_secret_name(name):
        return MASK if value else value
    return redact_text(value)


def redact_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of an environment with every secret value hidden."""
    return {name: redact_value(name, value) for name, value in environ.items()}


def redact_text(text: str) -> str:
    """Hide secrets inside free text: known token shapes, URL passwords, secret assignments."""
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)

    def hide(match: re.Match) -> str:
        if not is_secret_name(match["name"]):
            return match[0]
        return f"{match['name']}{match['sep']}{MASK}"

    return _EMBEDDED_FLAG.sub(hide, _EMBEDDED_ASSIGNMENT.sub(hide, text))


def redact_cmdline(argv: Sequence[str]) -> str:
    """A process's command line, secrets hidden, joined with spaces as ``ps`` shows it."""
    program = os.path.basename(argv[0]) if argv else ""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("-"):
            out.append(MASK)
            hide_next = False
            continue
        hide_next = False
        out.append(_redact_arg(program, arg))
        if _takes_secret_next(program, arg):
            hide_next = True
    return " ".join(out)


def _redact_arg(program: str, arg: str) -> str:
    whole = re.fullmatch(r"(-{0,2}[A-Za-z_][\w.-]*)=(.*)", arg, re.S)
    if whole and is_secret_name(whole[1]):
        return f"{whole[1]}={MASK}"
    if program in _P_IS_PASSWORD_ATTACHED and arg.startswith("-p") and len(arg) > 2:
        return "-p" + MASK
    return redact_text(arg)


def _takes_secret_next(program: str, arg: str) -> bool:
    if arg == "-p":
        return program in _P_IS_PASSWORD_SEPARATE
    return arg.startswith("-") and "=" not in arg and is_secret_name(arg)
