"""gRPC bootstrap shared by every service: health, reflection, bearer-token auth, error mapping,
the JobService over the service's JobManager, structured logs and a graceful stop on SIGTERM."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import tls
from .errors import InvalidArgument, VidtuneError
from .jobs import JobManager
from .settings import jobs_root
from .access import service_policy
from .storage import Storage

log = logging.getLogger("vidtune.server")

DEFAULT_PORTS = {"transcode": 50051, "quality": 50052, "train": 50053, "evaluate": 50054}


# --------------------------------------------------------------------------- logging
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key in ("service", "job_id", "method", "code", "duration_ms", "peer"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """JSON lines for machines (VIDTUNE_LOG_FORMAT=json, the default in containers), text for people."""
    level = (level or os.environ.get("VIDTUNE_LOG_LEVEL", "INFO")).upper()
    fmt = fmt or os.environ.get("VIDTUNE_LOG_FORMAT", "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --------------------------------------------------------------------------- auth
def load_token(env: dict | None = None) -> str | None:
    """The bearer token from VIDTUNE_TOKEN_FILE (a mounted Secret) or VIDTUNE_TOKEN; None disables auth."""
    env = os.environ if env is None else env
    path = env.get("VIDTUNE_TOKEN_FILE")
    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise InvalidArgument(f"token file {path} is empty")
        return token
    return env.get("VIDTUNE_TOKEN") or None


# Health and reflection stay open so probes and tooling work without the token.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_PREFIXES):
            return continuation(details)
        meta = dict(details.invocation_metadata or ())
        import hmac

        if hmac.compare_digest(meta.get("authorization", ""), self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny_unary


class AccessLogInterceptor(grpc.ServerInterceptor):
    """One structured log line per call: method, status code, duration, peer. Health checks (probes
    every few seconds) log at DEBUG."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        method = details.method
        level = logging.DEBUG if method.startswith(_OPEN_PREFIXES) else logging.INFO

        def done(context, t0: float) -> None:
            code = getattr(context.code() or grpc.StatusCode.OK, "name", "UNKNOWN")
            ms = round(1000 * (time.monotonic() - t0), 1)
            log.log(level, "%s %s %.1f ms", method, code, ms,
                    extra={"method": method, "code": code, "duration_ms": ms, "peer": context.peer()})

        if handler.response_streaming:
            def stream(request, context):
                t0 = time.monotonic()
                try:
                    yield from handler.unary_stream(request, context)
                finally:
                    done(context, t0)
            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)

        def unary(request, context):
            t0 = time.monotonic()
            try:
                return handler.unary_unary(request, context)
            finally:
                done(context, t0)
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


# --------------------------------------------------------------------------- errors
def _abort(context, exc: BaseException, method: str):
    if isinstance(exc, VidtuneError):
        code = getattr(grpc.StatusCode, exc.code)
        context.abort(code, str(exc))
    log.exception("unexpected error in %s", method)
    context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def rpc(fn: Callable) -> Callable:
    """Decorate a unary servicer method: vidtune errors become their gRPC status with a clear message."""
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except grpc.RpcError:
            raise
        except Exception as e:  # noqa: BLE001 - every error becomes a status, never a stack trace
            if _is_abort(e):
                raise
            _abort(context, e, fn.__name__)
    return wrapper


