"""The few Kubernetes API server calls the agent makes: read a pod's metadata (its owner), delete a
pod (reclaim), create an Event.

Plain HTTPS with the standard library: the in-cluster ServiceAccount's token (read again on each
call, as projected tokens are rotated) and CA, a timeout on every request. A call answers an
outcome string, as reclaim_actions records it, rather than raising: "done", "done: …" or "failed: …";
a read answers the object, or raises KubernetesAPIError.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flopwatch.config import ConfigError, KubernetesConfig


class KubernetesAPIError(Exception):
    """A read the API server did not answer, or answered with an error."""


class KubernetesAPI:
    def __init__(self, url: str, token_file: str = "", ca_file: str = "", timeout_seconds: float = 5.0):
        self.url = url.rstrip("/")
        self.token_file = Path(token_file) if token_file else None
        self.timeout_seconds = timeout_seconds
        self.tls = ssl.create_default_context(cafile=ca_file or None)

    @classmethod
    def from_config(cls, k: KubernetesConfig, env: dict[str, str] | None = None) -> KubernetesAPI:
        env = os.environ if env is None else env
        url = k.api_url
        if not url:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ConfigError("[kubernetes].api_url is empty and KUBERNETES_SERVICE_HOST is not set "
                                  "(not in a pod): set [kubernetes].api_url")
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        ca_file = k.ca_file if k.ca_file and Path(k.ca_file).exists() else ""
        try:
            return cls(url, k.token_file, ca_file, k.api_timeout_seconds)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"[kubernetes].ca_file {k.ca_file}: {e}") from None

    def get_pod(self, namespace: str, pod: str) -> dict[str, Any] | None:
        """The pod object, or None when there is no such pod."""
        status, answer = self._call("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}")
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, dict):
            raise KubernetesAPIError(_failed(status, answer).removeprefix("failed: "))
        return answer

    def delete_pod(self, namespace: str, pod: str) -> str:
        status, answer = self._call("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}")
        if status in (200, 202):
            return "done"
        if status == 404:
            return "done: already gone"
        return _failed(status, answer)

    def create_event(self, event: dict[str, Any]) -> str:
        namespace = event["metadata"]["namespace"]
        status, answer = self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/events", event)
        return "done" if status in (200, 201, 202) else _failed(status, answer)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """(HTTP status, the decoded answer); status 0 when no answer came, the answer then the reason."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds, context=self.tls) as response:
                return response.status, _decoded(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _decoded(e.read())
        except (urllib.error.URLError, OSError) as e:
            return 0, str(getattr(e, "reason", e))

    def _token(self) -> str:
        try:
            return self.token_file.read_text().strip() if self.token_file is not None else ""
        except OSError:
            return ""  # outside a pod, e.g. through `kubectl proxy`: the API answers 401/403 if it needs one


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]


def _failed(status: int, answer: Any) -> str:
    if status == 0:
        return f"failed: no answer: {answer}"
    message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
    return f"failed: HTTP {status}: {message}".rstrip(": ")

