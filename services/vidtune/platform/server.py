"""gRPC bootstrap shared by every service: health, reflection, bearer-token auth, error mapping,
the JobService over the service's JobManager, structured logs and a graceful stop on SIGTERM."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import inspect
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
from .access import service_policy
from .errors import InvalidArgument, VidtuneError
from .jobs import TERMINAL, JobManager, snapshot_key
from .settings import jobs_root
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


def _wrap(handler: grpc.RpcMethodHandler, around: Callable) -> grpc.RpcMethodHandler:
    """The same method handler with its behaviour replaced by `around(behaviour, streaming)`."""
    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler), ("unary_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_unary", grpc.stream_unary_rpc_method_handler),
             ("stream_stream", grpc.stream_stream_rpc_method_handler))
    for attr, make in kinds:
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            return make(around(behaviour, handler.response_streaming), handler.request_deserializer,
                        handler.response_serializer)
    return handler


async def _run_stream(behaviour, request, context):
    """Yield what a streaming behaviour sends, whether it is an async generator or writes itself."""
    if inspect.isasyncgenfunction(behaviour):
        async for item in behaviour(request, context):
            yield item
    else:
        await behaviour(request, context)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        meta = dict(details.invocation_metadata or ())
        sent = meta.get("authorization", "")
        if hmac.compare_digest(sent.encode() if isinstance(sent, str) else sent, self._expected):
            return handler
        message = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"

        def around(behaviour, streaming):
            if streaming:
                async def deny_stream(request, context):
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                    yield  # pragma: no cover - makes this an async generator
                return deny_stream

            async def deny(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            return deny
        return _wrap(handler, around)


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):
    """At most `per_peer` open streams per client host and `total` in all: a client that opens streams
    without end gets RESOURCE_EXHAUSTED, naming the limit, instead of exhausting the server."""

    def __init__(self, per_peer: int, total: int):
        self.per_peer, self.total = per_peer, total
        self.open: dict[str, int] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not (handler.response_streaming or handler.request_streaming):
            return handler
        limiter = self

        def around(behaviour, streaming):
            async def limited(request, context):
                host = context.peer().rsplit(":", 1)[0]
                if limiter.open.get(host, 0) >= limiter.per_peer or sum(limiter.open.values()) >= limiter.total:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"too many open streams (at most {limiter.per_peer} per client, "
                                        f"{limiter.total} in all: VIDTUNE_MAX_STREAMS_PER_PEER, VIDTUNE_MAX_STREAMS)")
                limiter.open[host] = limiter.open.get(host, 0) + 1
                try:
                    async for item in _run_stream(behaviour, request, context):
                        yield item
                finally:
                    limiter.open[host] -= 1
                    if not limiter.open[host]:
                        del limiter.open[host]
            return limited
        return _wrap(handler, around)


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """One structured log line per call: method, status code, duration, peer. Health checks (probes
    every few seconds) log at DEBUG."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        level = logging.DEBUG if method.startswith(_OPEN_PREFIXES) else logging.INFO

        def done(code: str, peer: str, t0: float) -> None:
            ms = round(1000 * (time.monotonic() - t0), 1)
            log.log(level, "%s %s %.1f ms", method, code, ms,
                    extra={"method": method, "code": code, "duration_ms": ms, "peer": peer})

        def around(behaviour, streaming):
            if streaming:
                # A stream's context must not be touched once the call is over (its generator may be closed
                # after the server let go of the call), so the code is taken while the call is alive.
                async def stream(request, context):
                    t0, peer, code = time.monotonic(), context.peer(), "OK"
                    try:
                        async for item in _run_stream(behaviour, request, context):
                            yield item
                    except (asyncio.CancelledError, GeneratorExit):
                        code = "CANCELLED"
                        raise
                    except BaseException:
                        code = _code_name(context.code()) if context.code() is not None else "UNKNOWN"
                        raise
                    finally:
                        done(code, peer, t0)
                return stream

            async def unary(request, context):
                t0 = time.monotonic()
                try:
                    return await behaviour(request, context)
                finally:
                    done(_code_name(context.code()), context.peer(), t0)
            return unary
        return _wrap(handler, around)


