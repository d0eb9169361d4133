"""Camera tokens, TLS and mutual TLS on a real loopback gRPC server.

The certificates are real: a CA, a server certificate for ``cloud.fchm.test`` and
camera certificates are made here with ``cryptography``; the edge side connects
through ``edge.channel.open_channel`` with the token from ``call_metadata``.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.camera_auth import hash_token
from cloud.settings import CloudSettings
from codec.bundle import Bundle
from edge.channel import call_metadata, open_channel
from edge.settings import EdgeSettings
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import RunningCloud, free_port, sample_images
from tests.integration.stored_frames import FrameMaker

TOKEN_A, TOKEN_B = "token-of-cam-a-0123456789", "token-of-cam-b-9876543210"
SERVER_NAME = "cloud.fchm.test"  # only name in the server certificate: not 127.0.0.1


# ── real certificates ────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key


def issue(common_name: str, ca: Issued | None = None, server_name: str | None = None) -> Issued:
    """A CA (``ca`` None), or a server (``server_name``) / client certificate signed by ca."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_name else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server_name:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False
        )
    elif ca is not None:
        # A client cert needs no name the server checks; one IP SAN keeps it realistic.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.0.7"))]),
            critical=False,
        )
    signer = ca.key if ca is not None else key  # a CA signs itself
    return Issued(key, builder.sign(signer, hashes.SHA256()))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # a CA the cloud does not trust …
    rogue_cert: Path  # … and a camera certificate it signed
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = issue("fchm test CA"), issue("rogue CA")
    ca_path, _ = ca.write(folder, "ca")
    rogue_path, _ = rogue.write(folder, "rogue-ca")
    server = issue(SERVER_NAME, ca, server_name=SERVER_NAME).write(folder, "server")
    client = issue("cam-a", ca).write(folder, "cam-a")
    rogue_client = issue("cam-a", rogue).write(folder, "rogue-cam-a")
    return Pki(ca_path, *server, *client, rogue_path, *rogue_client)


# ── clouds and edges ─────────────────────────────────────────────────────────
def start_cloud(bundle: Bundle, folder: Path, **tls: Any) -> RunningCloud:
    return RunningCloud(
        CloudSettings(
            bundle=bundle.path,
            data_dir=folder,
            grpc_port=free_port(),
            http_port=free_port(),
            onnx_threads=1,
            camera_tokens={"cam-a": hash_token(TOKEN_A), "cam-b": hash_token(TOKEN_B)},
            **tls,
        )
    )


@pytest.fixture(scope="module")
def plain_cloud(
    tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCloud]:
    cloud = start_cloud(tiny_bundle, tmp_path_factory.mktemp("plain"))
    yield cloud
    cloud.stop()


def edge(cloud: RunningCloud, camera: str = "cam-a", **kw: object) -> EdgeSettings:
    return EdgeSettings(source="unused.mp4", camera_id=camera, cloud=cloud.grpc_target, **kw)  # type: ignore[arg-type]


def hello(bundle: Bundle, camera: str) -> ingest_pb2.UplinkMessage:
    return ingest_pb2.UplinkMessage(
        hello=ingest_pb2.Hello(
            camera_id=camera, bundle_hash=bundle.hash, edge_time_ns=time.time_ns()
        )
    )


def frame(sequence: int, data: bytes) -> ingest_pb2.UplinkMessage:
    return ingest_pb2.UplinkMessage(
        frame=ingest_pb2.Frame(sequence=sequence, rate_level=3, bitstream=data)
    )


def stream(
    settings: EdgeSettings, bundle: Bundle, frames: Sequence[bytes] = ()
) -> list[ingest_pb2.DownlinkMessage]:
    """Hello + frames over open_channel(settings) with call_metadata(settings)."""
    messages = [hello(bundle, settings.camera_id)] + [frame(i, f) for i, f in enumerate(frames)]
    with open_channel(settings) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        call = stub.Stream(iter(messages), metadata=call_metadata(settings), timeout=20)
        return list(call)


def refused(settings: EdgeSettings, bundle: Bundle) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stream(settings, bundle)
    return info.value


@pytest.fixture(scope="module")
def bitstreams(tiny_bundle: Bundle) -> list[bytes]:
    maker = FrameMaker(tiny_bundle)
    return [maker.bitstream(image, 3)[0] for image in sample_images()]


# ── tokens ───────────────────────────────────────────────────────────────────
def test_the_right_token_streams_and_frames_are_acked(
    plain_cloud: RunningCloud, tiny_bundle: Bundle, bitstreams: list[bytes]
) -> None:
    replies = stream(edge(plain_cloud, token=TOKEN_A), tiny_bundle, bitstreams)
    assert replies[0].WhichOneof("kind") == "welcome"
    acks = [r.ack for r in replies if r.WhichOneof("kind") == "ack"]
    assert [(a.sequence, a.duplicate) for a in acks] == [(0, False), (1, False)]


