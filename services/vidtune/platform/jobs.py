"""Job records, their state machine, leases, and the runner that executes them.

A record is JSON in the object store at `<jobs root>/<service>/<id>.json`, so a restarted service finds
its jobs again. Exactly one runner works on a job at a time, across service replicas, worker subprocesses
and pods: the runner holds a *lease* written inside the record (holder, expiry), and every write of the
record is a compare-and-swap against the version that runner last wrote (S3 If-Match / If-None-Match).
A second replica cannot take a job whose lease is alive, and a runner whose lease was taken over (it
stalled past the expiry) fails its next write, stops, and never overwrites the new runner's record.

Other parties never write the record: a cancel request is a marker object (`<id>.cancel`) that the
runner polls, and what a launcher or the Kubernetes reconciler observes goes to `<id>.observed.json`.

On SIGTERM a service drains: it stops taking jobs, lets running items finish within the grace period,
and hands each running job back as QUEUED with its lease released, so the next replica picks it up at
once. A job is never FAILED because its process was stopped.

Handlers are plain functions `handler(ctx: JobContext) -> dict` that know nothing of gRPC: the dict
they return becomes the job's result. Work items must be idempotent (outputs keyed by input and
settings, existing outputs skipped) so a resumed job neither loses nor repeats work.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import posixpath
import queue
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc

from .errors import (Conflict, FailedPrecondition, InvalidArgument, JobCancelled, JobInterrupted, NotFound,
                     Unavailable, status_code_name)
from .limits import limits
from .storage import Storage, join

log = logging.getLogger("vidtune.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# The only transitions a record may take; anything else is a bug in the caller.
TRANSITIONS = {
    QUEUED: {RUNNING, CANCELLED, FAILED},
    RUNNING: {SUCCEEDED, FAILED, CANCELLED, QUEUED},  # RUNNING -> QUEUED: handed back (drain, lost runner)
    SUCCEEDED: set(), FAILED: set(), CANCELLED: set(),
}

Handler = Callable[["JobContext"], dict]


def grpc_code(name: str) -> int:
    """The number of a grpc.StatusCode name (INTERNAL for a name gRPC does not know)."""
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)
    return code.value[0]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _parse_iso(value: str | None) -> float:
    return dt.datetime.fromisoformat(value).timestamp() if value else 0.0


def lease_seconds() -> float:
    """How long a runner's lease lasts without renewal (renewed every third of it)."""
    return float(os.environ.get("VIDTUNE_LEASE_SECONDS", "30"))


def runner_id() -> str:
    """Who holds a lease: host (the pod name on a cluster), process and a nonce for this process."""
    return f"{socket.gethostname()}/{os.getpid()}/{_NONCE}"


_NONCE = secrets.token_hex(3)

# A worker that handed its job back (SIGTERM: a drain, a rolling update) exits with this (EX_TEMPFAIL): not a
# failure, so a Kubernetes Job's podFailurePolicy ignores it and its retry continues the job.
HANDED_BACK_EXIT_CODE = 75

# A job id names its service, so `vidtune jobs get ID` knows where to ask.
ID_PREFIXES = {"transcode": "tc", "quality": "qa", "train": "tn", "evaluate": "ev"}


def new_job_id(service: str) -> str:
    # Sortable by creation time, unique without coordination.
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{ID_PREFIXES.get(service, service[:2])}-{stamp}-{secrets.token_hex(3)}"


def service_of(job_id: str) -> str | None:
    prefix = job_id.split("-", 1)[0]
    return next((svc for svc, p in ID_PREFIXES.items() if p == prefix), None)


def new_record(service: str, kind: str, spec: dict, backend: str = "inprocess",
               labels: dict | None = None) -> dict:
    return {
        "id": new_job_id(service), "service": service, "kind": kind, "spec": spec, "state": QUEUED,
        "progress": {"done": 0, "total": 0, "percent": 0.0, "eta_seconds": -1.0, "message": "queued"},
        "result": {}, "error": None, "backend": backend, "attempt": 0,
        "created": now_iso(), "started": None, "finished": None, "labels": dict(labels or {}),
        "lease": None, "revision": 0,
    }


