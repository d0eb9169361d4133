"""PEM files for gRPC TLS, shared by the edge (channel) and the cloud (server).

grpcio takes certificates and keys as bytes; reading them here turns a missing or
wrong file into an error that names the setting, instead of a TLS handshake
failure much later with no path in it.
"""

from __future__ import annotations

from pathlib import Path


def read_pem(path: Path, field: str) -> bytes:
    """The bytes of a PEM file; ValueError naming ``field`` if it is unreadable or not PEM."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{field}: {path} is not a PEM file (expected -----BEGIN …-----)")
    return data
