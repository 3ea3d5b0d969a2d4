"""The single-machine stack: `vidtune up` starts the embedded object store and the services on loopback,
`vidtune down` stops exactly the processes it started (recorded by pid and command line)."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from .client import stack_state_path
from .errors import FailedPrecondition, Unavailable
from .objectstore import free_ports, start_weed_mini, stop_process
from .server import DEFAULT_PORTS


def _alive(pid: int, needle: str) -> bool:
    """True when `pid` runs and is still the process we started (its command line names `needle`)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode()
    except OSError:
        return False
    return needle in cmdline


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def check_health(endpoint: str, service: str = "", timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name of `service` at `endpoint` (SERVING, NOT_SERVING, ...); over TLS
    verified against VIDTUNE_TLS_CA_FILE when it is set."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .tls import client_channel

    with client_channel(endpoint, ca_file=os.environ.get("VIDTUNE_TLS_CA_FILE") or None) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_serving(endpoint: str, timeout: float, proc: subprocess.Popen | None = None, name: str = "") -> None:
    import grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"{name or endpoint} exited with code {proc.returncode} during start")
        try:
            if check_health(endpoint, timeout=1.0) == "SERVING":
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise Unavailable(f"{name or endpoint} did not report SERVING within {timeout:.0f} s")


def service_env(s3_env: dict, token: str, home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(s3_env)
    env.update({"VIDTUNE_TOKEN": token, "VIDTUNE_ALLOW_LOCAL_PATHS": "1", "VIDTUNE_HOME": str(home),
                "NO_PROXY": "127.0.0.1,localhost"})
    env.update(extra or {})  # e.g. the data-access policy of a cluster: VIDTUNE_ALLOW_LOCAL_PATHS=0
    return env


def up(home: Path | None = None, services: list[str] | None = None, base_port: int | None = None,
       timeout: float = 90.0, extra_env: dict | None = None, console: bool | None = None) -> dict:
    """Start the object store and the services (all, or `services`), and the web console beside them
    (by default only with the full set: a subset is usually a test or a single-stage session)."""
    from vidtune.registry import available

    state_path = stack_state_path() if home is None else home / "stack.json"
    home = state_path.parent
    home.mkdir(parents=True, exist_ok=True)
    if state_path.exists():
        old = json.loads(state_path.read_text())
        if any(_alive(pid, "vidtune") or _alive(pid, "weed") for pid in old.get("pids", {}).values()):
            raise FailedPrecondition(f"a stack is already running (state {state_path}); run `vidtune down` first")
    creds_path = home / "credentials.json"
    if creds_path.exists():  # the same keys every time, so objects stored earlier stay readable
        creds = json.loads(creds_path.read_text())
    else:
        creds = {"access_key": "vidtune-" + secrets.token_hex(4), "secret_key": secrets.token_urlsafe(24),
                 "token": secrets.token_urlsafe(24)}
        creds_path.write_text(json.dumps(creds))
        os.chmod(creds_path, 0o600)
    s3_port = 8333 if _port_free(8333) else None
    weed, info = start_weed_mini(home / "s3", creds["access_key"], creds["secret_key"], s3_port=s3_port,
                                 log_path=home / "weed.log")
    state = {"pids": {"objectstore": weed.pid}, "ports": {}, "token": creds["token"], "s3": info.env(),
             "logs": {"objectstore": str(home / "weed.log")}, "started": time.time()}
    _write_state(state_path, state)
    env = service_env(info.env(), creds["token"], home, extra_env)
    procs = {}
    try:
        for i, svc in enumerate(services or available("service")):
            port = (base_port + i) if base_port else DEFAULT_PORTS[svc]
            if not _port_free(port):
                raise FailedPrecondition(f"port {port} for {svc} is taken; pass --base-port")
            log = home / f"{svc}.log"
            with open(log, "ab") as fh:
                procs[svc] = subprocess.Popen([sys.executable, "-m", "vidtune.cli", "serve", svc, "--port", str(port)],
                                              stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=env, start_new_session=True)
            state["pids"][svc], state["ports"][svc], state["logs"][svc] = procs[svc].pid, port, str(log)
            _write_state(state_path, state)
        for svc, proc in procs.items():
            wait_serving(f"127.0.0.1:{state['ports'][svc]}", timeout, proc, svc)
        if (services is None) if console is None else console:
            port = (base_port + len(procs)) if base_port else CONSOLE_PORT if _port_free(CONSOLE_PORT) \
                else free_ports(1)[0]
            _start_console(state, env, home, port, timeout)
            _write_state(state_path, state)
    except Exception:
        down(state_path.parent)
        raise
    return state


CONSOLE_PORT = 8080


def _start_console(state: dict, env: dict, home: Path, port: int, timeout: float) -> None:
    """The web console beside the services (`vidtune console`), pointed at their loopback ports."""
    import urllib.request

    if not _port_free(port):
        raise FailedPrecondition(f"port {port} for the console is taken; pass --base-port")
    env = dict(env, **{f"VIDTUNE_{svc.upper()}_ENDPOINT": f"127.0.0.1:{p}" for svc, p in state["ports"].items()})
    log = home / "console.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "vidtune.console", "--port", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    state["pids"]["console"], state["logs"]["console"] = proc.pid, str(log)
    state["console"] = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"the console did not start on port {port}; see {log}") from None
            time.sleep(0.2)


def down(home: Path | None = None) -> list[str]:
    state_path = stack_state_path() if home is None else home / "stack.json"
    if not state_path.exists():
        return []
    state = json.loads(state_path.read_text())
    stopped = []
    # Services first (they finish their calls and leave jobs resumable), the object store last.
    for name, pid in sorted(state.get("pids", {}).items(), key=lambda kv: kv[0] == "objectstore"):
        if _alive(pid, "weed" if name == "objectstore" else "vidtune"):
            stop_process(pid, timeout=20)
            stopped.append(name)
    state_path.unlink()
    return stopped


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