def transition(record: dict, state: str) -> dict:
    cur = record["state"]
    if state not in TRANSITIONS[cur]:
        raise FailedPrecondition(f"job {record['id']} is {cur} and cannot become {state}")
    record["state"] = state
    if state == RUNNING:
        record["started"] = record["started"] or now_iso()
        record["attempt"] = int(record.get("attempt", 0)) + 1
    if state in TERMINAL:
        record["finished"] = now_iso()
    return record


_URI_IN_TEXT = re.compile(r"s3://[^\s'\"]+")


def spec_problems(spec, jobs_root: str, path: str = "") -> list[str]:
    """What no request may carry, whatever its kind: a URI into the job records' prefix (a report aimed at
    a record would replace it) and numbers that are not finite. Looks into nested fields and into text
    (a YAML config) for s3:// URIs."""
    problems = []
    if isinstance(spec, dict):
        for k, v in spec.items():
            problems += spec_problems(v, jobs_root, f"{path}.{k}" if path else str(k))
    elif isinstance(spec, (list, tuple)):
        for i, v in enumerate(spec):
            problems += spec_problems(v, jobs_root, f"{path}[{i}]")
    elif isinstance(spec, float) and not math.isfinite(spec):
        problems.append(f"{path}: {spec} is not a finite number")
    elif isinstance(spec, str):
        root = _normal(jobs_root)
        for uri in _URI_IN_TEXT.findall(spec) + ([spec] if spec and not spec.startswith("s3://") else []):
            target = _normal(uri)
            if target == root or target.startswith(root + "/"):
                problems.append(f"{path}: {uri} is inside the job records' prefix {jobs_root}; choose another place")
    return problems


def _normal(uri: str) -> str:
    """A URI or path with '.', '..' and doubled slashes resolved, for prefix comparisons."""
    if uri.startswith("s3://"):
        return "s3://" + posixpath.normpath("/" + uri[5:]).lstrip("/")
    return os.path.normpath(os.path.abspath(uri)) if uri else uri


def lease_alive(record: dict, now: float | None = None) -> bool:
    lease = record.get("lease") or {}
    return bool(lease) and _parse_iso(lease.get("expires")) > (time.time() if now is None else now)


def check_record(record, job_id: str | None = None) -> dict:
    """A record read from the store, or FailedPrecondition when the object is not one (corrupt, foreign)."""
    if not isinstance(record, dict):
        raise FailedPrecondition("not a job record (not a JSON object)")
    missing = [k for k in ("id", "service", "kind", "state", "spec", "progress") if k not in record]
    if missing:
        raise FailedPrecondition(f"not a job record (no {', '.join(missing)})")
    if record["state"] not in STATES:
        raise FailedPrecondition(f"not a job record (state {record['state']!r})")
    if job_id is not None and record["id"] != job_id:
        raise FailedPrecondition(f"record names job {record['id']!r}, not {job_id!r}")
    return record


class ProgressMeter:
    """done/total -> percent and an ETA from the rate since this attempt started."""

    def __init__(self, done0: int = 0):
        self.t0 = time.monotonic()
        self.done0 = done0

    def fill(self, done: int, total: int, message: str) -> dict:
        percent = 100.0 * done / total if total else 0.0
        eta = -1.0
        rate_done = done - self.done0
        elapsed = time.monotonic() - self.t0
        if total and rate_done > 0 and elapsed > 0:
            eta = max(0.0, (total - done) * elapsed / rate_done)
        elif total and done >= total:
            eta = 0.0
        return {"done": int(done), "total": int(total), "percent": round(percent, 2),
                "eta_seconds": round(eta, 1), "message": message}


