"""Who is connecting: ``hello.token`` → a user subject.

With ``JWT_SECRET`` set, the token must be an HS256 JWT with ``sub`` and ``exp``.
Without it the server is in dev mode: the token itself is the user id ("dev" if absent).
"""

from __future__ import annotations

import jwt

from chat_server.config import Secret
from chat_server.errors import ChatError
from protocol.errors import ErrorCode

_MAX_SUBJECT = 200


class Authenticator:
    def __init__(self, secret: Secret | None) -> None:
        self._secret = secret

    def subject(self, token: str | None) -> str:
        if self._secret is None:
            subject = token or "dev"
        else:
            if not token:
                raise ChatError(ErrorCode.UNAUTHORIZED, "token required")
            try:
                claims = jwt.decode(
                    token,
                    self._secret.value,
                    algorithms=["HS256"],
                    options={"require": ["sub", "exp"]},
                )
            except jwt.PyJWTError as exc:
                raise ChatError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
            subject = str(claims["sub"])
        if not subject or len(subject) > _MAX_SUBJECT or "\x00" in subject:
            raise ChatError(ErrorCode.UNAUTHORIZED, "invalid user id")
        return subject
