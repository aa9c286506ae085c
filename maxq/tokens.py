"""
Credentials: the operator's API keys, and the scoped tokens handed to
scripts as C{MAXQ_TOKEN}.

A script token names its run (and, for a step, its step) and carries an
HMAC of those under a secret derived from the first API key, so every
server that shares the keys can check it without storing anything.
Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

_PREFIX = "mxq1"


@dataclass(frozen=True)
class Principal:
    """
    Who is calling: the operator (C{run_id} None) or a script of one run.
    """

    run_id: str | None = None
    step_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.run_id is None


OPERATOR = Principal()


class Credentials:
    def __init__(self, api_keys: tuple[str, ...]):
        self.api_keys = tuple(k.encode() for k in api_keys)
        self._secret = (
            hashlib.sha256(b"maxq script tokens\0" + self.api_keys[0]).digest()
            if self.api_keys else b""
        )

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys)

    def _mac(self, run_id: str, step_id: str) -> str:
        message = f"{run_id}\0{step_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def script_token(self, run_id: str, step_id: str | None = None) -> str:
        step = step_id or ""
        return f"{_PREFIX}.{run_id}.{step}.{self._mac(run_id, step)}"

    def identify(self, authorization: str | None) -> Principal | None:
        """
        The principal an C{Authorization} header proves, or None.
        """
        if not self.enabled:
            return OPERATOR
        if not authorization or not authorization.startswith("Bearer "):
            return None
        presented = authorization[len("Bearer "):].strip().encode()
        # Compare against every key, without stopping early.
        matched = False
        for key in self.api_keys:
            matched |= hmac.compare_digest(presented, key)
        if matched:
            return OPERATOR
        parts = presented.decode("latin-1").split(".")
        if len(parts) != 4 or parts[0] != _PREFIX:
            return None
        _, run_id, step_id, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac(run_id, step_id).encode()):
            return None
        return Principal(run_id=run_id, step_id=step_id or None)