class JobStore:
    """Records in the object store (or a local directory) below `root`, written only by compare-and-swap."""

    def __init__(self, storage: Storage, root: str, service: str):
        self.storage, self.root, self.service = storage, root, service

    def prefix(self) -> str:
        return join(self.root, self.service) + "/"

    def uri(self, job_id: str) -> str:
        if not job_id or "/" in job_id or job_id.startswith(".") or len(job_id) > 128:
            raise InvalidArgument(f"bad job id {job_id!r}")
        return join(self.root, self.service, f"{job_id}.json")

    def cancel_marker(self, job_id: str) -> str:
        return join(self.root, self.service, f"{job_id}.cancel")

    def observed_uri(self, job_id: str) -> str:
        return join(self.root, self.service, f"{job_id}.observed.json")

    def load_versioned(self, job_id: str) -> tuple[dict, str]:
        try:
            data, version = self.storage.read_versioned(self.uri(job_id))
        except NotFound:
            raise NotFound(f"no {self.service} job {job_id!r}") from None
        try:
            record = json.loads(data)
        except ValueError:
            raise FailedPrecondition(f"job record {self.uri(job_id)} is not JSON") from None
        try:
            return check_record(record, job_id), version
        except FailedPrecondition as e:
            raise FailedPrecondition(f"job record {self.uri(job_id)}: {e}") from None

    def load(self, job_id: str) -> dict:
        return self.load_versioned(job_id)[0]

    def create(self, record: dict) -> str:
        """Store a new record; Conflict when the id exists. Returns its version."""
        return self.storage.write_if(self.uri(record["id"]), _dump(record), None)

    def replace(self, record: dict, version: str) -> str:
        """Write `record` over `version`; Conflict when someone wrote it since. Returns the new version."""
        record["revision"] = int(record.get("revision", 0)) + 1  # every write differs, even with equal content
        return self.storage.write_if(self.uri(record["id"]), _dump(record), version)

    def ids(self, since: str = "") -> list[str]:
        """Every job id of this service, newest first (ids sort by creation time); with `since` (an id or
        an id's leading part), only the ids that sort after it."""
        start = self.prefix() + since if since else ""
        names = (u.rsplit("/", 1)[-1] for u in self.storage.list(self.prefix(), recursive=False, start_after=start))
        ids = [n[:-5] for n in names if n.endswith(".json") and not n.endswith(".observed.json")]
        return sorted((i for i in ids if not i.startswith(".")), reverse=True)

    def all(self) -> list[dict]:
        """Every readable record, oldest first; a corrupt or foreign object is skipped with a warning."""
        out = []
        for job_id in self.ids():
            record = self.try_load(job_id)
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: r.get("created") or "")

    def try_load(self, job_id: str) -> dict | None:
        try:
            return self.load(job_id)
        except (FailedPrecondition, NotFound, InvalidArgument) as e:
            log.warning("skipping %s: %s", job_id, e)
            return None

    def request_cancel(self, job_id: str) -> None:
        self.storage.write_text(self.cancel_marker(job_id), now_iso())

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(self.cancel_marker(job_id))

    def observe(self, job_id: str, **facts) -> None:
        """Record what a launcher or the cluster says about a job, beside (never inside) its record."""
        self.storage.write_text(self.observed_uri(job_id), json.dumps(facts, ensure_ascii=False, default=str),
                                "application/json")

    def observed(self, job_id: str) -> dict:
        try:
            return json.loads(self.storage.read_text(self.observed_uri(job_id)))
        except (NotFound, ValueError):
            return {}


def _dump(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- leases
class LeaseHolder:
    """The runner's handle on one record: it alone writes the record while it holds the lease.

    Every write renews the lease and is a compare-and-swap against the version this holder last wrote. A
    background thread renews it every third of its length, so a long work item never lets it lapse; while
    the store is unreachable the renewal waits, and goes through afterwards unless another runner took
    the job meanwhile, in which case `lost` is set and nothing more is written.
    """

    def __init__(self, store: JobStore, record: dict, version: str, holder: str, ttl: float):
        self.store, self.record, self.version, self.holder, self.ttl = store, record, version, holder, ttl
        self.lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def save(self, release: bool = False) -> None:
        with self._lock:
            if self.lost:
                raise JobInterrupted(f"job {self.record['id']}: lease lost to another runner")
            self.record["lease"] = None if release else {"holder": self.holder, "expires": _iso_in(self.ttl)}
            try:
                self.version = self.store.replace(self.record, self.version)
            except Conflict:
                self.lost = True
                log.warning("job %s: lease lost to another runner; stopping", self.record["id"])
                raise JobInterrupted(f"job {self.record['id']}: lease lost to another runner") from None

    def start_renewing(self) -> None:
        def renew() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.save()
                except JobInterrupted:
                    return
                except Exception as e:  # noqa: BLE001 - the store may be away; try again next round
                    log.warning("job %s: lease renewal failed: %s", self.record["id"], e)

        self._renewer = threading.Thread(target=renew, name=f"lease-{self.record['id']}", daemon=True)
        self._renewer.start()

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)


