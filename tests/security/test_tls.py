"""TLS on the gRPC port (certificates laid out as cert-manager writes a Secret), and a client that never sends
its token in clear across a network."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import grpc
import pytest

from vidtune.platform.errors import FailedPrecondition
from vidtune.platform.tls import check_token_transport, is_loopback

AUTH = [("authorization", "Bearer test-token")]


def _cert_secret(folder, name: str = "vidtune-transcode.vidtune.svc"):
    """ca.crt, tls.crt (for `name` and localhost), tls.key: the three files of a cert-manager Secret."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def build(subject, issuer, key, signer, ca: bool, sans=()):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vidtune test CA")])
    ca = build(ca_name, ca_name, ca_key, ca_key, True)
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name, key, ca_key, False,
                 (name, "localhost"))
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (folder / "tls.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder


@pytest.fixture
def tls_server(serve, storage, jobs_root, tmp_path, monkeypatch):
    from vidtune.transcode.service import definition

    secret = _cert_secret(tmp_path)
    monkeypatch.setenv("VIDTUNE_TLS_CERT_FILE", str(secret / "tls.crt"))
    monkeypatch.setenv("VIDTUNE_TLS_KEY_FILE", str(secret / "tls.key"))
    server, address = serve(definition(storage))
    for name in ("VIDTUNE_TLS_CERT_FILE", "VIDTUNE_TLS_KEY_FILE"):
        monkeypatch.delenv(name)
    return server, f"localhost:{server.port}", secret


def test_tls_port_verifies_and_refuses_plaintext(tls_server):
    from vidtune.platform.client import ServiceClient
    from vidtune.v1 import jobs_pb2

    server, address, secret = tls_server
    with ServiceClient("transcode", address, "test-token", tls=True, ca=str(secret / "ca.crt")) as c:
        c.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=c.metadata, timeout=10)
    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as e:
        from vidtune.v1 import jobs_pb2_grpc

        jobs_pb2_grpc.JobServiceStub(ch).ListJobs(jobs_pb2.ListJobsRequest(), metadata=AUTH, timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with ServiceClient("transcode", address, "test-token", tls=True) as c, pytest.raises(grpc.RpcError) as e:
        c.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=c.metadata, timeout=5)  # system roots: untrusted
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_pod_probe_checks_health_over_tls(tls_server):
    server, address, secret = tls_server
    env = {**os.environ, "VIDTUNE_TLS_DIR": str(secret), "VIDTUNE_TLS_SERVER_NAME": "vidtune-transcode.vidtune.svc"}
    ok = subprocess.run([sys.executable, "-m", "vidtune.platform.tls", str(server.port),
                         "vidtune.v1.TranscodeService"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "vidtune.platform.tls", str(server.port), "no.Such"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not serving" in bad.stderr


def test_token_never_crosses_a_network_in_clear(monkeypatch):
    monkeypatch.delenv("VIDTUNE_TLS_CA_FILE", raising=False)
    monkeypatch.delenv("VIDTUNE_TLS", raising=False)
    monkeypatch.delenv("VIDTUNE_ALLOW_INSECURE_TOKEN", raising=False)
    assert is_loopback("127.0.0.1:50051") and is_loopback("localhost:1") and is_loopback("[::1]:5")
    assert not is_loopback("vidtune-train.ml.svc:50053") and not is_loopback("10.0.0.7:50051")
    with pytest.raises(FailedPrecondition, match="refusing to send the bearer token in clear to 10.0.0.7:50051"):
        check_token_transport("10.0.0.7:50051", secure=False, has_token=True, allow_insecure=False)
    check_token_transport("10.0.0.7:50051", secure=True, has_token=True, allow_insecure=False)
    check_token_transport("10.0.0.7:50051", secure=False, has_token=True, allow_insecure=True)
    check_token_transport("127.0.0.1:50051", secure=False, has_token=True, allow_insecure=False)
    # The CLI says why and exits non-zero, without ever opening a connection.
    env = {**os.environ, "VIDTUNE_TOKEN": "t0ken", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "vidtune.cli", "transcode", "submit", "--input", "s3://vid/a.mp4",
                          "--output", "s3://vid/out", "--endpoint", "10.0.0.7:50051"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "refusing to send the bearer token in clear" in out.stderr
