"""Who may drive the admin API: the checks every request passes before a handler runs.

A browser on any web page can reach a loopback port. So besides the bearer token: the
``Host`` header must name this listener (a DNS-rebinding page sends its own name), and a
mutation must come from a non-browser client or from the admin's own pages (``Origin``,
``Sec-Fetch-Site``) with a body type no HTML form can send (JSON, YAML for configs).
See docs/security.md.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["MUTATIONS", "SAFETY_HEADERS", "AdminGuard", "Refusal"]

MUTATIONS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_JSON = frozenset({"application/json"})
#: A config may be sent as YAML or as JSON (JSON is YAML).
_CONFIG = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml",
                     "application/json"})
#: Paths whose body is a config document; every other mutation takes JSON.
_CONFIG_PATHS = frozenset({"/v1/config"})
#: On every answer: no other site may frame the dashboard (clickjacking its buttons), and
#: browsers take each body as the type it is declared.
SAFETY_HEADERS = {
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Sec-Fetch-Site values of requests a browser did not make on another site's behalf.
_OWN_SITE = frozenset({"same-origin", "none"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the HTTP status and a reason naming the fix."""

    status: int
    reason: str


def _host_name(header: str) -> str:
    """The host of a ``Host`` header or an origin's netloc, lower case, without the port."""
    text = header.strip().lower()
    if text.startswith("["):  # [v6]:port
        return text[1:text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        text = text.rsplit(":", 1)[0]
    return text.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class AdminGuard:
    """The admin listener's checks; ``token`` is read per request (env or config)."""

    listen_host: str
    allowed_hosts: tuple[str, ...]
    token: Callable[[], str | None]

    def host_allowed(self, header: str | None) -> bool:
        """IP literals (a rebinding page cannot send one for its own name), ``localhost``,
        the listener's own name and ``admin.allowed_hosts`` (``*.x`` matches subdomains)."""
        if header is None:
            return True  # HTTP/1.0 without Host: no browser sends that
        name = _host_name(header)
        if _is_ip(name) or name == "localhost" or name == self.listen_host.lower():
            return True
        for allowed in self.allowed_hosts:
            if name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])):
                return True
        return False

    def check(self, method: str, path: str, headers: dict[str, str], has_body: bool,
              content_type: str) -> Refusal | None:
        """The refusal for a request, or None when it may go to its handler."""
        host = headers.get("host")
        if not self.host_allowed(host):
            return Refusal(421, f"Host {(host or '')[:100]!r} does not name this admin "
                           "listener; add the name to admin.allowed_hosts")
        if method not in MUTATIONS:
            return None
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in _OWN_SITE:
            return Refusal(403, f"a {site[:20]} browser request may not change this sidecar")
        origin = headers.get("origin")
        if origin is not None and not self._same_origin(origin, host):
            return Refusal(403, "a request from another origin may not change this sidecar")
        refusal = self._authorised(headers.get("authorization"))
        if refusal is not None:
            return refusal
        if has_body:
            wanted = _CONFIG if path in _CONFIG_PATHS else _JSON
            if content_type.lower() not in wanted:
                kinds = " or ".join(sorted(wanted))
                return Refusal(415, f"Content-Type {content_type[:60] or 'none'!r} is not "
                               f"accepted here: send {kinds}")
        return None

    @staticmethod
    def _same_origin(origin: str, host: str | None) -> bool:
        if origin.strip().lower() == "null" or host is None:
            return False
        try:
            netloc = urlsplit(origin.strip()).netloc
        except ValueError:
            return False
        return netloc.lower() == host.strip().lower()

    def _authorised(self, header: str | None) -> Refusal | None:
        token = self.token()
        if token is None:
            return None
        scheme, _, value = (header or "").partition(" ")
        try:
            given = value.strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # cannot happen with surrogateescape; kept for safety
            given = b""
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, token.encode()):
            return Refusal(401, "a bearer token is required for this endpoint")
        return None
