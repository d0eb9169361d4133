"""Per-camera tokens: who may stream as which camera.

    edge ── metadata "authorization: Bearer <token>" + Hello(camera_id) ──► CameraAuth.verify
                                                                             │ sha256(token)
                          camera_tokens: camera id → sha256 hex ◄────────────┘ compare_digest

The cloud stores only the sha256 of each token (``fchm cloud token --camera ID``
prints a new token and its hash), so a leaked config does not leak the secrets.
With no ``camera_tokens`` configured, every camera may connect (the embedded demo);
once one is configured, every camera must be. Refusals:

- unknown camera, or no ``Bearer`` token at all → ``UNAUTHENTICATED``
- a token that is wrong, or belongs to another camera → ``PERMISSION_DENIED``
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping

import grpc

log = logging.getLogger(__name__)

AUTH_KEY = "authorization"  # gRPC metadata keys are lower case on the wire
SCHEME = "Bearer "


def hash_token(token: str) -> str:
    """The sha256 hex of a token, as stored in ``camera_tokens``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token: 32 bytes, URL-safe base64 (valid in a gRPC header)."""
    return secrets.token_urlsafe(32)


class AuthRefused(Exception):
    """A stream the cloud refuses; ``code`` is the gRPC status to end it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CameraAuth:
    """Checks a stream's bearer token against the camera its Hello names."""

    def __init__(self, camera_tokens: Mapping[str, str]) -> None:
        self._hashes = {camera: h.lower() for camera, h in camera_tokens.items()}
        # Only for the operator's log: whose token was misused. Never sent to the client.
        self._owner = {h: camera for camera, h in self._hashes.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def verify(self, camera_id: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Return if the stream may act as ``camera_id``; raise AuthRefused if not."""
        if not self.enabled:
            return
        expected = self._hashes.get(camera_id)
        if expected is None:
            raise AuthRefused(
                grpc.StatusCode.UNAUTHENTICATED, f"camera {camera_id} is not registered"
            )
        token = bearer_token(metadata)
        if token is None:
            raise AuthRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"camera {camera_id} sent no token (metadata '{AUTH_KEY}: Bearer <token>')",
            )
        presented = hash_token(token)
        # Constant-time: response timing must not reveal how much of a hash matched.
        if not hmac.compare_digest(presented, expected):
            owner = self._owner.get(presented)
            if owner is not None:
                log.warning("camera %s presented the token of camera %s", camera_id, owner)
            raise AuthRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"token is not valid for camera {camera_id}"
            )


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first ``authorization: Bearer …`` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != AUTH_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if text[: len(SCHEME)].lower() == SCHEME.lower():
            token = text[len(SCHEME) :].strip()
            return token or None
        return None
    return None
