"""
Keeping secrets out of what MaxQ stores and shows.

A step's C{env} may carry credentials (C{API_KEY}, C{DB_PASSWORD}, ...).
Their values are masked in the step's stored stdout/stderr and in the API's
view of the step's env.  Script tokens (C{MAXQ_TOKEN}) are recognised by
their shape and masked in any captured output.  Standard library only.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

MASK = "***"
# Shorter values are left alone: masking "1" or "yes" would garble the
# output without hiding anything worth hiding.
MIN_SECRET_LENGTH = 4

_SECRET_KEY_RE = re.compile(r"(_KEY|_TOKEN|_SECRET)$|PASSWORD", re.IGNORECASE)
# maxq.tokens: "mxq1.<run id>.<step id or empty>.<64 hex digits>".
_TOKEN_RE = re.compile(r"mxq1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[0-9a-f]{64}")


def is_secret_key(key: str) -> bool:
    """
    Whether an env key names a secret: C{*_KEY}, C{*_TOKEN}, C{*_SECRET} or
    anything containing C{PASSWORD}, case-insensitively.
    """
    return _SECRET_KEY_RE.search(key) is not None


def secret_values(env: Mapping[str, str] | None) -> list[str]:
    """
    The values of C{env}'s secret-looking keys worth masking, longest first
    (so a secret that contains another is masked whole).
    """
    values = {
        value for key, value in (env or {}).items()
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH
        and is_secret_key(key)
    }
    return sorted(values, key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """
    C{text} with every occurrence of each secret, and every script token,
    replaced by L{MASK}.
    """
    if not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
        # Stored output is the tail of what was printed, so it may begin in
        # the middle of a secret: mask such a leading fragment too.
        size = _leading_fragment(text, secret)
        if size:
            text = MASK + text[size:]
    if "mxq1." in text:
        text = _TOKEN_RE.sub(MASK, text)
    return text


def _leading_fragment(text: str, secret: str) -> int:
    """
    The length of the longest proper suffix of C{secret}, at least
    L{MIN_SECRET_LENGTH} long, that C{text} starts with; 0 if none.
    """
    head = text[:MIN_SECRET_LENGTH]
    if len(head) < MIN_SECRET_LENGTH:
        return 0
    start = secret.find(head, 1)
    while start != -1:
        if text.startswith(secret[start:]):
            return len(secret) - start
        start = secret.find(head, start + 1)
    return 0


def mask_output(text: str, env: Mapping[str, str] | None) -> str:
    """
    A step's captured output with the values of its secret env keys (and
    script tokens) masked.
    """
    return mask_text(text, secret_values(env))


def mask_env(env: Mapping[str, str] | None) -> dict | None:
    """
    C{env} as the API shows it: the value of every secret-looking key
    (whatever its length, unless empty) replaced by L{MASK}.
    """
    if env is None:
        return None
    return {
        key: MASK if is_secret_key(key) and value else value
        for key, value in env.items()
    }
