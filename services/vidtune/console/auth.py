"""Who may use the console: the services' bearer token (full access) or an optional read-only token.

A login exchanges the token for a session cookie (HttpOnly, SameSite=Strict) that carries the role and a
random nonce signed with an HMAC keyed by the token itself, so any replica checks it without shared state
and changing the token ends every session. Actions also need a CSRF token derived from the same nonce."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

FULL, READ_ONLY = "full", "read"
COOKIE = "vidtune_session"


def _read_secret(value_env: str, file_env: str) -> str:
    path = os.environ.get(file_env)
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(value_env, "").strip()


@dataclass(frozen=True)
class Session:
    role: str
    nonce: str
    csrf: str

    @property
    def can_act(self) -> bool:
        return self.role == FULL


class Access:
    def __init__(self, token: str, read_only_token: str = ""):
        if not token:
            raise ValueError("the console needs a token (VIDTUNE_TOKEN_FILE or VIDTUNE_TOKEN)")
        self._tokens = {FULL: token}
        if read_only_token:
            if read_only_token == token:
                raise ValueError("the read-only token must differ from the full token")
            self._tokens[READ_ONLY] = read_only_token

    @classmethod
    def from_env(cls, token: str | None = None) -> "Access":
        from vidtune.platform.client import token as service_token

        return cls(token or service_token() or "",
                   _read_secret("VIDTUNE_CONSOLE_READONLY_TOKEN", "VIDTUNE_CONSOLE_READONLY_TOKEN_FILE"))

    def role_of(self, presented: str) -> str | None:
        """The role a presented token grants, or None (compared in constant time)."""
        presented = (presented or "").strip().encode()
        role = None
        for r, t in self._tokens.items():
            if hmac.compare_digest(presented, t.encode()):
                role = r
        return role

    def _sign(self, *parts: str) -> str:
        key = hashlib.sha256(b"vidtune-console\x00" + self._tokens[FULL].encode()).digest()
        return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def new_cookie(self, role: str) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{role}.{nonce}.{self._sign('session', role, nonce)}"

    def session(self, cookie: str | None) -> Session | None:
        try:
            role, nonce, sig = (cookie or "").split(".")
        except ValueError:
            return None
        if role not in self._tokens or not hmac.compare_digest(sig, self._sign("session", role, nonce)):
            return None
        return Session(role, nonce, self._sign("csrf", nonce))

    def bearer_session(self, authorization: str | None) -> Session | None:
        """API clients may send `Authorization: Bearer <token>` instead of a cookie (no CSRF: not a browser)."""
        scheme, _, value = (authorization or "").partition(" ")
        role = self.role_of(value) if scheme.lower() == "bearer" else None
        return Session(role, "", "") if role else None
