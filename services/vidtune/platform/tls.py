"""TLS for every gRPC port: server credentials from mounted files, and client channels that verify them.

The server side reads a certificate and key as a Kubernetes Secret mounts them (cert-manager's layout:
tls.crt, tls.key, ca.crt), named by VIDTUNE_TLS_CERT_FILE and VIDTUNE_TLS_KEY_FILE (or all three found in
VIDTUNE_TLS_DIR). With VIDTUNE_TLS_CLIENT_AUTH=1 and a CA (VIDTUNE_TLS_CA_FILE), clients must present a
certificate signed by it. Without a certificate the port is plaintext, as on the single-machine stack.

The client side refuses to send a bearer token in clear to a host other than loopback: the token grants
everything a service can do, so it must not cross a network unencrypted unless the caller says so
(--insecure-token / VIDTUNE_ALLOW_INSECURE_TOKEN=1).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None
    client_auth: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None) -> "TlsFiles | None":
        env = os.environ if env is None else env
        folder = env.get("VIDTUNE_TLS_DIR")
        cert = env.get("VIDTUNE_TLS_CERT_FILE") or (f"{folder}/tls.crt" if folder else "")
        key = env.get("VIDTUNE_TLS_KEY_FILE") or (f"{folder}/tls.key" if folder else "")
        ca = env.get("VIDTUNE_TLS_CA_FILE") or (f"{folder}/ca.crt" if folder and Path(folder, "ca.crt").exists()
                                                 else "")
        if not cert and not key:
            return None
        if not (cert and key):
            raise InvalidArgument("TLS needs both VIDTUNE_TLS_CERT_FILE and VIDTUNE_TLS_KEY_FILE")
        client_auth = env.get("VIDTUNE_TLS_CLIENT_AUTH") == "1"
        if client_auth and not ca:
            raise InvalidArgument("VIDTUNE_TLS_CLIENT_AUTH=1 needs VIDTUNE_TLS_CA_FILE to verify clients against")
        return cls(Path(cert), Path(key), Path(ca) if ca else None, client_auth)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"TLS {what} {path}: cannot read ({e.strerror})") from None
    if not data.strip():
        raise InvalidArgument(f"TLS {what} {path} is empty")
    return data


def server_credentials(env: dict | None = None):
    """grpc.ServerCredentials from the mounted certificate and key, or None when TLS is not configured."""
    import grpc

    files = TlsFiles.from_env(env)
    if files is None:
        return None
    pair = (_read(files.key, "key"), _read(files.cert, "certificate"))
    ca = _read(files.ca, "CA") if files.ca and files.client_auth else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=files.client_auth)


def add_port(server, address: str, env: dict | None = None) -> int:
    """Bind `address` with TLS when configured (else plaintext); the bound port (0 when binding failed)."""
    creds = server_credentials(env)
    return server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)


def is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0] if not endpoint.startswith("[") else endpoint[1:].split("]")[0]
    host = host.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if host in ("localhost", "") or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(endpoint: str, secure: bool, has_token: bool, allow_insecure: bool) -> None:
    if has_token and not secure and not allow_insecure and not is_loopback(endpoint):
        raise FailedPrecondition(
            f"refusing to send the bearer token in clear to {endpoint}: use --tls (with --ca for a private CA), "
            "or --insecure-token (VIDTUNE_ALLOW_INSECURE_TOKEN=1) if the network is trusted")


def client_channel(endpoint: str, tls: bool = False, ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None):
    """A channel to `endpoint`: TLS verified against `ca_file` (or the system roots) when `tls` or a CA is given."""
    import grpc

    if not (tls or ca_file):
        return grpc.insecure_channel(endpoint)
    ca = _read(Path(ca_file), "CA") if ca_file else None
    chain = _read(Path(cert_file), "client certificate") if cert_file else None
    key = _read(Path(key_file), "client key") if key_file else None
    return grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca, key, chain))


def probe(port: int, service: str = "", timeout: float = 4.0, env: dict | None = None) -> bool:
    """A health check of this pod's own server over TLS (Kubernetes' native gRPC probes speak only
    plaintext): SERVING -> True. The certificate is verified against the CA, under the name it was issued
    for (VIDTUNE_TLS_SERVER_NAME), since the probe dials 127.0.0.1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = os.environ if env is None else env
    files = TlsFiles.from_env(env)
    address = f"127.0.0.1:{port}"
    if files is None:
        channel = grpc.insecure_channel(address)
    else:
        roots = _read(files.ca or files.cert, "CA")
        name = env.get("VIDTUNE_TLS_SERVER_NAME", "localhost")
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots),
                                      options=[("grpc.ssl_target_name_override", name)])
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":  # python -m vidtune.platform.tls PORT [SERVICE]: exit 0 when serving
    import sys

    try:
        ok = probe(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
    except Exception as e:  # noqa: BLE001 - a probe reports, it never raises
        print(f"not serving: {e}", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)
