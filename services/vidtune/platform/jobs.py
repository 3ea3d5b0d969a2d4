"""Job records, their state machine, and the runner that executes them.

A record is JSON in the object store at `<jobs root>/<service>/<id>.json`, so a restarted service finds
its jobs again. Whoever runs a job (a thread of the service, a `vidtune worker` subprocess, or a pod)
is the only writer of its record while it runs; a cancel request is a separate marker object
(`<id>.cancel`) that the runner polls, so no two processes ever write the same record.

Handlers are plain functions `handler(ctx: JobContext) -> dict` that know nothing of gRPC: the dict
they return becomes the job's result. Work items must be idempotent (outputs keyed by input and
settings, existing outputs skipped) so a resumed job neither loses nor repeats work.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import secrets
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import FailedPrecondition, InvalidArgument, JobCancelled, NotFound, status_code_name
from .storage import Storage, join

log = logging.getLogger("vidtune.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# The only transitions a record may take; anything else is a bug in the caller.
TRANSITIONS = {
    QUEUED: {RUNNING, CANCELLED, FAILED},
    RUNNING: {SUCCEEDED, FAILED, CANCELLED, QUEUED},  # RUNNING -> QUEUED: requeued after a crash
    SUCCEEDED: set(), FAILED: set(), CANCELLED: set(),
}
GRPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
              "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
              "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
              "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}

Handler = Callable[["JobContext"], dict]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


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
    """Records in the object store (or a local directory) below `root`."""

    def __init__(self, storage: Storage, root: str, service: str):
        self.storage, self.root, self.service = storage, root, service

    def uri(self, job_id: str) -> str:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise InvalidArgument(f"bad job id {job_id!r}")
        return join(self.root, self.service, f"{job_id}.json")

    def cancel_marker(self, job_id: str) -> str:
        return join(self.root, self.service, f"{job_id}.cancel")

    def save(self, record: dict) -> None:
        self.storage.write_text(self.uri(record["id"]), json.dumps(record, ensure_ascii=False),
                                "application/json")

    def load(self, job_id: str) -> dict:
        try:
            return json.loads(self.storage.read_text(self.uri(job_id)))
        except NotFound:
            raise NotFound(f"no {self.service} job {job_id!r}") from None

    def all(self) -> list[dict]:
        out = []
        for uri in self.storage.list(join(self.root, self.service) + "/"):
            if uri.endswith(".json"):
                try:
                    out.append(json.loads(self.storage.read_text(uri)))
                except (ValueError, NotFound):
                    log.warning("skipping unreadable job record %s", uri)
        return sorted(out, key=lambda r: r["created"])

    def request_cancel(self, job_id: str) -> None:
        self.storage.write_text(self.cancel_marker(job_id), now_iso())

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(self.cancel_marker(job_id))


@dataclass
class JobContext:
    """What a handler sees: its spec, storage, a scratch directory, progress and cancellation."""

    record: dict
    storage: Storage
    store: JobStore
    scratch: Path
    on_change: Callable[[dict], None] = lambda r: None
    save_interval: float = 1.0
    _meter: ProgressMeter = field(default_factory=ProgressMeter)
    _last_save: float = 0.0
    _cancel_checked: float = 0.0
    _cancelled: bool = False

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
        if force or now - self._last_save >= self.save_interval or (total and done >= total):
            self._last_save = now
            self.store.save(self.record)
        self.on_change(self.record)

    def set_result(self, **values) -> None:
        """Record partial results (e.g. the report URI) before the job ends."""
        self.record["result"].update(values)

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= 0.5:
            self._cancel_checked = now
            self._cancelled = self.store.cancel_requested(self.job_id)
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job_id} was cancelled")


class LocalJobStore(JobStore):
    """For a handler run by a CLI command in this process: no record is kept, nothing cancels it."""

    def __init__(self, service: str):
        super().__init__(None, "", service)

    def save(self, record: dict) -> None:
        pass

    def cancel_requested(self, job_id: str) -> bool:
        return False


def run_in_process(record: dict, handler: Handler, storage: Storage, scratch: Path,
                   progress: Callable[[int, int, str], None] = lambda d, t, m: None) -> dict:
    """Run a job handler here and now (errors propagate to the caller); returns the job's result."""
    def report(rec: dict) -> None:
        p = rec["progress"]
        progress(p["done"], p["total"], p["message"])

    ctx = JobContext(record, storage, LocalJobStore(record["service"]), Path(scratch), report)
    return {**record["result"], **(handler(ctx) or {})}


