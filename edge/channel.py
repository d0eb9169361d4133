"""The edge's gRPC channel to the cloud: plaintext, TLS or mutual TLS, plus its token.

    EdgeSettings ─► open_channel() ─► grpc.Channel ─► stub.Stream(…, metadata=call_metadata())
                    tls_ca?          → TLS, the cloud's certificate checked against tls_ca
                    tls_cert+key?    → mutual TLS, the camera proves itself with its cert
                    tls_server_name? → the name expected in the cloud's certificate
                    token?           → "authorization: Bearer <token>" on every stream

Keepalive pings are what notice a dead link on an idle or stalled stream: a
camera behind NAT whose mapping expired otherwise waits on a TCP connection that
will never answer. The cloud permits these pings (cloud/server.py).
"""

from __future__ import annotations

import logging

import grpc

from edge.settings import EdgeSettings
from infra.tls import read_pem

log = logging.getLogger(__name__)

# Largest frame the edge sends; the cloud enforces its own limit (max_message_bytes).
MAX_MESSAGE_BYTES = 8 << 20

# Ping every 20 s, and give up on the connection if a ping is not answered in 10 s:
# a cut link is detected in ≤ 30 s even when no frame is being sent. The cloud allows
# pings every 10 s (grpc.http2.min_ping_interval_without_data_ms), so 20 s is safe.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000


def channel_options(
    settings: EdgeSettings, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[str, int | str]]:
    """gRPC channel arguments: keepalive, message size, reconnect backoff, TLS name."""
    options: list[tuple[str, int | str]] = [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Ping even between streams (e.g. while the spool waits for a reconnect) …
        ("grpc.keepalive_permit_without_calls", 1),
        # … and while no data flows; the default (2) stops pinging a stalled stream.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        # The channel's own reconnects follow the agent's backoff settings. (Not
        # grpc.min_reconnect_backoff_ms: it is the connect *timeout*, 20 s by default,
        # and a short one would fail every TLS handshake over a slow cellular link.)
        ("grpc.initial_reconnect_backoff_ms", round(settings.backoff_initial_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", round(settings.backoff_max_s * 1000)),
    ]
    if settings.tls_server_name:
        # Reach the cloud by IP (or through a proxy) yet verify the name in its certificate.
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return options


def channel_credentials(settings: EdgeSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel (no tls_ca)."""
    if settings.tls_ca is None:
        return None
    root = read_pem(settings.tls_ca, "tls_ca")
    if settings.tls_cert is None or settings.tls_key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=read_pem(settings.tls_key, "tls_key"),
        certificate_chain=read_pem(settings.tls_cert, "tls_cert"),
    )


def open_channel(
    settings: EdgeSettings, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.Channel:
    """A channel to ``settings.cloud``; ValueError naming the field for a bad PEM file."""
    options = channel_options(settings, max_message_bytes)
    credentials = channel_credentials(settings)
    if credentials is None:
        if settings.token:
            log.warning(
                "sending the camera token to %s without TLS; set tls_ca to encrypt it",
                settings.cloud,
            )
        return grpc.insecure_channel(settings.cloud, options=options)
    return grpc.secure_channel(settings.cloud, credentials, options=options)


def call_metadata(settings: EdgeSettings) -> tuple[tuple[str, str], ...]:
    """Metadata for each stream call: the camera's bearer token, if it has one."""
    if not settings.token:
        return ()
    return (("authorization", f"Bearer {settings.token.get_secret_value()}"),)