def _code_name(code) -> str:
    """aio contexts report the code as a StatusCode, as its number, or None (OK)."""
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


# --------------------------------------------------------------------------- errors
def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place an exception becomes a gRPC status: vidtune errors carry theirs, bad numbers, YAML
    and enum values are the caller's mistake, an unreachable store is UNAVAILABLE, the rest INTERNAL."""
    import yaml

    if isinstance(exc, VidtuneError):
        return getattr(grpc.StatusCode, exc.code), str(exc)
    if isinstance(exc, yaml.YAMLError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"not valid YAML: {' '.join(str(exc).split())[:300]}"
    log.error("unexpected error: %s", exc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


# Blocking work of unary RPCs (store reads and writes, validation) runs on this bounded pool; streams
# and health checks never need one of its threads.
_BLOCKING_THREADS = int(os.environ.get("VIDTUNE_RPC_THREADS", "16"))
_blocking_pool = futures.ThreadPoolExecutor(max_workers=_BLOCKING_THREADS, thread_name_prefix="vidtune-rpc")


async def run_blocking(fn: Callable, *args):
    return await asyncio.get_running_loop().run_in_executor(_blocking_pool, functools.partial(fn, *args))


def rpc(fn: Callable) -> Callable:
    """Decorate a servicer method written as plain blocking code: it runs on the RPC thread pool, and any
    error becomes its status with a clear message (see `status_of`)."""
    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await run_blocking(fn, self, request, context)
        except Exception as e:  # noqa: BLE001 - every error becomes a status, never a stack trace
            if _is_abort(e):
                raise
            await context.abort(*status_of(e))
    return wrapper


def _is_abort(e: BaseException) -> bool:
    # context.abort raises an exception private to grpc; let it through untouched.
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
    """A request message as a plain spec dict (field names as in the .proto, defaults included); a number
    that is not finite is refused here, before JSON turns it into a string."""
    _refuse_non_finite(msg)
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _refuse_non_finite(msg, path: str = "") -> None:
    import math

    for fd, value in msg.ListFields():
        name = f"{path}{fd.name}"
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                continue
            for sub in (value if fd.is_repeated else [value]):
                _refuse_non_finite(sub, name + ".")
        elif fd.cpp_type in (fd.CPPTYPE_FLOAT, fd.CPPTYPE_DOUBLE):
            for v in (value if fd.is_repeated else [value]):
                if not math.isfinite(v):
                    raise InvalidArgument(f"{name}: {v} is not a finite number")


class JobServicer:
    """vidtune.v1.JobService over one service's JobManager."""

    def __init__(self, manager: JobManager):
        self.manager = manager
        self._changed: dict[str, list[asyncio.Event]] = {}   # job id -> one event per open stream
        self._loop: asyncio.AbstractEventLoop | None = None
        manager.add_listener(self._on_change)

    def _on_change(self, record: dict) -> None:
        # From a worker thread: wake the streams watching this job.
        loop = self._loop
        if loop is not None and record["id"] in self._changed:
            loop.call_soon_threadsafe(self._wake, record["id"])

    def _wake(self, job_id: str) -> None:
        for event in self._changed.get(job_id, ()):
            event.set()

    @rpc
    def GetJob(self, request, context):
        return record_to_proto(self.manager.get(request.id))

    async def WatchJob(self, request, context):
        """Streams the job as it changes, holding no thread: records come from this process's runner or
        the index the scanner keeps current. Ends at a terminal state or when the client goes away."""
        self._loop = asyncio.get_running_loop()
        try:
            record = await run_blocking(self.manager.get, request.id)
        except Exception as e:  # noqa: BLE001
            if _is_abort(e):
                raise
            await context.abort(*status_of(e))
        event = asyncio.Event()
        self._changed.setdefault(request.id, []).append(event)
        last = None
        try:
            while True:
                key = snapshot_key(record)
                if key != last:
                    last = key
                    yield record_to_proto(record)
                if record["state"] in TERMINAL:
                    return
                event.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), self.manager.poll_interval)
                record = self.manager.get_cached(request.id) or record
        finally:
            events = self._changed.get(request.id, [])
            events.remove(event)
            if not events:
                self._changed.pop(request.id, None)

    @rpc
    def CancelJob(self, request, context):
        return record_to_proto(self.manager.cancel(request.id))

    @rpc
    def ListJobs(self, request, context):
        from vidtune.v1 import jobs_pb2

        if request.state not in jobs_pb2.JobState.values():
            raise InvalidArgument(f"state: {request.state} is not a JobState")
        if request.page_size < 0 or request.page_size > 1000:
            raise InvalidArgument(f"page_size: {request.page_size} is not in 0..1000")
        state = jobs_pb2.JobState.Name(request.state) if request.state else ""
        records, token = self.manager.list(kind=request.kind, state=state, labels=dict(request.labels),
                                           page_size=request.page_size or 100, page_token=request.page_token)
        return jobs_pb2.ListJobsResponse(jobs=[record_to_proto(r) for r in records], next_page_token=token)


