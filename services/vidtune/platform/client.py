"""The client side every CLI command shares: where a service is, its token, and watching a job."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import grpc

from .errors import FailedPrecondition
from .server import DEFAULT_PORTS

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


def stack_state_path() -> Path:
    return Path(os.environ.get("VIDTUNE_HOME", Path.home() / ".vidtune")) / "stack.json"


def stack_state() -> dict:
    p = stack_state_path()
    return json.loads(p.read_text()) if p.exists() else {}


def endpoint_for(service: str, explicit: str | None = None) -> str:
    """--endpoint, else VIDTUNE_<SERVICE>_ENDPOINT, else the local stack's port, else the default port."""
    if explicit:
        return explicit
    env = os.environ.get(f"VIDTUNE_{service.upper()}_ENDPOINT")
    if env:
        return env
    port = stack_state().get("ports", {}).get(service) or DEFAULT_PORTS[service]
    return f"127.0.0.1:{port}"


def token(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    path = os.environ.get("VIDTUNE_TOKEN_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get("VIDTUNE_TOKEN") or stack_state().get("token")


class ServiceClient:
    """A channel to one service plus the call metadata (bearer token) every call carries."""

    def __init__(self, service: str, endpoint: str | None = None, bearer: str | None = None, timeout: float = 30,
                 tls: bool | None = None, ca: str | None = None, insecure_token: bool | None = None):
        from . import tls as tls_

        env = os.environ
        ca = ca or env.get("VIDTUNE_TLS_CA_FILE") or None
        secure = bool(ca) or (env.get("VIDTUNE_TLS") == "1" if tls is None else tls)
        allow = env.get("VIDTUNE_ALLOW_INSECURE_TOKEN") == "1" if insecure_token is None else insecure_token
        self.service = service
        self.endpoint = endpoint_for(service, endpoint)
        t = token(bearer)
        tls_.check_token_transport(self.endpoint, secure, bool(t), allow)
        self.channel = tls_.client_channel(self.endpoint, secure, ca, env.get("VIDTUNE_TLS_CLIENT_CERT_FILE"),
                                           env.get("VIDTUNE_TLS_CLIENT_KEY_FILE"))
        self.metadata = [("authorization", f"Bearer {t}")] if t else []
        self.timeout = timeout

    def stub(self, stub_cls):
        return stub_cls(self.channel)

    def jobs(self):
        from vidtune.v1 import jobs_pb2_grpc

        return jobs_pb2_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def job_dict(job) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(job, preserving_proto_field_name=True)


def watch(client: ServiceClient, job_id: str, show_bar: bool = True, out=None):
    """Follow a job to its end with a progress bar (percent, ETA, message); return the final Job message."""
    from vidtune.v1 import jobs_pb2

    import time

    last, retries = None, 0
    with CliProgress(job_id, enabled=show_bar, out=out) as bar:
        while last is None or last.state not in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED):
            try:
                for job in client.jobs().WatchJob(jobs_pb2.WatchJobRequest(id=job_id), metadata=client.metadata):
                    last, retries = job, 0
                    p = job.progress
                    eta = f" eta {p.eta_seconds:.0f}s" if p.eta_seconds >= 0 and job.state == jobs_pb2.RUNNING else ""
                    bar(p.done, p.total, f"{jobs_pb2.JobState.Name(job.state)}{eta} {p.message}")
                if last is None:
                    break
            except grpc.RpcError as e:
                # A replica going away (a rolling update) ends the stream: follow the job on the next one.
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or retries >= 30:
                    raise
                retries += 1
                time.sleep(min(2.0, 0.2 * retries))
    if last is None:
        raise FailedPrecondition(f"job {job_id}: the watch stream ended without a state")
    return last


def rpc_error_text(e: grpc.RpcError) -> str:
    return f"{e.code().name}: {e.details()}"


# --------------------------------------------------------------------------- shared CLI pieces
def add_client_args(parser) -> None:
    parser.add_argument("--endpoint", help="host:port of the service (default: env, local stack, default port)")
    parser.add_argument("--token", help="bearer token (default: VIDTUNE_TOKEN_FILE, VIDTUNE_TOKEN, local stack)")
    parser.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    parser.add_argument("--tls", action="store_true", default=None,
                        help="connect with TLS (default: VIDTUNE_TLS=1, or on when --ca is given)")
    parser.add_argument("--ca", help="CA certificate file to verify the service (default: VIDTUNE_TLS_CA_FILE)")
    parser.add_argument("--insecure-token", action="store_true", default=None,
                        help="send the token over plaintext to a non-loopback host (a trusted network only)")


def submit_and_follow(service: str, args, submit) -> int:
    """Call `submit(client)` (which returns a Job), print its id, and with --watch follow it to the end."""
    try:
        client = ServiceClient(service, args.endpoint, args.token, tls=args.tls, ca=args.ca,
                               insecure_token=args.insecure_token)
    except FailedPrecondition as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with client:
        try:
            job = submit(client)
        except grpc.RpcError as e:
            print(f"error: {rpc_error_text(e)}", file=sys.stderr)
            return 2
        print(f"submitted {job.id}", file=sys.stderr)
        if not getattr(args, "watch", False):
            print(job.id)
            return 0
        job = watch(client, job.id)
        print(json.dumps(job_dict(job), ensure_ascii=False, indent=2))
        return 0 if job.state == 3 else 1  # 3 = SUCCEEDED


class CliProgress:
    """Progress from (done, total, message) callbacks: a redrawn bar on a terminal; in logs and CI, one
    line at each tenth of the way, so a piped run stays readable."""

    def __init__(self, desc: str, unit: str = "item", enabled: bool = True, out=None):
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.out = out or sys.stderr
        self.bar = None
        self._tenth = -1

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        if not self.out.isatty():
            tenth = int(10 * done / total) if total else -1
            if tenth != self._tenth:
                self._tenth = tenth
                share = f"{done}/{total} {self.unit}s ({100 * done / total:.0f}%)" if total else ""
                print(f"{self.desc}: {share} {message[:100]}".rstrip(), file=self.out, flush=True)
            return
        from tqdm import tqdm

        if self.bar is None and total:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.out, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.total = total or self.bar.total
            self.bar.n = done
            self.bar.set_postfix_str(message[:60], refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
