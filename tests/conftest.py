"""Shared fixtures: a real S3 server (SeaweedFS weed mini) on loopback for the whole test session."""
from __future__ import annotations

import os
import secrets

import pytest

from vidtune.platform.objectstore import start_weed_mini, stop_process
from vidtune.platform.storage import S3Config, Storage


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    proc, info = start_weed_mini(tmp_path_factory.mktemp("weed"), "vt-test-access", secrets.token_hex(16))
    yield info
    stop_process(proc.pid)


@pytest.fixture(scope="session")
def s3_env(object_store) -> dict[str, str]:
    """Environment that points vidtune (in-process or a subprocess) at the test object store."""
    return object_store.env()


@pytest.fixture
def storage(object_store, monkeypatch) -> Storage:
    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    return Storage(S3Config(endpoint=object_store.endpoint, access_key=object_store.access_key,
                            secret_key=object_store.secret_key))


@pytest.fixture
def bucket(storage, request) -> str:
    """A fresh bucket URI for one test, e.g. s3://t-test-name-1a2b3c."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{stem}-{secrets.token_hex(3)}"
    storage.ensure_bucket(name)
    return f"s3://{name}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # Loopback only: a proxy configured in the environment must never see test traffic.
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def jobs_root(bucket, monkeypatch) -> str:
    root = f"{bucket}/jobs"
    monkeypatch.setenv("VIDTUNE_JOBS_ROOT", root)
    return root


@pytest.fixture
def serve():
    """Start a service's gRPC server in this process on a free port; stopped after the test."""
    from vidtune.platform.server import Server

    started = []

    def start(definition, token: str | None = "test-token"):
        server = Server(definition, port=0, token=token).start()
        started.append(server)
        return server, f"127.0.0.1:{server.port}"

    yield start
    for s in started:
        s.stop(grace=1)