# --------------------------------------------------------------------------- the server
@dataclass
class ServiceDefinition:
    """What a service contributes: its name, its servicers (add_fn, servicer), and its full proto names."""

    name: str
    servicers: list[tuple[Callable, object]]
    proto_services: list[str]
    manager: JobManager | None = None
    extra_stop: list[Callable[[], None]] = field(default_factory=list)


def job_service(name: str, kinds: list, servicer_base: type, add_servicer: Callable, proto_service,
                storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    """The definition of a service whose RPCs submit jobs, from its job kinds' declarations: its
    JobManager and servicer. When a kind says where its workers run (`placement`), the service's jobs can
    also run as workers (local subprocess, Kubernetes Job) and a reconciler follows them."""
    from .kinds import handlers, placement_of, submit_servicer
    from .launchers import service_launchers, start_reconciler

    launchers = service_launchers(name, placement_of(kinds)) if any(k.placement for k in kinds) else {}
    manager = JobManager(name, storage or Storage(policy=service_policy()), jobs_root(), handlers(kinds), workers=job_workers,
                         launchers=launchers)
    return ServiceDefinition(name=name, servicers=[(add_servicer, submit_servicer(servicer_base, kinds)(manager))],
                             proto_services=[proto_service.full_name], manager=manager,
                             extra_stop=start_reconciler(manager.store, launchers))


# The health service name that stays SERVING while the process runs (the liveness probe's): readiness
# (the service names) also needs the object store, and a store outage must not restart every pod.
LIVENESS = "vidtune.v1.Liveness"


class Server:
    """One service's gRPC server on grpc.aio, in a thread of its own with its event loop: streams hold no
    thread, so health, reflection and unary calls answer however many Watch streams are open."""

    def __init__(self, definition: ServiceDefinition, port: int, host: str = "127.0.0.1",
                 token: str | None = None, store_check_interval: float = 2.0):
        self.definition = definition
        self.host, self.requested_port, self.token = host, port, token
        self.store_check_interval = store_check_interval
        self.port = 0
        self.store_ok = True
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"{definition.name}-grpc", daemon=True)
        self._started = threading.Event()   # start() has finished
        self._stopped = threading.Event()   # stop() has begun
        self._done = threading.Event()      # stop() has finished
        self._tasks: list[asyncio.Task] = []

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Close the streams' generators here, on their loop, before the loop goes.
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    # -- building (on the loop)
    async def _build(self) -> None:
        from grpc_health.v1 import _async as health_async

        from vidtune.v1 import jobs_pb2, jobs_pb2_grpc

        limits = StreamLimitInterceptor(int(os.environ.get("VIDTUNE_MAX_STREAMS_PER_PEER", "256")),
                                        int(os.environ.get("VIDTUNE_MAX_STREAMS", "4096")))
        interceptors = [AccessLogInterceptor(), *([AuthInterceptor(self.token)] if self.token else []), limits]
        self.grpc_server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.so_reuseport", 0),
            # Find clients that vanished without closing their streams.
            ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_receive_message_length", int(os.environ.get("VIDTUNE_MAX_REQUEST_BYTES", 4 << 20)))])
        for add_fn, servicer in self.definition.servicers:
            add_fn(servicer, self.grpc_server)
        names = list(self.definition.proto_services)
        if self.definition.manager is not None:
            jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.definition.manager), self.grpc_server)
            names.append(jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name)
        self.health = health_async.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server)
        self.service_names = names
        self.port = tls.add_port(self.grpc_server, f"{self.host}:{self.requested_port}")  # TLS when VIDTUNE_TLS_* name a cert
        if self.port == 0:
            raise OSError(f"cannot bind {self.host}:{self.requested_port}")
        await self.grpc_server.start()
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self.store_ok = await self._store_reachable()
        if self.definition.manager is not None:
            self.definition.manager.store_ok = self.store_ok
        await self._set_health(self.store_ok)
        self._tasks.append(asyncio.ensure_future(self._watch_store()))

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def _store_reachable(self) -> bool:
        manager = self.definition.manager
        if manager is None or not manager.store.root.startswith("s3://"):
            return True
        return await asyncio.get_running_loop().run_in_executor(None, manager.storage.reachable, 1.5)

    async def _watch_store(self) -> None:
        """Readiness follows the object store: NOT_SERVING (and Submit UNAVAILABLE) while it is away."""
        while True:
            await asyncio.sleep(self.store_check_interval)
            ok = await self._store_reachable()
            if ok != self.store_ok:
                self.store_ok = ok
                if self.definition.manager is not None:
                    self.definition.manager.store_ok = ok
                log.warning("object store %s", "reachable again: serving" if ok else "unreachable: NOT_SERVING")
                await self._set_health(ok)

    def _on_loop(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- life cycle (from any thread)
    def start(self) -> "Server":
        """Bind and answer first (probes, reflection), then start the jobs: their first scan may wait on
        the store."""
        try:
            self._thread.start()
            self._on_loop(self._build(), timeout=30)
            if self.definition.manager is not None and not self._stopped.is_set():
                self.definition.manager.start()
        finally:
            self._started.set()
        log.info("%s serving on port %d", self.definition.name, self.port, extra={"service": self.definition.name})
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Drain: report NOT_SERVING, stop taking jobs, let running items finish and hand unfinished jobs
        back as QUEUED within `grace`, then close the server (open streams end) and the job workers."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._started.wait(60)  # a SIGTERM during start-up: let the start finish, then drain
        manager = self.definition.manager
        try:
            self._on_loop(self.health.enter_graceful_shutdown(), timeout=5)
            if manager is not None:
                manager.draining = True
                manager.drain(max(1.0, grace - 2.0))
            for task in self._tasks:
                self._loop.call_soon_threadsafe(task.cancel)
            self._on_loop(self.grpc_server.stop(1.0), timeout=10)
        finally:
            if manager is not None:
                manager.stop()
            for fn in self.definition.extra_stop:
                fn()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            log.info("%s stopped", self.definition.name, extra={"service": self.definition.name})
            self._done.set()

    def wait(self) -> None:
        self._done.wait()

    def serve_until_signal(self, grace: float = 10.0) -> None:
        def on_signal(signum, frame):
            log.info("signal %d: draining for up to %.0f s", signum, grace)
            threading.Thread(target=self.stop, args=(grace,), daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        self.wait()