def execute(record: dict, handler: Handler, storage: Storage, store: JobStore,
            on_change: Callable[[dict], None] = lambda r: None) -> dict:
    """Run one job to a terminal state, writing its record as it goes. Used by every launcher."""
    if store.cancel_requested(record["id"]):
        transition(record, CANCELLED)
        store.save(record)
        on_change(record)
        return record
    transition(record, RUNNING)
    record["error"] = None
    record["progress"]["message"] = f"running (attempt {record['attempt']})"
    store.save(record)
    on_change(record)
    with tempfile.TemporaryDirectory(prefix=f"vt-{record['id']}-") as scratch:
        ctx = JobContext(record, storage, store, Path(scratch), on_change)
        try:
            result = handler(ctx) or {}
            record["result"].update(result)
            transition(record, SUCCEEDED)
            record["progress"]["message"] = "done"
        except JobCancelled as e:
            transition(record, CANCELLED)
            record["progress"]["message"] = str(e)
        except Exception as e:  # the job fails, the service lives on
            code = status_code_name(e)
            log.error("job %s failed: %s\n%s", record["id"], e, traceback.format_exc())
            transition(record, FAILED)
            record["error"] = {"code": GRPC_CODES.get(code, 13), "message": f"{type(e).__name__}: {e}"
                               if code == "INTERNAL" else str(e)}
    store.save(record)
    on_change(record)
    return record


class JobManager:
    """Queues and runs one service's jobs on worker threads, and resumes unfinished ones at start.

    Launchers other than in-process threads (a local subprocess, a Kubernetes Job) are given by
    `launchers[backend](record)`: they start `vidtune worker` elsewhere, which calls `execute` on the same
    record; this manager then only follows the record in the store.
    """

    def __init__(self, service: str, storage: Storage, jobs_root: str, handlers: dict[str, Handler],
                 workers: int = 1, launchers: dict[str, Callable[[dict], None]] | None = None,
                 poll_interval: float = 1.0):
        self.service = service
        self.storage = storage
        self.store = JobStore(storage, jobs_root, service)
        self.handlers = handlers
        self.launchers = launchers or {}
        self.poll_interval = poll_interval
        self._queue: queue.Queue = queue.Queue()
        self._live: dict[str, dict] = {}       # records this process is running, newest copy
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"{service}-worker-{i}", daemon=True)
                         for i in range(max(1, workers))]

    # -- life cycle
    def start(self, resume: bool = True) -> None:
        if resume:
            self.resume_unfinished()
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)

    def resume_unfinished(self) -> list[str]:
        """Requeue every QUEUED or RUNNING in-process job found in the store (a crash left it there)."""
        resumed = []
        for rec in self.store.all():
            if rec["state"] in (QUEUED, RUNNING) and rec.get("backend", "inprocess") == "inprocess":
                if rec["state"] == RUNNING:
                    transition(rec, QUEUED)
                    rec["progress"]["message"] = "requeued after a restart"
                    self.store.save(rec)
                log.info("resuming job %s (%s)", rec["id"], rec["kind"])
                self._queue.put(rec["id"])
                resumed.append(rec["id"])
        return resumed

    # -- API used by the gRPC layer and the CLI
    def submit(self, kind: str, spec: dict, backend: str = "inprocess", labels: dict | None = None) -> dict:
        if kind not in self.handlers:
            raise InvalidArgument(f"{self.service} has no job kind {kind!r}; known: {sorted(self.handlers)}")
        if backend != "inprocess" and backend not in self.launchers:
            raise InvalidArgument(f"backend {backend!r} is not available here; "
                                  f"known: {['inprocess', *sorted(self.launchers)]}")
        rec = new_record(self.service, kind, spec, backend, labels)
        self.store.save(rec)  # before launching: the launched worker loads it
        if backend == "inprocess":
            self._queue.put(rec["id"])
        else:
            self.launchers[backend](rec)
            self.store.save(rec)  # with what the launcher recorded (pid, Kubernetes Job name)
        log.info("submitted job %s kind=%s backend=%s", rec["id"], kind, backend)
        return rec

    def get(self, job_id: str) -> dict:
        with self._cond:
            live = self._live.get(job_id)
            if live is not None:
                return json.loads(json.dumps(live))
        return self.store.load(job_id)

    def list(self, kind: str = "", state: str = "") -> list[dict]:
        recs = self.store.all()
        return [r for r in recs if (not kind or r["kind"] == kind) and (not state or r["state"] == state)]

    def cancel(self, job_id: str) -> dict:
        rec = self.get(job_id)
        if rec["state"] in TERMINAL:
            return rec
        self.store.request_cancel(job_id)
        if rec["state"] == QUEUED:
            # Not picked up yet: end it now; a runner that picks it up still sees the marker first.
            transition(rec, CANCELLED)
            rec["progress"]["message"] = "cancelled before it started"
            self.store.save(rec)
        return self.get(job_id)

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[dict]:
        """Yield the record each time it changes, ending after a terminal state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            rec = self.get(job_id)
            snapshot = json.dumps([rec["state"], rec["progress"], rec["result"], rec["error"]], sort_keys=True)
            if snapshot != last:
                last = snapshot
                yield rec
            if rec["state"] in TERMINAL or self._stop.is_set():
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            with self._cond:
                self._cond.wait(self.poll_interval)

    # -- worker threads
    def _notify(self, record: dict) -> None:
        with self._cond:
            if record["state"] in TERMINAL:
                self._live.pop(record["id"], None)
            else:
                self._live[record["id"]] = json.loads(json.dumps(record))
            self._cond.notify_all()

    def _work(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                rec = self.store.load(job_id)
                if rec["state"] != QUEUED:
                    continue
                execute(rec, self.handlers[rec["kind"]], self.storage, self.store, self._notify)
            except Exception:
                log.exception("job %s could not be run", job_id)
