"""Keeping secrets out of logs, error messages and pages.

A ``Redactor`` knows the secret values the rules file pulled from the environment
and recognises the usual credential shapes (``access_token=`` in Canvas URLs,
``Authorization: Bearer``, ``password=``), replacing them with ``***``. In JSON (an
event, a stored message) it also masks the whole value of every field whose name says
it holds a credential (``REDACT_KEYS``, plus the rules file's ``defaults.redact_keys``).
"""

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "REDACT_KEYS", "Redactor"]

MASK = "***"

_PATTERNS = re.compile(
    r"(?i)((?:access_token|refresh_token|client_secret|api_key|apikey|token|password|secret|sig)"
    r"(?:=|%3D))[^&\s\"']+"
    r"|(bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(xox[abposr]-)[A-Za-z0-9-]+"
    # POST /events/<token>: the ingest token in the path (Canvas cannot send a header).
    r"|(/events/)[^/\s\"'?#]+"
)


#: Field names (compared without case) whose values are credentials wherever they appear.
REDACT_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "client_secret",
        "cookie",
        "id_token",
        "passwd",
        "password",
        "private_key",
        "refresh_token",
        "secret",
        "session_token",
        "token",
    }
)


def _mask(match: re.Match[str]) -> str:
    prefix = next(group for group in match.groups() if group is not None)
    return prefix + MASK


class Redactor:
    """Replace known secret values and credential-looking substrings with ``***``."""

    def __init__(self, secrets: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.keys = REDACT_KEYS | {key.lower() for key in keys}

    def tree(self, value: Any) -> Any:
        """A JSON value with every string redacted and the value of every field named
        like a credential (``self.keys``) masked whole."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {
                key: (
                    MASK
                    if isinstance(key, str) and key.lower() in self.keys and item is not None
                    else self.tree(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.tree(item) for item in value]
        return value

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        # Every match of _PATTERNS holds "=", "%3d", "bearer", "xox" or "/events/" (in
        # any case). Most logged strings (ids, names, states) hold none, and these
        # searches cost a few percent of the regex's scan.
        lowered = text.lower()
        if (
            "=" in lowered
            or "%3d" in lowered
            or "bearer" in lowered
            or "xox" in lowered
            or "/events/" in lowered
        ):
            return _PATTERNS.sub(_mask, text)
        return text
