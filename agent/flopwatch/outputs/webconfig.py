"""TLS and basic auth for the HTTP endpoints, from a web-config file in the format of Prometheus'
exporter toolkit (the file node_exporter takes with --web.config.file)::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: clients.crt
      min_version: TLS12
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      alice: $2y$10$...               # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Off unless ``[agent].web_config_file`` is set. PyYAML and bcrypt are imported only then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from flopwatch.config import ConfigError

WWW_AUTHENTICATE = 'Basic realm="flopwatch"'

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Python's ssl cannot ask for a client certificate without verifying it, so the toolkit's
# RequestClientCert and RequireAnyClientCert have no equivalent here and are refused.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version"}
_BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# Checked against when the user is unknown, so a wrong name takes as long as a wrong password
# (the exporter toolkit does the same).
_DUMMY_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
_CACHE_SIZE = 100


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"


@dataclass
class WebConfig:
    path: Path | None = None
    tls: TlsConfig | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    # Verified (user, hash, password) digests → result. bcrypt costs ~50 ms by design; a
    # scraper sends the same credentials every 15 s and must not pay that each time.
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side context from the files as they are now; None when TLS is off."""
        if self.tls is None:
            return None
        tls = self.tls
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{self._where('tls_server_config.cert_file')}: cannot load "
                              f"{tls.cert_file} with {tls.key_file}: {e}") from None
        context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
        if tls.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=tls.client_ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"{self._where('tls_server_config.client_ca_file')}: cannot load "
                                  f"{tls.client_ca_file}: {e}") from None
        return context

    def check_basic_auth(self, header_value: str | None) -> bool:
        """Whether an ``Authorization`` header's value lets the request in."""
        if not self.basic_auth_users:
            return True
        credentials = _parse_basic(header_value)
        if credentials is None:
            return False
        user, password = credentials
        known = user in self.basic_auth_users
        hashed = self.basic_auth_users[user].encode() if known else _DUMMY_HASH
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()
        with self._lock:
            ok = self._cache.get(key)
            if ok is None:
                # Under the lock: parallel wrong guesses queue up instead of burning every core.
                import bcrypt

                try:
                    ok = bcrypt.checkpw(password.encode(), hashed)
                except ValueError:  # bcrypt ≥ 5 refuses passwords over 72 bytes
                    ok = False
                self._cache[key] = ok
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        return known and ok

    def _where(self, key: str) -> str:
        return f"{self.path}: {key}" if self.path else key


def load(path: str | Path) -> WebConfig:
    """Read and check a web-config file; any mistake is a ConfigError naming the key."""
    path = Path(path)
    try:
        import yaml
    except ImportError:  # pragma: no cover - a core dependency; only a broken install lacks it
        raise ConfigError(f"web config {path} needs PyYAML: pip install pyyaml") from None
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"web config {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"web config {path} is not valid YAML: {e}") from None
    config = parse(data or {}, base=path.parent, path=path)
    config.ssl_context()  # fail now on an unreadable certificate, not at the first scrape
    return config


def parse(data: Any, base: Path = Path("."), path: Path | None = None) -> WebConfig:
    """Check an already-loaded web-config mapping; ``base`` resolves relative file names."""
    where = f"{path}: " if path else ""

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}{key}: {problem}")

    if not isinstance(data, dict):
        raise fail("(top level)", "must be a mapping")
    unknown = set(data) - {"tls_server_config", "http_server_config", "basic_auth_users"}
    if unknown:
        raise fail(sorted(unknown)[0], "unknown key; valid: tls_server_config, "
                                       "http_server_config, basic_auth_users")
    users = _mapping_of_strings(data.get("basic_auth_users"), "basic_auth_users", fail)
    for user, hashed in users.items():
        if not _BCRYPT_HASH.fullmatch(hashed):
            raise fail(f"basic_auth_users.{user}", "is not a bcrypt hash "
                       "(make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")
    http = data.get("http_server_config") or {}
    if not isinstance(http, dict) or set(http) - {"headers", "http2"}:
        raise fail("http_server_config", "supports only headers and http2")
    headers = _mapping_of_strings(http.get("headers"), "http_server_config.headers", fail)
    return WebConfig(path=path, tls=_parse_tls(data.get("tls_server_config"), base, fail),
                     basic_auth_users=users, headers=headers)


def _parse_tls(tls: Any, base: Path, fail) -> TlsConfig | None:
    if tls is None:
        return None
    if not isinstance(tls, dict):
        raise fail("tls_server_config", "must be a mapping")
    for key, value in tls.items():
        if key not in _TLS_KEYS:
            raise fail(f"tls_server_config.{key}", "not supported; valid keys: "
                       + ", ".join(sorted(_TLS_KEYS)))
        if not isinstance(value, str):
            raise fail(f"tls_server_config.{key}", "must be a string")
    if not tls:
        return None
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            raise fail(f"tls_server_config.{key}", "missing")
    client_auth = tls.get("client_auth_type", "NoClientCert")
    if client_auth not in _CLIENT_AUTH:
        raise fail("tls_server_config.client_auth_type",
                   f"{client_auth!r} not supported; valid: {', '.join(_CLIENT_AUTH)}")
    if client_auth != "NoClientCert" and not tls.get("client_ca_file"):
        raise fail("tls_server_config.client_ca_file", f"needed by {client_auth}")
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        if tls.get(key, default) not in _TLS_VERSIONS:
            raise fail(f"tls_server_config.{key}",
                       f"{tls[key]!r} not one of {', '.join(_TLS_VERSIONS)}")
    return TlsConfig(
        cert_file=base / tls["cert_file"],
        key_file=base / tls["key_file"],
        client_auth_type=client_auth,
        client_ca_file=base / tls["client_ca_file"] if tls.get("client_ca_file") else None,
        min_version=tls.get("min_version", "TLS12"),
        max_version=tls.get("max_version", "TLS13"),
    )


def _mapping_of_strings(value: Any, key: str, fail) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(key, "must be a mapping")
    for name, item in value.items():
        if not isinstance(name, str) or not isinstance(item, str):
            raise fail(f"{key}.{name}", "must be a string")
    return dict(value)


def _parse_basic(header_value: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header_value or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None