@pytest.mark.parametrize(
    ("camera", "token", "code", "message"),
    [
        ("cam-a", None, grpc.StatusCode.UNAUTHENTICATED, "camera cam-a sent no token"),
        ("cam-x", TOKEN_A, grpc.StatusCode.UNAUTHENTICATED, "camera cam-x is not registered"),
        ("cam-x", None, grpc.StatusCode.UNAUTHENTICATED, "camera cam-x is not registered"),
        (
            "cam-a",
            TOKEN_B,
            grpc.StatusCode.PERMISSION_DENIED,
            "token is not valid for camera cam-a",
        ),
        (
            "cam-b",
            "guess",
            grpc.StatusCode.PERMISSION_DENIED,
            "token is not valid for camera cam-b",
        ),
    ],
)
def test_refused_tokens_and_cameras(
    plain_cloud: RunningCloud,
    tiny_bundle: Bundle,
    camera: str,
    token: str | None,
    code: grpc.StatusCode,
    message: str,
) -> None:
    error = refused(edge(plain_cloud, camera, token=token), tiny_bundle)
    assert error.code() == code
    assert message in (error.details() or "")


def test_a_refused_camera_stores_nothing_and_the_cloud_keeps_serving(
    plain_cloud: RunningCloud, tiny_bundle: Bundle, bitstreams: list[bytes]
) -> None:
    # Another camera's token, with frames behind the Hello: none of them may land.
    with pytest.raises(grpc.RpcError) as info:
        stream(edge(plain_cloud, "cam-b", token=TOKEN_A), tiny_bundle, bitstreams)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Non-Bearer schemes are not tokens.
    with open_channel(edge(plain_cloud)) as channel:
        call = ingest_pb2_grpc.IngestStub(channel).Stream(
            iter([hello(tiny_bundle, "cam-a")]),
            metadata=(("authorization", f"Basic {TOKEN_A}"),),
            timeout=20,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    replies = stream(edge(plain_cloud, "cam-b", token=TOKEN_B), tiny_bundle, bitstreams[:1])
    assert replies[0].welcome.next_sequence == 0  # cam-b had nothing stored before
    assert [r.ack.sequence for r in replies[1:]] == [0]


# ── TLS ──────────────────────────────────────────────────────────────────────
@pytest.fixture(scope="module")
def tls_cloud(
    tiny_bundle: Bundle, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCloud]:
    cloud = start_cloud(
        tiny_bundle,
        tmp_path_factory.mktemp("tls"),
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
    )
    yield cloud
    cloud.stop()


def test_tls_streams_with_the_cloud_ca_and_nothing_else(
    tls_cloud: RunningCloud, tiny_bundle: Bundle, pki: Pki, bitstreams: list[bytes]
) -> None:
    settings = edge(tls_cloud, token=TOKEN_A, tls_ca=pki.ca, tls_server_name=SERVER_NAME)
    replies = stream(settings, tiny_bundle, bitstreams)
    assert replies[0].WhichOneof("kind") == "welcome"
    assert [r.ack.sequence for r in replies[1:]] == [0, 1]

    # Plaintext to a TLS port, a CA that did not sign the server, the wrong name: no stream.
    for bad in (
        edge(tls_cloud, token=TOKEN_A),
        edge(tls_cloud, token=TOKEN_A, tls_ca=pki.rogue_ca, tls_server_name=SERVER_NAME),
        edge(tls_cloud, token=TOKEN_A, tls_ca=pki.ca, tls_server_name="other.fchm.test"),
    ):
        assert refused(bad, tiny_bundle).code() == grpc.StatusCode.UNAVAILABLE

    # TLS does not replace the token: the handshake passes, the Hello is refused.
    no_token = edge(tls_cloud, tls_ca=pki.ca, tls_server_name=SERVER_NAME)
    assert refused(no_token, tiny_bundle).code() == grpc.StatusCode.UNAUTHENTICATED


# ── mutual TLS ───────────────────────────────────────────────────────────────
@pytest.fixture(scope="module")
def mtls_cloud(
    tiny_bundle: Bundle, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCloud]:
    cloud = start_cloud(
        tiny_bundle,
        tmp_path_factory.mktemp("mtls"),
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
    )
    yield cloud
    cloud.stop()


def test_mutual_tls_needs_a_camera_certificate_from_the_cloud_ca(
    mtls_cloud: RunningCloud, tiny_bundle: Bundle, pki: Pki, bitstreams: list[bytes]
) -> None:
    tls: dict[str, Any] = {"token": TOKEN_A, "tls_ca": pki.ca, "tls_server_name": SERVER_NAME}
    without_cert = edge(mtls_cloud, **tls)
    assert refused(without_cert, tiny_bundle).code() == grpc.StatusCode.UNAVAILABLE
    rogue_cert = edge(mtls_cloud, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key, **tls)
    assert refused(rogue_cert, tiny_bundle).code() == grpc.StatusCode.UNAVAILABLE

    with_cert = edge(mtls_cloud, tls_cert=pki.client_cert, tls_key=pki.client_key, **tls)
    replies = stream(with_cert, tiny_bundle, bitstreams)
    assert replies[0].WhichOneof("kind") == "welcome"
    assert [r.ack.sequence for r in replies[1:]] == [0, 1]


def test_unreadable_tls_files_name_the_setting(plain_cloud: RunningCloud, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_ca: cannot read"):
        open_channel(edge(plain_cloud, tls_ca=tmp_path / "missing.pem"))
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="tls_ca: .* is not a PEM file"):
        open_channel(edge(plain_cloud, tls_ca=not_pem))
