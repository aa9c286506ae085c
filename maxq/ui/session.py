"""
The web UI's sessions and CSRF tokens (standard library only).

A session is a signed cookie value C{v1.<expires ms>.<nonce>.<mac>}: the
server stores nothing, and every server that shares the API key accepts
it.  The signing secret is derived from the first API key, so changing the
key ends every session.  With no API key there is nothing to log in to,
but a session is still handed out (under a secret random to this process)
so that changes carry a CSRF token all the same.

The CSRF token is an HMAC of the session's nonce: it is bound to the
session, is not the cookie, and lives only in the page (a C{<meta>} read by
the UI's script and sent as the C{X-CSRF-Token} header).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as random

COOKIE = "maxq_session"
CSRF_HEADER = "X-CSRF-Token"
LIFETIME_MS = 12 * 3600 * 1000
_VERSION = "v1"


class Sessions:
    def __init__(self, api_key: bytes | None, clock):
        self.clock = clock
        self.required = api_key is not None
        base = api_key if api_key is not None else random.token_bytes(32)
        self._secret = hashlib.sha256(b"maxq ui sessions\0" + base).digest()

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._secret, "\0".join(parts).encode(),
                        hashlib.sha256).hexdigest()

    def issue(self) -> tuple[str, int]:
        """
        A new session cookie value and its lifetime in seconds.
        """
        expires = self._now() + LIFETIME_MS
        nonce = random.token_hex(16)
        value = f"{_VERSION}.{expires}.{nonce}.{self._mac('session', str(expires), nonce)}"
        return value, LIFETIME_MS // 1000

    def check(self, value: str | None) -> str | None:
        """
        The session's nonce when C{value} is a valid, unexpired session.
        """
        if not value:
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return None
        _, expires, nonce, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", expires, nonce)):
            return None
        if int(expires) <= self._now():
            return None
        return nonce

    def csrf_token(self, nonce: str) -> str:
        return self._mac("csrf", nonce)

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        if nonce is None or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(nonce))


def cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    """
    The C{Set-Cookie} value: never readable by scripts, never sent by other
    sites' requests.
    """
    attrs = [f"{COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Strict"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs).encode()


def clear_cookie_header(secure: bool) -> bytes:
    return cookie_header("", 0, secure)
