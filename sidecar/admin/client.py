"""A small client of the admin HTTP API, for the ``sidecar`` command line.

Standard library only, synchronous: one request per command.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from sidecar.errors import ShadowcarError

__all__ = ["AdminClient", "AdminError"]

DEFAULT_ADMIN = "http://127.0.0.1:9901"


class AdminError(ShadowcarError):
    """The admin API answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    """Calls one sidecar's admin API; the token comes from the caller or the environment."""

    def __init__(self, base: str | None = None, token: str | None = None) -> None:
        self.base = (base or os.environ.get("SHADOWCAR_ADMIN") or DEFAULT_ADMIN).rstrip("/")
        self.token = token or os.environ.get("SHADOWCAR_ADMIN_TOKEN")

    def request(
        self, method: str, path: str, body: bytes | None = None,
        content_type: str = "application/json", timeout: float = 30,
    ) -> Any:
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                data = json.loads(raw)
                detail = data.get("error", raw.decode())
                problems = data.get("problems")
                if problems:
                    detail += "\n  " + "\n  ".join(f"{p['path']}: {p['message']}" for p in problems)
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise AdminError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code) from None
        except urllib.error.URLError as exc:
            raise AdminError(f"cannot reach the admin API at {self.base}: {exc.reason}") from None

    def canary(
        self, action: str, route: str, reason: str, actor: str, force: bool = False
    ) -> Any:
        if action == "status":
            data = self.request("GET", "/v1/canaries")
            matches = [c for c in data["canaries"] if c["route"] == route]
            if not matches:
                raise AdminError(f"no canary on route {route!r}")
            return matches[0]
        path = f"/v1/canaries/{urllib.parse.quote(route, safe='')}/{action}"
        body: dict[str, Any] = {"reason": reason, "actor": actor}
        if force:
            body["force"] = True
        return self.request("POST", path, json.dumps(body).encode())

    def reload(
        self, config_text: str | None, reason: str, actor: str, file: str | None = None
    ) -> Any:
        """``file``: the absolute path ``config_text`` was read from (SIGHUP rereads it)."""
        params = {"reason": reason, "actor": actor}
        if file is not None:
            params["file"] = file
        query = urllib.parse.urlencode(params)
        body = config_text.encode() if config_text is not None else b""
        return self.request("POST", f"/v1/config?{query}", body, content_type="application/yaml")

    def audit(self, limit: int) -> Any:
        return self.request("GET", f"/v1/audit?limit={limit}")["audit"]