def _iso_in(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def acquire(store: JobStore, job_id: str, holder: str | None = None, ttl: float | None = None) -> LeaseHolder | None:
    """Take the job's lease and mark it RUNNING, or None when it is not this runner's to run (finished,
    cancelled, or leased by a live runner). Atomic: of two runners only one's write lands."""
    holder, ttl = holder or runner_id(), ttl or lease_seconds()
    record, version = store.load_versioned(job_id)
    if record["state"] in TERMINAL:
        return None
    if lease_alive(record) and record["lease"].get("holder") != holder:
        return None
    try:
        if store.cancel_requested(job_id):
            transition(record, CANCELLED)
            record["progress"]["message"] = "cancelled before it started"
            record["lease"] = None
            store.replace(record, version)
            return None
        if record["state"] == RUNNING:  # its runner died without handing it back
            transition(record, QUEUED)
        transition(record, RUNNING)
        record["error"] = None
        record["progress"]["message"] = f"running (attempt {record['attempt']})"
        record["lease"] = {"holder": holder, "expires": _iso_in(ttl)}
        version = store.replace(record, version)
    except Conflict:
        return None  # another runner got there first
    return LeaseHolder(store, record, version, holder, ttl)


# --------------------------------------------------------------------------- a job's own processes
class ChildProcesses:
    """The subprocesses (ffmpeg, ...) one job started, so stopping that job stops them and no other's."""

    def __init__(self):
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> int:
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return len(procs)


class StopSignal:
    """Why a running job must stop: "cancel" (ends CANCELLED) or "drain"/"lease" (handed back QUEUED)."""

    def __init__(self):
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason


@dataclass
class JobContext:
    """What a handler sees: its spec, storage, a scratch directory, progress, cancellation and the
    subprocesses it starts (`ctx.processes`), which stop with the job."""

    record: dict
    storage: Storage
    store: JobStore | None
    scratch: Path
    on_change: Callable[[dict], None] = lambda r: None
    lease: LeaseHolder | None = None
    stop: StopSignal = field(default_factory=StopSignal)
    processes: ChildProcesses = field(default_factory=ChildProcesses)
    save_interval: float = 1.0
    _meter: ProgressMeter = field(default_factory=ProgressMeter)
    _last_save: float = 0.0
    _cancel_checked: float = 0.0

    @property
    def job_id(self) -> str:
        return self.record["id"]

    @property
    def spec(self) -> dict:
        return self.record["spec"]

    @property
    def attempt(self) -> int:
        return int(self.record.get("attempt", 1))

    def progress(self, done: int, total: int, message: str = "", force: bool = False) -> None:
        if done == 0 or self._meter.done0 > done:
            self._meter = ProgressMeter(done)
        self.record["progress"] = self._meter.fill(done, total, message)
        now = time.monotonic()
        if self.lease is not None and (force or now - self._last_save >= self.save_interval
                                       or (total and done >= total)):
            self._last_save = now
            try:
                self.lease.save()
            except JobInterrupted:
                self._stop_now("lease")
        self.on_change(self.record)

    def set_result(self, **values) -> None:
        """Record partial results (e.g. the report URI) before the job ends."""
        self.record["result"].update(values)

    def cancelled(self) -> bool:
        """True when the job must stop taking new work: cancelled, draining, or its lease was lost."""
        if self.stop.reason is None and self.lease is not None and self.lease.lost:
            self._stop_now("lease")
        now = time.monotonic()
        if self.stop.reason is None and self.store is not None and now - self._cancel_checked >= 0.5:
            self._cancel_checked = now
            try:
                if self.store.cancel_requested(self.job_id):
                    self._stop_now("cancel")
            except Unavailable:
                pass  # cannot tell now; the next check asks again
        return self.stop.reason is not None

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise (JobCancelled if self.stop.reason == "cancel" else JobInterrupted)(
                f"job {self.job_id} was {_STOP_WORDS[self.stop.reason]}")

    def _stop_now(self, reason: str) -> None:
        self.stop.set(reason)
        if reason in ("cancel", "lease"):  # nothing of this job may run on; a drain lets items finish
            self.processes.kill_all()


_STOP_WORDS = {"cancel": "cancelled", "drain": "handed back: its service is stopping",
               "lease": "handed back: its lease was taken over"}


def run_in_process(record: dict, handler: Handler, storage: Storage, scratch: Path,
                   progress: Callable[[int, int, str], None] = lambda d, t, m: None) -> dict:
    """Run a job handler here and now, without a stored record (a CLI `run`); errors propagate."""
    def report(rec: dict) -> None:
        p = rec["progress"]
        progress(p["done"], p["total"], p["message"])

    ctx = JobContext(record, storage, None, Path(scratch), report)
    try:
        return {**record["result"], **(handler(ctx) or {})}
    finally:
        ctx.processes.kill_all()


def execute(lease: LeaseHolder, handler: Handler, storage: Storage,
            on_change: Callable[[dict], None] = lambda r: None, stop: StopSignal | None = None) -> dict:
    """Run one leased job until it ends or is handed back, writing its record as it goes."""
    record = lease.record
    stop = stop or StopSignal()
    on_change(record)
    lease.start_renewing()
    try:
        with tempfile.TemporaryDirectory(prefix=f"vt-{record['id']}-") as scratch:
            ctx = JobContext(record, storage, lease.store, Path(scratch), on_change, lease, stop)
            try:
                record["result"].update(handler(ctx) or {})
                transition(record, SUCCEEDED)
                record["progress"]["message"] = "done"
            except Exception as e:  # noqa: BLE001 - the job ends, the service lives on
                _end_after_error(record, e, stop)
            finally:
                ctx.processes.kill_all()
    finally:
        lease.stop_renewing()
    if not lease.lost:
        try:
            lease.save(release=True)
        except JobInterrupted:
            pass
    on_change(record)
    return record


def _end_after_error(record: dict, exc: Exception, stop: StopSignal) -> None:
    if stop.reason in ("drain", "lease") or isinstance(exc, JobInterrupted):
        # Stopped from outside (SIGTERM, a lost lease): whatever the handler raised on the way out is not
        # the job's failure. Back to QUEUED, for the next runner.
        transition(record, QUEUED)
        record["progress"]["message"] = f"requeued: {_STOP_WORDS.get(stop.reason or 'drain')}"
        log.info("job %s handed back (%s)", record["id"], stop.reason or "interrupted")
    elif isinstance(exc, JobCancelled) or stop.reason == "cancel":
        transition(record, CANCELLED)
        record["progress"]["message"] = str(exc) if isinstance(exc, JobCancelled) else "cancelled"
    else:
        code = status_code_name(exc)
        log.error("job %s failed: %s\n%s", record["id"], exc, traceback.format_exc())
        transition(record, FAILED)
        message = f"{type(exc).__name__}: {exc}" if code == "INTERNAL" else str(exc)
        record["error"] = {"code": grpc_code(code), "message": message}
        record["progress"]["message"] = message


# --------------------------------------------------------------------------- the index
class JobIndex:
    """Every record of one service in memory, kept current like an informer cache: a refresh reads only
    records that are new or not finished yet, since a finished record never changes. ListJobs pages
    through it; WatchJob reads it.

    Listing every key costs one request per thousand records and most of an idle replica's CPU at 10,000,
    so a refresh lists only the ids created since the newest known one, less ID_SKEW_SECONDS for replicas
    whose clocks (which stamp the ids) run behind; a full listing every `full_every` seconds (default
    VIDTUNE_FULL_SCAN_SECONDS) catches anything older and drops deleted records."""

    ID_SKEW_SECONDS = 600

    def __init__(self, store: JobStore, read_threads: int = 8, full_every: float | None = None):
        self.store = store
        self.full_every = full_every if full_every is not None else float(os.environ.get("VIDTUNE_FULL_SCAN_SECONDS", "60"))
        self._records: dict[str, dict] = {}
        self._unreadable: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix=f"{store.service}-index")
        self._last_full = -math.inf
        self.filled = threading.Event()

    def _listing_start(self) -> str:
        """The leading part of the ids an incremental refresh lists: the newest known id's time less the
        skew. Empty (a full listing) while nothing is known or an id does not parse."""
        try:
            service, day, hms, _ = max(self._records).rsplit("-", 3)
            stamp = dt.datetime.strptime(f"{day}-{hms}", "%Y%m%d-%H%M%S")
        except ValueError:
            return ""
        return f"{service}-{(stamp - dt.timedelta(seconds=self.ID_SKEW_SECONDS)):%Y%m%d-%H%M%S}"

    def refresh(self) -> None:
        now = time.monotonic()
        with self._lock:
            full = now - self._last_full >= self.full_every or not self._records
            since = "" if full else self._listing_start()
        ids = self.store.ids(since)
        with self._lock:
            unfinished = {i for i, r in self._records.items() if r["state"] not in TERMINAL}
            stale = [i for i in ids if i not in self._records] + sorted(unfinished)
            if since == "":
                listed = set(ids)
                for gone in set(self._records) - listed:
                    del self._records[gone]
                stale = [i for i in stale if i in listed]
                self._last_full = now
        stale = [i for i in dict.fromkeys(stale) if i not in self._unreadable]
        for job_id, record in zip(stale, self._pool.map(self.store.try_load, stale)):
            if record is None:
                self._unreadable.add(job_id)  # warned once; not read again by every scan
            else:
                self.put(record)
        self.filled.set()

    def put(self, record: dict) -> None:
        with self._lock:
            self._records[record["id"]] = record

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            return self._records.get(job_id)

    def unfinished(self) -> list[dict]:
        with self._lock:
            return [r for r in self._records.values() if r["state"] not in TERMINAL]

    def page(self, kind: str = "", state: str = "", labels: dict | None = None, size: int = 100,
             token: str = "") -> tuple[list[dict], str]:
        """Newest first; `token` is the last id of the previous page."""
        with self._lock:
            ids = sorted(self._records, reverse=True)
            out = []
            for job_id in ids:
                if token and job_id >= token:
                    continue
                r = self._records[job_id]
                if (kind and r["kind"] != kind) or (state and r["state"] != state) or \
                        any((r.get("labels") or {}).get(k) != v for k, v in (labels or {}).items()):
                    continue
                out.append(r)
                if len(out) > size:
                    break
        return out[:size], (out[size - 1]["id"] if len(out) > size else "")


