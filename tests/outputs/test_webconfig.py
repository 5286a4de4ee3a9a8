import base64
import http.server
import socket
import ssl
import threading

import bcrypt
import pytest

from flopwatch.outputs import webconfig
from flopwatch.config import ConfigError
from tests.tls import self_signed


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


def test_an_empty_file_means_plain_http_and_no_auth(tmp_path):
    (tmp_path / "web.yml").write_text("")
    config = webconfig.load(tmp_path / "web.yml")
    assert config.ssl_context() is None
    assert config.check_basic_auth(None)


def test_relative_certificate_paths_are_relative_to_the_file(tmp_path, certificate):
    cert, key = certificate
    (tmp_path / "server.crt").write_bytes(cert.read_bytes())
    (tmp_path / "server.key").write_bytes(key.read_bytes())
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    assert webconfig.load(tmp_path / "web.yml").tls.cert_file == tmp_path / "server.crt"


def test_the_tls_context_serves_https_a_client_can_verify(certificate):
    cert, key = certificate
    config = webconfig.parse({"tls_server_config": {"cert_file": str(cert), "key_file": str(key),
                                                    "min_version": "TLS13"}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.socket = config.ssl_context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ssl.create_default_context(cafile=str(cert))
        raw = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        with client.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert tls.recv(12) == b"HTTP/1.0 200"
            assert tls.version() == "TLSv1.3"
    finally:
        server.shutdown()
        server.server_close()


def test_the_right_password_passes_and_a_wrong_one_or_none_does_not():
    config = webconfig.parse({"basic_auth_users": {"prometheus": hashed("s3cret")}})
    assert config.check_basic_auth(basic("prometheus", "s3cret"))
    assert not config.check_basic_auth(basic("prometheus", "guess"))
    assert not config.check_basic_auth(basic("mallory", "s3cret"))
    assert not config.check_basic_auth(None)
    assert not config.check_basic_auth("Bearer s3cret")
    assert not config.check_basic_auth("Basic not-base64!")


def test_verified_credentials_are_remembered_so_bcrypt_runs_once():
    config = webconfig.parse({"basic_auth_users": {"prometheus": hashed("s3cret")}})
    for _ in range(3):
        assert config.check_basic_auth(basic("prometheus", "s3cret"))
    assert len(config._cache) == 1


def test_a_password_longer_than_bcrypt_takes_is_refused_not_raised():
    config = webconfig.parse({"basic_auth_users": {"prometheus": hashed("s3cret")}})
    assert not config.check_basic_auth(basic("prometheus", "x" * 100))


@pytest.mark.parametrize("data, key", [
    ({"basic_auth_users": {"alice": "plaintext"}}, "basic_auth_users.alice"),
    ({"tls_server_config": {"cert_file": "c.crt"}}, "tls_server_config.key_file"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "SSL3"}},
     "tls_server_config.min_version"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k",
                            "client_auth_type": "RequireAndVerifyClientCert"}},
     "tls_server_config.client_ca_file"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "cipher_suites": ["X"]}},
     "tls_server_config.cipher_suites"),
    ({"tls_config": {}}, "tls_config"),
])
def test_a_mistake_names_its_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        webconfig.parse(data)


def test_an_unloadable_certificate_is_a_config_error_at_load(tmp_path):
    (tmp_path / "web.yml").write_text("tls_server_config: {cert_file: nope.crt, key_file: nope.key}\n")
    with pytest.raises(ConfigError, match="tls_server_config.cert_file"):
        webconfig.load(tmp_path / "web.yml")


def test_invalid_yaml_is_a_config_error(tmp_path):
    (tmp_path / "web.yml").write_text("basic_auth_users: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        webconfig.load(tmp_path / "web.yml")


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        webconfig.load(tmp_path / "absent.yml")