def rpc_stream(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            yield from fn(self, request, context)
        except Exception as e:  # noqa: BLE001
            if _is_abort(e):
                raise
            _abort(context, e, fn.__name__)
    return wrapper


def _is_abort(e: BaseException) -> bool:
    # context.abort raises a bare Exception subclass private to grpc; let it through untouched.
    return type(e).__module__.startswith("grpc")


# --------------------------------------------------------------------------- job records <-> protos
def record_to_proto(record: dict):
    from vidtune.v1 import jobs_pb2

    msg = jobs_pb2.Job(id=record["id"], service=record["service"], kind=record["kind"],
                       state=jobs_pb2.JobState.Value(record["state"]), backend=record.get("backend", ""),
                       attempt=int(record.get("attempt", 0)), labels=record.get("labels") or {})
    msg.spec.update(_jsonable(record.get("spec") or {}))
    msg.result.update(_jsonable(record.get("result") or {}))
    p = record.get("progress") or {}
    msg.progress.done, msg.progress.total = int(p.get("done", 0)), int(p.get("total", 0))
    msg.progress.percent, msg.progress.eta_seconds = float(p.get("percent", 0)), float(p.get("eta_seconds", -1))
    msg.progress.message = p.get("message", "")
    if record.get("error"):
        msg.error.code, msg.error.message = int(record["error"]["code"]), record["error"]["message"]
    for field_name in ("created", "started", "finished"):
        if record.get(field_name):
            getattr(msg, field_name).FromJsonString(record[field_name].replace("+00:00", "Z"))
    return msg


def _jsonable(obj) -> dict:
    return json.loads(json.dumps(obj, default=str))


def proto_to_dict(msg) -> dict:
    """A request message as a plain spec dict (field names as in the .proto, defaults included)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class JobServicer:
    """vidtune.v1.JobService over one service's JobManager."""

    def __init__(self, manager: JobManager):
        self.manager = manager

    @rpc
    def GetJob(self, request, context):
        return record_to_proto(self.manager.get(request.id))

    @rpc_stream
    def WatchJob(self, request, context):
        for rec in self.manager.watch(request.id):
            if not context.is_active():
                return
            yield record_to_proto(rec)

    @rpc
    def CancelJob(self, request, context):
        return record_to_proto(self.manager.cancel(request.id))

    @rpc
    def ListJobs(self, request, context):
        from vidtune.v1 import jobs_pb2

        state = jobs_pb2.JobState.Name(request.state) if request.state else ""
        recs = self.manager.list(kind=request.kind, state=state)
        size = request.page_size or 100
        try:
            start = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument(f"bad page_token {request.page_token!r}") from None
        page = recs[start:start + size]
        nxt = str(start + size) if start + size < len(recs) else ""
        return jobs_pb2.ListJobsResponse(jobs=[record_to_proto(r) for r in page], next_page_token=nxt)


# --------------------------------------------------------------------------- the server
@dataclass
class ServiceDefinition:
    """What a service contributes: its name, its servicers (add_fn, servicer), and its full proto names."""

    name: str
    servicers: list[tuple[Callable, object]]
    proto_services: list[str]
    manager: JobManager | None = None
    extra_stop: list[Callable[[], None]] = field(default_factory=list)


def job_service(name: str, handlers: dict, servicer_class: type, add_servicer: Callable, proto_service,
                storage: Storage | None = None, job_workers: int = 1, placement=None) -> ServiceDefinition:
    """The definition of a service whose RPCs submit jobs: its JobManager and servicer. With a `placement`,
    its jobs can also run as workers (local subprocess, Kubernetes Job) and a reconciler follows them."""
    from .launchers import service_launchers, start_reconciler

    launchers = service_launchers(name, placement) if placement else {}
    manager = JobManager(name, storage or Storage(policy=service_policy()), jobs_root(), handlers, workers=job_workers, launchers=launchers)
    return ServiceDefinition(name=name, servicers=[(add_servicer, servicer_class(manager))],
                             proto_services=[proto_service.full_name], manager=manager,
                             extra_stop=start_reconciler(manager.store, launchers))


class Server:
    def __init__(self, definition: ServiceDefinition, port: int, host: str = "127.0.0.1",
                 token: str | None = None, max_workers: int = 16):
        from vidtune.v1 import jobs_pb2, jobs_pb2_grpc

        self.definition = definition
        interceptors = [AccessLogInterceptor(), *([AuthInterceptor(token)] if token else [])]
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                                  thread_name_prefix=f"{definition.name}-rpc"),
                                       interceptors=interceptors,
                                       options=[("grpc.so_reuseport", 0)])
        for add_fn, servicer in definition.servicers:
            add_fn(servicer, self.grpc_server)
        names = list(definition.proto_services)
        if definition.manager is not None:
            jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(definition.manager), self.grpc_server)
            names.append(jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server)
        self.service_names = names
        self.port = tls.add_port(self.grpc_server, f"{host}:{port}")  # TLS when VIDTUNE_TLS_* name a cert
        if self.port == 0:
            raise OSError(f"cannot bind {host}:{port}")
        self._stopped = threading.Event()   # stop() has begun
        self._done = threading.Event()      # stop() has finished

    def start(self) -> "Server":
        if self.definition.manager is not None:
            self.definition.manager.start()
        self.grpc_server.start()
        for name in ["", *self.service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on port %d", self.definition.name, self.port, extra={"service": self.definition.name})
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop taking calls, let running calls finish within `grace`, then stop the job workers.

        Jobs still running are left RUNNING in the store and resumed by the next start.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait(grace + 1)
        if self.definition.manager is not None:
            self.definition.manager.stop()
        for fn in self.definition.extra_stop:
            fn()
        log.info("%s stopped", self.definition.name, extra={"service": self.definition.name})
        self._done.set()

    def wait(self) -> None:
        self._done.wait()

    def serve_until_signal(self, grace: float = 10.0) -> None:
        def on_signal(signum, frame):
            log.info("signal %d: stopping gracefully", signum)
            threading.Thread(target=self.stop, args=(grace,), daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        self.wait()
