"""The bearer token that every action (POST) must carry.

Reads stay open; a POST without ``Authorization: Bearer <token>``, or with
another token, gets 401 and changes nothing. The token comes from
``ANGELA_QUEUE_DASHBOARD_TOKEN`` (through Settings), else it is generated at
start and the printed URL carries it in its fragment (``#token=...``): a
fragment never leaves the browser, so it is in no request line, proxy log or
Referer. The page keeps it in memory and sessionStorage only.

Hazards: no cookie is ever set, so a page on another origin cannot make the
browser send the token (no CSRF); and a cross-origin request that sets
Authorization needs a CORS preflight, which this server never grants. The
comparison is constant-time, so the response time does not leak how much of
a guess was right.
"""

from __future__ import annotations

import hmac
import secrets

TOKEN_BYTES = 32


class Token:
    def __init__(self, value: str | None = None):
        value = (value or "").strip()
        self.generated = not value
        self.value = value or secrets.token_urlsafe(TOKEN_BYTES)
        self._expected = self.value.encode()

    def accepts(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries this token."""
        if not authorization:
            return False
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._expected)

    def fragment(self) -> str:
        """What the announced URL carries: the generated token only (one from
        the environment is known to whoever set it, and stays out of logs)."""
        return f"#token={self.value}" if self.generated else ""

    def __repr__(self) -> str:  # never the value: a repr ends up in logs
        return f"Token(generated={self.generated})"
