"""`make chaos`: the job runtime under the ordinary events of a cluster, on real processes.

A private `weed mini` store, `vidtune serve transcode` replicas as subprocesses, real ffmpeg encodes of
small generated clips, and clients over gRPC. Each scenario starts replicas, submits jobs, does to them
what a cluster does (a second replica in a rolling update, SIGTERM, kill -9, a store restart, many idle
streams, a hostile request, a cancel next to another job) and checks what must hold. One row per
scenario: `python -m bench.chaos [scenario ...]` prints the table and exits 1 if any did not hold.

How encodes are counted: replicas run ffmpeg through a wrapper script (VIDTUNE_FFMPEG) that logs the
command line before exec-ing the real ffmpeg; the scratch path in that line names the job and the clip,
so "no item encoded twice" is counted, not inferred.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidtune.platform.client import ServiceClient
from vidtune.platform.jobs import TERMINAL, JobStore
from vidtune.platform.objectstore import ObjectStoreInfo, start_weed_mini, stop_process
from vidtune.platform.storage import S3Config, Storage, join
from vidtune.samples import make_clip
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, transcode_pb2, transcode_pb2_grpc

PORT_BASE = int(os.environ.get("VIDTUNE_CHAOS_PORT_BASE", "52700"))
# The stream-holding subprocess inherits the token through the environment.
TOKEN = os.environ.get("VIDTUNE_CHAOS_TOKEN") or "chaos-" + secrets.token_hex(8)
SERVICE_HEALTH = "vidtune.v1.TranscodeService"
LIVENESS = "vidtune.v1.Liveness"
_ENCODE_RE = re.compile(r"vt-(tc-\d{8}-\d{6}-[0-9a-f]{6})-[^ ]*/(clip-\d+)\.mp4")


# --------------------------------------------------------------------------- the stack
@dataclass
class Row:
    scenario: str
    held: bool
    figures: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> bool:
        """Record `problem` unless `ok`; the row holds only when every check passed."""
        if not ok:
            self.problems.append(problem)
            self.held = False
        return ok


class Replica:
    """One `vidtune serve transcode` process, its log in the stack's work directory."""

    def __init__(self, name: str, port: int, env: dict, args: list[str], log_path: Path):
        self.name, self.port, self.log_path = name, port, log_path
        self.endpoint = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "vidtune.cli", "serve", "transcode", "--port", str(port), *args]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_serving(self, timeout: float = 90.0) -> float:
        """Seconds until health says SERVING; raises when the process dies or never gets there."""
        t0 = time.monotonic()
        with grpc.insecure_channel(self.endpoint) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}: {self.tail()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - t0
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} not serving after {timeout:.0f} s: {self.tail()}")

    def terminate(self, timeout: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM, as the kubelet sends; (exit code, seconds to exit)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """kill -9 the replica and the encoders it started, as when a node dies."""
        children = _children(self.pid)
        for pid in [self.pid, *children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            rc, _ = self.terminate(20)
            if rc is None:
                self.kill()

    def crash_site(self) -> str:
        """Where a crashed replica was (the faulthandler's innermost frame), or the log's last line."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        for i, line in enumerate(lines):
            if line.startswith("Current thread") and i + 1 < len(lines):
                return lines[i + 1].strip()
        return lines[-1] if lines else ""

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (ffmpeg runs in sessions of its own, so a group kill misses it)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


class Client(ServiceClient):
    """A replica's channel with the bearer token, and the calls the scenarios make."""

    def __init__(self, endpoint: str):
        super().__init__("transcode", endpoint, TOKEN)
        self.meta = self.metadata
        self.transcode = transcode_pb2_grpc.TranscodeServiceStub(self.channel)
        self.job_service = self.jobs()
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def submit(self, inputs: list[str], output: str, report: str = "", workers: int = 1, timeout: float = 20):
        req = transcode_pb2.TranscodeRequest(inputs=inputs, output=output, profile="wan-480p", workers=workers,
                                             report=report)
        return self.transcode.SubmitTranscode(req, metadata=self.meta, timeout=timeout)

    def get(self, job_id: str, timeout: float = 10):
        return self.job_service.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=self.meta, timeout=timeout)

    def cancel(self, job_id: str, timeout: float = 10):
        return self.job_service.CancelJob(jobs_pb2.CancelJobRequest(id=job_id), metadata=self.meta, timeout=timeout)

    def status(self, service: str = "", timeout: float = 1.0) -> str:
        resp = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


class RecordWatch:
    """Follows one job record in the store every 0.1 s from a thread: the states it went through, the
    lease holders it had, and waits on conditions over it."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.1):
        self.store, self.job_id, self.interval = store, job_id, interval
        self.record: dict | None = None
        self.states: list[str] = []
        self.holders: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{job_id}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rec = self.store.load(self.job_id)
            except Exception:  # noqa: BLE001 - the store may be away on purpose; look again
                rec = None
            if rec is not None:
                with self._cond:
                    self.record = rec
                    if not self.states or self.states[-1] != rec["state"]:
                        self.states.append(rec["state"])
                    holder = (rec.get("lease") or {}).get("holder")
                    if holder and (not self.holders or self.holders[-1] != holder):
                        self.holders.append(holder)
                    self._cond.notify_all()
            self._stop.wait(self.interval)

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.record is None or not predicate(self.record):
                left = deadline - time.monotonic()
                if left <= 0:
                    state = self.record and (self.record["state"], self.record["progress"])
                    raise TimeoutError(f"job {self.job_id}: condition not met in {timeout:.0f} s (now {state})")
                self._cond.wait(left)
            return self.record

    def done_at_least(self, n: int, timeout: float = 120.0) -> dict:
        return self.wait(lambda r: r["state"] == "RUNNING" and r["progress"]["done"] >= n, timeout)

    def terminal(self, timeout: float = 180.0) -> dict:
        return self.wait(lambda r: r["state"] in TERMINAL, timeout)

    def went_back_from_succeeded(self) -> bool:
        return any(a == "SUCCEEDED" and b != "SUCCEEDED" for a, b in zip(self.states, self.states[1:]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Chaos:
    """A private object store with `clips` small clips in it, replicas to start, encodes to count."""

    def __init__(self, workdir: Path, clips: int = 12, lease: float = 3.0, grace: float = 10.0):
        self.workdir = Path(workdir)
        self.lease, self.grace = lease, grace
        self.access, self.secret = "chaos", secrets.token_hex(12)
        self.store_proc: subprocess.Popen | None = None
        self.info: ObjectStoreInfo | None = None
        self.replicas: list[Replica] = []
        self._next_port = 0
        self.start_store()
        self.storage = Storage(S3Config(endpoint=self.info.endpoint, access_key=self.access,
                                        secret_key=self.secret))
        self.inputs_bucket = self.new_bucket("inputs")
        self.clips = self._make_clips(clips)
        self.encode_log = self.workdir / "encodes.log"
        self.ffmpeg = self._ffmpeg_wrapper()

    # -- the store
    def start_store(self) -> float:
        """Start weed mini on the stack's data directory (the same S3 port after the first time)."""
        t0 = time.monotonic()
        port = int(self.info.endpoint.rsplit(":", 1)[1]) if self.info else None
        self.store_proc, self.info = start_weed_mini(self.workdir / "weed", self.access, self.secret, s3_port=port)
        return time.monotonic() - t0

    def stop_store(self) -> None:
        if self.store_proc is not None:
            stop_process(self.store_proc.pid)
            self.store_proc = None

    # -- fixtures in the store
    def new_bucket(self, name: str) -> str:
        bucket = f"s3://chaos-{name}-{secrets.token_hex(3)}"
        self.storage.ensure_bucket(bucket)
        return bucket

    def _make_clips(self, n: int) -> list[str]:
        uris = []
        local = self.workdir / "clips"
        for i in range(n):
            path = make_clip(local / f"clip-{i:02d}.mp4", 160, 120, 2.0 + 0.25 * (i % 3), fps=25, source="testsrc")
            uris.append(self.storage.upload(path, join(self.inputs_bucket, "clips", path.name)))
        return uris

    def _ffmpeg_wrapper(self) -> str:
        real = subprocess.run(["bash", "-c", "command -v ffmpeg"], capture_output=True, text=True).stdout.strip()
        wrapper = self.workdir / "ffmpeg"
        # CHAOS_ENCODE_DELAY (seconds) slows each encode where a scenario needs the job to outlast an event.
        wrapper.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $$ $*" >> {self.encode_log}\n'
                           f'sleep "${{CHAOS_ENCODE_DELAY:-0}}"\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
        return str(wrapper)

    def encodes(self, job_id: str) -> Counter:
        """How many times ffmpeg was started for each clip of `job_id`."""
        counts: Counter = Counter()
        if self.encode_log.exists():
            for line in self.encode_log.read_text().splitlines():
                m = _ENCODE_RE.search(line)
                if m and m.group(1) == job_id:
                    counts[m.group(2)] += 1
        return counts

    def job_store(self, bucket: str) -> JobStore:
        return JobStore(self.storage, join(bucket, "jobs"), "transcode")

    def report(self, record: dict) -> list[dict]:
        return self.storage.read_jsonl(record["result"]["report"])

    # -- replicas
    def replica(self, name: str, bucket: str, args: list[str] = (), **env) -> Replica:
        port = PORT_BASE + self._next_port % 100
        self._next_port += 1
        r = start_replica(name, port, self.info.env(), join(bucket, "jobs"),
                          self.workdir / f"replica-{self._next_port:02d}-{name}.log", args,
                          VIDTUNE_LEASE_SECONDS=self.lease, VIDTUNE_STOP_GRACE=self.grace,
                          VIDTUNE_FFMPEG=self.ffmpeg, **env)
        self.replicas.append(r)
        return r

    def serving(self, name: str, bucket: str, args: list[str] = (), **env) -> Replica:
        r = self.replica(name, bucket, args, **env)
        r.wait_serving()
        return r

    def start_job(self, replica: Replica, bucket: str, n: int, output: str = "out") -> tuple[str, RecordWatch]:
        """Submit a transcode of the first `n` clips through `replica`; its id and a watch on its record."""
        with Client(replica.endpoint) as c:
            job_id = c.submit(self.clips[:n], f"{bucket}/{output}/").id
        return job_id, RecordWatch(self.job_store(bucket), job_id)

    def close(self) -> None:
        for r in self.replicas:
            r.close()
        self.stop_store()


def start_replica(name: str, port: int, store_env: dict, jobs_root: str, log_path: Path, args: list[str] = (),
                  **env) -> Replica:
    """`vidtune serve transcode` on `port` over the store in `store_env`, with short leases and scans."""
    full = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    full.update(store_env)
    full.update({"VIDTUNE_JOBS_ROOT": jobs_root, "VIDTUNE_TOKEN": TOKEN, "VIDTUNE_PORT": str(port),
                 "VIDTUNE_LEASE_SECONDS": "3", "VIDTUNE_SCAN_SECONDS": "0.5", "VIDTUNE_STOP_GRACE": "10",
                 "VIDTUNE_TRANSCODE_ENCODER": "libx264", "VIDTUNE_LOG_LEVEL": "INFO",
                 "PYTHONFAULTHANDLER": "1",  # a crash leaves its Python stack in the replica's log
                 "NO_PROXY": "127.0.0.1,localhost"})
    full.update({k: str(v) for k, v in env.items()})
    return Replica(name, port, full, list(args), log_path)


def holder_pid(record: dict) -> int | None:
    """The process id inside a lease holder (host/pid/nonce/service-xx)."""
    holder = (record.get("lease") or {}).get("holder") or ""
    parts = holder.split("/")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def timed_calls(fn: Callable[[], object], count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def check_report(row: Row, chaos: Chaos, record: dict, n: int) -> list[dict]:
    """Every item once in the report, every item ok; returns the report's lines."""
    lines = chaos.report(record)
    inputs = [ln["input"] for ln in lines]
    row.check(len(inputs) == n and len(set(inputs)) == n, f"report has {len(inputs)} lines, "
              f"{len(set(inputs))} distinct inputs, expected {n}")
    bad = [ln for ln in lines if ln["status"] != "ok"]
    row.check(not bad, f"{len(bad)} items not ok: {bad[:1]}")
    return lines


def check_succeeded(row: Row, record: dict, attempt: int) -> None:
    row.check(record["state"] == "SUCCEEDED", f"job ended {record['state']}: {record.get('error')}")
    row.check(int(record.get("attempt", 0)) == attempt, f"attempt {record.get('attempt')}, expected {attempt}")


# --------------------------------------------------------------------------- scenarios
def two_replicas_one_job(chaos: Chaos, n: int = 12) -> Row:
    """A second replica starts mid-job (a rolling update): the job keeps one runner."""
    row = Row("two replicas, one job", True)
    bucket = chaos.new_bucket("two")
    # Each encode on A takes at least 0.5 s, and B starts while the job is submitted: B comes up mid-job.
    first = chaos.serving("A", bucket, CHAOS_ENCODE_DELAY=0.5)
    second = chaos.replica("B", bucket)
    job_id, watch = chaos.start_job(first, bucket, n)
    try:
        watch.done_at_least(0)
        second.wait_serving()
        done_when_b_up = watch.record["progress"]["done"]
        row.check(done_when_b_up < n, f"the job ended ({done_when_b_up}/{n}) before replica B was up")
        record = watch.terminal()
        check_succeeded(row, record, 1)
        check_report(row, chaos, record, n)
        encodes = chaos.encodes(job_id)
        row.check(sum(encodes.values()) == n and max(encodes.values(), default=0) == 1,
                  f"{sum(encodes.values())} encodes for {n} items: {dict(encodes)}")
        row.check(not watch.went_back_from_succeeded(), f"states went {watch.states}")
        holders = set(watch.holders)
        row.check(len(holders) == 1, f"lease holders {holders}")
        row.figures = {"items": n, "encodes": sum(encodes.values()), "attempt": record["attempt"],
                       "holders": len(holders), "done_when_B_up": done_when_b_up, "states": "->".join(watch.states)}
    finally:
        watch.close()
    return row


def sigterm_then_restart(chaos: Chaos, n: int = 12) -> Row:
    """SIGTERM mid-job: items in flight finish, the job goes back QUEUED, the next replica ends it."""
    row = Row("SIGTERM mid-job, restart", True)
    bucket = chaos.new_bucket("term")
    first = chaos.serving("first", bucket)
    job_id, watch = chaos.start_job(first, bucket, n)
    store = chaos.job_store(bucket)
    try:
        watch.done_at_least(max(1, n // 3))
        rc, exit_s = first.terminate(chaos.grace + 10)
        row.check(rc == 0, f"exit code {rc} after SIGTERM")
        row.check(exit_s <= chaos.grace, f"exit took {exit_s:.1f} s, grace is {chaos.grace:.0f} s")
        handed = store.load(job_id)
        row.check(handed["state"] == "QUEUED" and not handed.get("lease"),
                  f"after the drain the record is {handed['state']} with lease {handed.get('lease')}")
        done_at_drain = handed["progress"]["done"]
        chaos.serving("second", bucket)
        record = watch.terminal()
        check_succeeded(row, record, 2)
        lines = check_report(row, chaos, record, n)
        skipped = sum(bool(ln["skipped"]) for ln in lines)
        # The item in flight when the drain began finishes, is kept and counted in the handed-back record:
        # the next attempt skips exactly the items the drained one reported done.
        row.check(skipped == done_at_drain,
                  f"{skipped} items skipped after the restart, {done_at_drain} were done at the drain")
        encodes = chaos.encodes(job_id)
        row.check(sum(encodes.values()) == n and max(encodes.values(), default=0) == 1,
                  f"{sum(encodes.values())} encodes for {n} items: {dict(encodes)}")
        row.check("FAILED" not in watch.states, f"states went {watch.states}")
        row.figures = {"items": n, "exit_code": rc, "exit_s": round(exit_s, 1), "done_at_drain": done_at_drain,
                       "skipped": skipped, "encodes": sum(encodes.values()), "attempt": record["attempt"]}
    finally:
        watch.close()
    return row


def kill9_with_survivor(chaos: Chaos, n: int = 12) -> Row:
    """kill -9 the replica running the job: the other takes it over once the lease expires."""
    row = Row("kill -9 mid-job, survivor", True)
    bucket = chaos.new_bucket("kill")
    a, b = chaos.replica("A", bucket), chaos.replica("B", bucket)
    a.wait_serving()
    b.wait_serving()
    job_id, watch = chaos.start_job(a, bucket, n)
    try:
        rec = watch.done_at_least(max(1, n // 3))
        runner = {a.pid: a, b.pid: b}.get(holder_pid(rec))
        if not row.check(runner is not None, f"lease holder {rec.get('lease')} is neither replica"):
            return row
        survivor = b if runner is a else a
        runner.kill()
        t_kill = time.monotonic()
        taken = watch.wait(lambda r: holder_pid(r) == survivor.pid or r["state"] in TERMINAL, 60)
        takeover_s = time.monotonic() - t_kill
        record = watch.terminal()
        check_succeeded(row, record, 2)
        check_report(row, chaos, record, n)
        encodes = chaos.encodes(job_id)
        repeated = sum(v - 1 for v in encodes.values())
        row.check(len(encodes) == n and repeated <= 1, f"encodes {dict(encodes)}: at most the one item in "
                                                        "flight may be encoded again")
        row.check(holder_pid(taken) == survivor.pid or taken["state"] == "SUCCEEDED", "survivor never held the lease")
        row.check(takeover_s < chaos.lease + 10, f"takeover took {takeover_s:.1f} s")
        row.figures = {"items": n, "takeover_s": round(takeover_s, 1), "lease_s": chaos.lease,
                       "encodes": sum(encodes.values()), "re_encoded": repeated, "attempt": record["attempt"]}
    finally:
        watch.close()
    return row


def store_restart(chaos: Chaos, n: int = 12) -> Row:
    """The object store goes away mid-job and comes back: readiness follows it, the job carries on."""
    row = Row("store restart mid-job", True)
    bucket = chaos.new_bucket("store")
    r = chaos.serving("only", bucket)
    c = Client(r.endpoint)
    job_id, watch = chaos.start_job(r, bucket, n)
    try:
        watch.done_at_least(max(1, n // 3))
        t_stop = time.monotonic()
        chaos.stop_store()
        not_serving_s = None
        while time.monotonic() - t_stop < 15:
            try:
                if c.status(SERVICE_HEALTH) == "NOT_SERVING":
                    not_serving_s = time.monotonic() - t_stop
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        row.check(not_serving_s is not None, "health never went NOT_SERVING while the store was away")
        live = c.status(LIVENESS, timeout=2)
        row.check(live == "SERVING", f"liveness says {live} while the store is away")
        overall = c.status("", timeout=2)  # what a probe without a service name sees
        t0 = time.perf_counter()
        code, message = "OK", ""
        try:
            c.submit(chaos.clips[:1], f"{bucket}/out2/", timeout=10)
        except grpc.RpcError as e:
            code, message = e.code().name, e.details() or ""
        submit_s = time.perf_counter() - t0
        row.check(code == "UNAVAILABLE" and submit_s < 2 and "\n" not in message,
                  f"Submit while the store was away: {code} after {submit_s:.1f} s: {message!r}")
        # Away for longer than a lease, so renewals fail and the lease lapses while the job waits.
        time.sleep(max(0.0, 2 * chaos.lease - (time.monotonic() - t_stop)))
        start_s = chaos.start_store()
        outage_s = time.monotonic() - t_stop
        t_back = time.monotonic()
        serving_s = None
        while time.monotonic() - t_back < 30:
            try:
                if c.status(SERVICE_HEALTH) == "SERVING":
                    serving_s = time.monotonic() - t_back
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        row.check(serving_s is not None, "health did not come back to SERVING")
        record = watch.terminal()
        check_succeeded(row, record, 1)
        check_report(row, chaos, record, n)
        row.check(r.proc.poll() is None, f"the replica exited ({r.proc.returncode})")
        row.figures = {"items": n, "not_serving_after_s": _r(not_serving_s), "submit_s": round(submit_s, 2),
                       "submit": code, "outage_s": round(outage_s, 1), "store_start_s": round(start_s, 1),
                       "serving_again_after_s": _r(serving_s), "overall_health_in_outage": overall,
                       "attempt": record["attempt"], "message": message}
    finally:
        watch.close()
        c.close()
    return row


def start_during_store_outage(chaos: Chaos, n: int = 2, wait_s: float = 20.0) -> Row:
    """A replica started while the store is away (a node reboot takes both down) answers liveness at
    once, reports NOT_SERVING, and serves once the store is back, without a restart."""
    row = Row("start during store outage", True)
    bucket = chaos.new_bucket("cold")
    chaos.stop_store()
    t0 = time.monotonic()
    r = chaos.replica("only", bucket, VIDTUNE_S3_OUTAGE_SECONDS=120)
    c = Client(r.endpoint)
    live = ready = None
    try:
        while time.monotonic() - t0 < wait_s and r.proc.poll() is None:
            try:
                live, ready = c.status(LIVENESS), c.status(SERVICE_HEALTH)
                break
            except grpc.RpcError:
                time.sleep(0.2)
        live_s = time.monotonic() - t0
        row.check(live == "SERVING", f"liveness did not answer within {wait_s:.0f} s of start while the store "
                                     f"was away (exit code {r.proc.poll()})")
        row.check(ready in (None, "NOT_SERVING"), f"readiness said {ready} while the store was away")
        chaos.start_store()
        serving_s = None
        try:
            serving_s = r.wait_serving(150)
        except RuntimeError as e:
            row.check(False, str(e))
        if serving_s is not None and n:
            _, watch = chaos.start_job(r, bucket, n)
            try:
                check_succeeded(row, watch.terminal(), 1)
            finally:
                watch.close()
        row.figures = {"liveness": live, "readiness": ready, "answered_after_s": _r(live_s) if live else None,
                       "serving_after_store_back_s": _r(serving_s), "restarts": 0 if r.proc.poll() is None else 1}
    finally:
        c.close()
        if chaos.store_proc is None:
            chaos.start_store()
    return row


def idle_streams(chaos: Chaos, n: int = 12, watches: int = 1000, reflections: int = 16, calls: int = 40) -> Row:
    """1,000 WatchJob streams and 16 unauthenticated reflection streams: health and GetJob still answer."""
    row = Row(f"{watches} idle streams", True)
    bucket = chaos.new_bucket("streams")
    r = chaos.serving("only", bucket, VIDTUNE_MAX_STREAMS_PER_PEER=2 * watches)
    c = Client(r.endpoint)
    job_id, watch = chaos.start_job(r, bucket, n)
    holder = None
    try:
        watch.done_at_least(0)
        t0 = time.monotonic()
        holder = StreamHolder(r.endpoint, job_id, watches, reflections)
        opened = holder.wait_open(120)
        open_s = time.monotonic() - t0
        row.check(opened == (watches, reflections), f"opened {opened} of {(watches, reflections)} streams")
        health = timed_calls(lambda: c.status("", timeout=5), calls)
        get = timed_calls(lambda: c.get(job_id, timeout=5), calls)
        state = jobs_pb2.JobState.Name(c.get(job_id).state)
        row.check(state == "RUNNING", f"the job was {state} during the measurement, not RUNNING")
        for name, values in (("health", health), ("GetJob", get)):
            row.check(max(values) < 1.0, f"{name} took up to {max(values):.2f} s with the streams open")
        messages = holder.close()
        holder = None
        after = [float("inf")]
        try:
            after = timed_calls(lambda: c.status("", timeout=5), 10) + \
                timed_calls(lambda: c.get(job_id, timeout=5), 10)
            row.check(max(after) < 1.0, f"after the streams closed, calls took up to {max(after):.2f} s")
            c.cancel(job_id)
            record = watch.terminal(60)
            row.check(record["state"] == "CANCELLED", f"cancel after the streams left: {record['state']}")
        except grpc.RpcError as e:
            time.sleep(1)
            row.check(False, f"after the streams closed: {e.code().name}: {e.details()} "
                             f"(replica exit code {r.proc.poll()}: {r.tail(3)})")
        row.check(r.proc.poll() is None, f"the replica exited with {r.proc.poll()}")
        row.figures = {"watch_streams": watches, "reflection_streams": reflections, "open_s": round(open_s, 1),
                       "health_p50_ms": _ms(percentile(health, 0.5)), "health_p99_ms": _ms(percentile(health, 0.99)),
                       "getjob_p50_ms": _ms(percentile(get, 0.5)), "getjob_p99_ms": _ms(percentile(get, 0.99)),
                       "watch_messages": messages, "after_max_ms": _ms(max(after)), "exit_code": r.proc.poll()}
    finally:
        if holder is not None:
            holder.close()
        watch.close()
        c.close()
    return row


def cancel_storm(chaos: Chaos, n: int = 12, watches: int = 1000, rounds: int = 4) -> Row:
    """Clients that open 1,000 Watch streams on a running job and drop them all at once, several times:
    the server lives through it (a liveness probe must never find it gone)."""
    row = Row(f"{watches} streams dropped x{rounds}", True)
    bucket = chaos.new_bucket("storm")
    r = chaos.serving("only", bucket, VIDTUNE_MAX_STREAMS_PER_PEER=2 * watches)
    c = Client(r.endpoint)
    job_id, watch = chaos.start_job(r, bucket, n)
    watch.close()  # only the server's survival matters here
    survived = 0
    try:
        for _ in range(rounds):
            holder = StreamHolder(r.endpoint, job_id, watches, 0)
            holder.wait_open(120)
            holder.close()
            time.sleep(0.5)
            if r.proc.poll() is not None:
                break
            survived += 1
        row.check(r.proc.poll() is None, f"the replica died with exit code {r.proc.poll()} after "
                                         f"{survived} of {rounds} rounds, in {r.crash_site()}")
        if r.proc.poll() is None:
            c.cancel(job_id)
    finally:
        c.close()
    row.figures = {"rounds_survived": survived, "rounds": rounds, "exit_code": r.proc.poll()}
    return row


def report_aimed_at_a_record(chaos: Chaos, n: int = 2) -> Row:
    """A report URI pointing at another job's record is refused at submit; that record stays intact."""
    row = Row("report aimed at a record", True)
    bucket = chaos.new_bucket("reserved")
    r = chaos.serving("only", bucket)
    store = chaos.job_store(bucket)
    victim, first_watch = chaos.start_job(r, bucket, n)
    watches = [first_watch]
    with Client(r.endpoint) as c:
        code, message = "OK", ""
        try:
            attacker = c.submit(chaos.clips[:1], f"{bucket}/out-x/", report=store.uri(victim)).id
            watches.append(RecordWatch(store, attacker))
        except grpc.RpcError as e:
            code, message = e.code().name, e.details() or ""
        row.check(code == "INVALID_ARGUMENT", f"a report aimed at job {victim}'s record was answered {code}")
        try:
            for w in watches:
                w.terminal()
        finally:
            for w in watches:
                w.close()
        try:
            got = jobs_pb2.JobState.Name(c.get(victim).state)
        except grpc.RpcError as e:
            got = f"{e.code().name}: {e.details()}"
        row.check(got == "SUCCEEDED", f"GetJob of the job aimed at: {got}")
    row.figures = {"submit": code, "message": message[:100], "victim": got[:60]}
    return row


def junk_under_jobs_root(chaos: Chaos, n: int = 2) -> Row:
    """Corrupt and foreign objects under the jobs root are skipped: a restarted service starts and
    lists and serves its jobs."""
    row = Row("junk under the jobs root", True)
    bucket = chaos.new_bucket("junk")
    first = chaos.serving("first", bucket)
    job_id, watch = chaos.start_job(first, bucket, n)
    try:
        watch.terminal()
    finally:
        watch.close()
    junk = {"tc-20000101-000000-badbad.json": "{not json", "foreign.json": json.dumps({"hello": "world"}),
            "tc-20000101-000001-badbad.json": json.dumps({"id": "someone-else", "state": "DONE"}),
            ".hidden.json": "[]"}
    for name, text in junk.items():
        chaos.storage.write_text(join(bucket, "jobs", "transcode", name), text)
    first.terminate()
    second = chaos.replica("second", bucket)
    started_s = None
    try:
        started_s = second.wait_serving(60)
    except RuntimeError as e:
        row.check(False, f"the restarted service did not start: {e}")
    if started_s is not None:
        with Client(second.endpoint) as c:
            try:
                listed = [j.id for j in c.job_service.ListJobs(jobs_pb2.ListJobsRequest(), metadata=c.meta, timeout=10).jobs]
                row.check(listed == [job_id], f"ListJobs gave {listed}, expected [{job_id}]")
                got = jobs_pb2.JobState.Name(c.get(job_id).state)
                row.check(got == "SUCCEEDED", f"the job is {got} after the restart")
                row.check(second.proc.poll() is None, "the restarted service exited")
            except grpc.RpcError as e:
                row.check(False, f"after the restart: {e.code().name}: {e.details()}")
    warnings = second.log_path.read_text(errors="replace").count("skipping") if second.log_path.exists() else 0
    row.figures = {"junk_objects": len(junk), "restart_s": _r(started_s), "skip_warnings_logged": warnings}
    return row


def cancel_beside_another(chaos: Chaos, n: int = 8) -> Row:
    """With two jobs running on one server, cancelling one leaves the other's encodes alone."""
    row = Row("cancel one of two jobs", True)
    bucket = chaos.new_bucket("cancel")
    # Each encode takes at least 2 s, so the doomed job cannot finish its items between the first one done and
    # the cancel landing (on a fast machine four unslowed clips did, and the job rightly ended SUCCEEDED).
    r = chaos.serving("only", bucket, args=["--job-workers", "2"], CHAOS_ENCODE_DELAY=2)
    doomed, w_doomed = chaos.start_job(r, bucket, n, "out-a")
    kept, w_kept = chaos.start_job(r, bucket, n, "out-b")
    with Client(r.endpoint) as c:
        try:
            w_doomed.done_at_least(1)
            w_kept.done_at_least(1)
            c.cancel(doomed)
            t0 = time.monotonic()
            cancelled = w_doomed.terminal(60)
            cancel_s = time.monotonic() - t0
            row.check(cancelled["state"] == "CANCELLED", f"the cancelled job ended {cancelled['state']}")
            row.check(cancelled["progress"]["done"] < n, "the cancelled job finished every item anyway")
            record = w_kept.terminal()
            check_succeeded(row, record, 1)
            lines = check_report(row, chaos, record, n)
            row.figures = {"items": n, "cancel_s": round(cancel_s, 1),
                           "cancelled_done": cancelled["progress"]["done"],
                           "other_ok": sum(ln["status"] == "ok" for ln in lines),
                           "other_encodes": sum(chaos.encodes(kept).values())}
        finally:
            w_doomed.close()
            w_kept.close()
    return row


SCENARIOS = {"two-replicas": two_replicas_one_job, "sigterm": sigterm_then_restart, "kill9": kill9_with_survivor,
             "store-restart": store_restart, "streams": idle_streams,
             "storm": cancel_storm, "reserved": report_aimed_at_a_record,
             "junk": junk_under_jobs_root, "cancel": cancel_beside_another, "cold-start": start_during_store_outage}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


# --------------------------------------------------------------------------- many streams, in a process of their own
class StreamHolder:
    """A client process holding `watches` WatchJob streams (over ~10 channels) and `reflections` idle,
    unauthenticated reflection streams, so the client's own work does not sit in the measuring process."""

    def __init__(self, endpoint: str, job_id: str, watches: int, reflections: int, channels: int = 10):
        env = {**os.environ, "VIDTUNE_CHAOS_TOKEN": TOKEN, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                          os.environ.get("PYTHONPATH", "")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos", "--hold-streams", endpoint, job_id, str(watches), str(reflections),
             str(channels)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def wait_open(self, timeout: float) -> tuple[int, int]:
        """(watch, reflection) streams open, once the holder says so."""
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0].startswith("open"):
            return (0, 0)
        _, w, r = result[0].split()
        return int(w), int(r)

    def close(self) -> int:
        """Cancel every stream; the number of Watch messages the holder received."""
        try:
            self.proc.stdin.close()
            out = self.proc.stdout.readline()
            self.proc.wait(30)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            self.proc.kill()
            self.proc.wait()
            return -1
        return int(out.split()[1]) if out.startswith("closed") else -1


async def hold_streams(endpoint: str, job_id: str, watches: int, reflections: int, channels: int) -> None:
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    meta = [("authorization", f"Bearer {TOKEN}")]
    chans = [grpc.aio.insecure_channel(endpoint) for _ in range(channels)]
    received = 0
    first = [asyncio.Event() for _ in range(watches)]

    async def follow(i: int) -> None:
        nonlocal received
        call = jobs_pb2_grpc.JobServiceStub(chans[i % channels]).WatchJob(jobs_pb2.WatchJobRequest(id=job_id),
                                                                        metadata=meta)
        try:
            async for _ in call:
                received += 1
                first[i].set()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            first[i].set()

    tasks = [asyncio.ensure_future(follow(i)) for i in range(watches)]
    idle = [reflection_pb2_grpc.ServerReflectionStub(chans[i % channels]).ServerReflectionInfo()
            for i in range(reflections)]
    await asyncio.gather(*(e.wait() for e in first))
    await asyncio.gather(*(call.wait_for_connection() for call in idle))
    open_watches = sum(not t.done() for t in tasks)
    open_reflections = sum(not call.done() for call in idle)
    print(f"open {open_watches} {open_reflections}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()
    for call in idle:
        call.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in chans:
        await ch.close()
    print(f"closed {received}", flush=True)


# --------------------------------------------------------------------------- the table
def table(rows: list[Row]) -> str:
    width = max(len(r.scenario) for r in rows)
    out = [f"{'scenario':<{width}}  held  figures", f"{'-' * width}  ----  -------"]
    for r in rows:
        figures = ", ".join(f"{k}={v}" for k, v in r.figures.items())
        out.append(f"{r.scenario:<{width}}  {'yes' if r.held else 'NO ':<4}  {figures}")
        for p in r.problems:
            out.append(f"{'':<{width}}        ! {p}")
    return "\n".join(out)


def run(names: list[str], workdir: Path, clips: int = 12) -> list[Row]:
    chaos = Chaos(workdir, clips=clips)
    rows = []
    try:
        for name in names:
            t0 = time.monotonic()
            try:
                row = SCENARIOS[name](chaos)
            except Exception as e:  # noqa: BLE001 - a scenario that broke did not hold; the others still run
                row = Row(name, False, problems=[f"{type(e).__name__}: {e}"])
            finally:
                for r in chaos.replicas:
                    r.close()
                chaos.replicas.clear()
            row.figures["scenario_s"] = round(time.monotonic() - t0, 1)
            print(f"{row.scenario}: {'held' if row.held else 'DID NOT HOLD'} ({row.figures['scenario_s']} s)",
                  flush=True)
            rows.append(row)
    finally:
        chaos.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for k in [k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "all_proxy")]:
        del os.environ[k]  # every call here goes to loopback
    if argv[:1] == ["--hold-streams"]:
        endpoint, job_id, w, r, ch = argv[1:6]
        asyncio.run(hold_streams(endpoint, job_id, int(w), int(r), int(ch)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, store data)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    workdir = Path(tempfile.mkdtemp(prefix="vidtune-chaos-"))
    rows = run(args.scenarios or list(SCENARIOS), workdir, args.clips)
    print()
    print(table(rows))
    if args.keep:
        print(f"\nlogs and store data: {workdir}")
    else:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.held for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