# --------------------------------------------------------------------------- the manager
class JobManager:
    """Runs one service's jobs on worker threads, with any number of replicas over one store.

    A scanner thread keeps the index current and queues every in-process job that is QUEUED, or RUNNING
    with an expired lease (its runner died), so a job submitted to one replica, handed back by a draining
    one or left by a killed one is picked up by whichever replica is there. Launchers other than these
    threads (a local subprocess, a Kubernetes Job) are given by `launchers[backend](record)`: they start
    `vidtune worker` elsewhere, which takes the lease itself; this manager then only follows the record.
    """

    def __init__(self, service: str, storage: Storage, jobs_root: str, handlers: dict[str, Handler],
                 workers: int = 1, launchers: dict[str, Callable[[dict], dict | None]] | None = None,
                 poll_interval: float = 1.0, scan_interval: float | None = None, lease_ttl: float | None = None):
        self.service = service
        self.storage = storage
        self.store = JobStore(storage, jobs_root, service)
        self.index = JobIndex(self.store)
        self.handlers = handlers
        self.launchers = launchers or {}
        self.poll_interval = poll_interval
        self.scan_interval = scan_interval or float(os.environ.get("VIDTUNE_SCAN_SECONDS", "2"))
        self.lease_ttl = lease_ttl or lease_seconds()
        self.holder = f"{runner_id()}/{service}-{secrets.token_hex(2)}"  # one per manager, even in one process
        self.draining = False
        self.store_ok = True   # kept current by the server's store check; Submit fails fast while False
        self._queue: queue.Queue = queue.Queue()
        self._queued: set[str] = set()          # ids in the queue or running here
        self._running: dict[str, StopSignal] = {}
        self._live: dict[str, dict] = {}        # records this process is running, newest copy
        self._cond = threading.Condition()
        self._listeners: list[Callable[[dict], None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"{service}-worker-{i}", daemon=True)
                         for i in range(max(1, workers))]
        self._scanner = threading.Thread(target=self._scan_loop, name=f"{service}-scanner", daemon=True)

    # -- life cycle
    def start(self, resume: bool = True) -> None:
        """Start the workers, and (with `resume`) the scanner, whose first scan runs at once in its thread:
        a replica that starts while the store is away answers its probes and picks its jobs up later."""
        for t in self._threads:
            t.start()
        if resume:
            self._scanner.start()

    def drain(self, grace: float = 25.0) -> list[str]:
        """Stop taking jobs; ask running ones to stop at their next item and hand them back as QUEUED.
        Waits up to `grace` seconds; returns the ids that were handed back or still running."""
        self.draining = True
        with self._cond:
            running = dict(self._running)
        for stop in running.values():
            stop.set("drain")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._cond:
                if not self._running:
                    break
                self._cond.wait(0.2)
        with self._cond:
            left = list(self._running)
        if left:
            log.warning("jobs still running after %.0f s of drain: %s", grace, ", ".join(left))
        return list(running)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t.ident is not None:  # a stop can come before the start (SIGTERM during start-up)
                t.join(timeout)

    # -- API used by the gRPC layer and the CLI
    def submit(self, kind: str, spec: dict, backend: str = "inprocess", labels: dict | None = None) -> dict:
        if self.draining:
            raise Unavailable(f"the {self.service} service is stopping; submit again to another replica")
        if not self.store_ok:
            raise Unavailable(f"the object store ({self.storage.config.endpoint}) is unreachable; "
                              "submit again when it is back")
        if kind not in self.handlers:
            raise InvalidArgument(f"{self.service} has no job kind {kind!r}; known: {sorted(self.handlers)}")
        if backend != "inprocess" and backend not in self.launchers:
            raise InvalidArgument(f"backend {backend!r} is not available here; "
                                  f"known: {['inprocess', *sorted(self.launchers)]}")
        problems = spec_problems(spec, self.store.root)
        if problems:
            raise InvalidArgument("; ".join(problems))
        if not self.index.filled.is_set():
            with self.storage.patience(5.0):
                self.index.refresh()
        limits().admit(self.index.unfinished(), backend, self.service)  # RESOURCE_EXHAUSTED when full
        rec = new_record(self.service, kind, spec, backend, labels)
        with self.storage.patience(5.0):  # a caller is waiting: UNAVAILABLE soon rather than a hung call
            self.store.create(rec)  # before launching: the launched worker loads it
        self.index.put(rec)
        if backend == "inprocess":
            self._enqueue(rec["id"])
        else:
            launched = self.launchers[backend](rec) or {}
            self.store.observe(rec["id"], launched=now_iso(), **launched)
            rec = {**rec, "labels": {**rec["labels"], **{k: str(v) for k, v in launched.items()}}}
        log.info("submitted job %s kind=%s backend=%s", rec["id"], kind, backend)
        return rec

    def get(self, job_id: str) -> dict:
        for known in (self._live_copy(job_id), self.index.get(job_id)):
            if known is not None:
                return known
        return self._load(job_id)

    def get_cached(self, job_id: str) -> dict | None:
        """The newest record this process knows without asking the store (its runner's copy, the index)."""
        with self._cond:
            live = self._live.get(job_id)
        return live if live is not None else self.index.get(job_id)

    def list(self, kind: str = "", state: str = "", labels: dict | None = None, page_size: int = 100,
             page_token: str = "") -> tuple[list[dict], str]:
        if not self.index.filled.is_set():
            with self.storage.patience(5.0):  # the scanner has not filled the index yet
                self.index.refresh()
        return self.index.page(kind, state, labels, page_size, page_token)

    def cancel(self, job_id: str) -> dict:
        rec = self.get(job_id)
        if rec["state"] in TERMINAL:
            return rec
        self.store.request_cancel(job_id)
        # A job nobody runs ends now; a running one sees the marker and stops (ctx.cancelled()).
        for _ in range(5):
            rec, version = self.store.load_versioned(job_id)
            if rec["state"] in TERMINAL or lease_alive(rec):
                break
            if rec["state"] == RUNNING:  # its runner died: hand it back first
                transition(rec, QUEUED)
            transition(rec, CANCELLED)
            rec["progress"]["message"] = "cancelled before it started"
            rec["lease"] = None
            try:
                self.store.replace(rec, version)
                break
            except Conflict:
                continue
        self.index.put(rec)
        self._notify(rec)
        return self.get(job_id)

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[dict]:
        """Yield the record each time it changes, ending after a terminal state (for in-process callers;
        the gRPC WatchJob holds no thread and is in server.py)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            rec = self._fresh(job_id)
            snapshot = snapshot_key(rec)
            if snapshot != last:
                last = snapshot
                yield rec
            if rec["state"] in TERMINAL or self._stop.is_set():
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            with self._cond:
                self._cond.wait(self.poll_interval)

    def _fresh(self, job_id: str) -> dict:
        """The newest record: from this process while it runs the job, else from the store."""
        live = self._live_copy(job_id)
        return live if live is not None else self._load(job_id)

    def _live_copy(self, job_id: str) -> dict | None:
        """A copy of the record this process's runner holds, if it runs the job."""
        with self._cond:
            live = self._live.get(job_id)
            return json.loads(json.dumps(live)) if live is not None else None

    def _load(self, job_id: str) -> dict:
        record = self.store.load(job_id)
        self.index.put(record)
        return record

    def add_listener(self, fn: Callable[[dict], None]) -> None:
        """Call `fn(record)` (from a worker thread) whenever a record changes in this process."""
        self._listeners.append(fn)

    # -- scanning, queueing, running
    def _enqueue(self, job_id: str) -> None:
        with self._cond:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
        self._queue.put(job_id)

    def _scan_once(self) -> None:
        self.index.refresh()
        if self.draining:
            return
        for rec in self.index.unfinished():
            if rec.get("backend", "inprocess") != "inprocess" or rec["kind"] not in self.handlers:
                continue
            if rec["state"] == QUEUED or (rec["state"] == RUNNING and not lease_alive(rec)):
                self._enqueue(rec["id"])

    def _scan_loop(self) -> None:
        while True:
            try:
                self._scan_once()
            except Exception as e:  # noqa: BLE001 - the store may be away; the next scan tries again
                log.warning("%s: job scan failed: %s", self.service, e)
            if self._stop.wait(self.scan_interval):
                return

    def _notify(self, record: dict) -> None:
        copy = json.loads(json.dumps(record))
        with self._cond:
            if record["state"] in TERMINAL or record["state"] == QUEUED:
                self._live.pop(record["id"], None)
            else:
                self._live[record["id"]] = copy
            self._cond.notify_all()
        self.index.put(copy)
        for fn in self._listeners:
            fn(copy)

    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                if self.draining:
                    continue
                lease = acquire(self.store, job_id, self.holder, self.lease_ttl)
                if lease is None:
                    self.index.put(self.store.load(job_id))
                    continue
                stop = StopSignal()
                with self._cond:
                    self._running[job_id] = stop
                try:
                    execute(lease, self.handlers[lease.record["kind"]], self.storage, self._notify, stop)
                finally:
                    with self._cond:
                        self._running.pop(job_id, None)
                        self._cond.notify_all()
            except Exception:
                log.exception("job %s could not be run", job_id)
            finally:
                with self._cond:
                    self._queued.discard(job_id)


def snapshot_key(record: dict) -> str:
    """What a watcher is shown changes of (not the lease renewals)."""
    return json.dumps([record["state"], record["progress"], record["result"], record["error"]], sort_keys=True)
