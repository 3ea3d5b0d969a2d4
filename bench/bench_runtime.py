"""Job runtime: unary calls with 1,000 open Watch streams, and ListJobs at 10,000 records.

Streams: one `vidtune serve transcode` process; SubmitTranscode and GetJob are timed on it idle, then with
1,000 WatchJob streams (over 10 channels, held by a client process of their own) open on a job. The job
watched is a record of a kind the service does not run, so it stays QUEUED and the streams stay idle:
the figure is what open streams cost, not what a changing job costs. Submitted jobs name an empty prefix
and fail at once, so they do not load the machine. Three rounds, idle and loaded interleaved; medians.

ListJobs: records written straight into two jobs roots (100 and 10,000, by JobStore.create on a thread
pool), one server on each; the first page (page_size 100) and a filtered page (state FAILED, 1 record in
100) are timed on both. Baseline: the same call at 100 records. The records' ids are stamped over the past
30 days, as a service's history is; the idle server's CPU is measured over one full-listing period
(VIDTUNE_FULL_SCAN_SECONDS, 60 s), which holds one full listing and the incremental scans between.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vidtune.platform.errors import Conflict
from vidtune.platform.jobs import FAILED, SUCCEEDED, JobStore, new_record, now_iso
from vidtune.platform.storage import Storage, join
from vidtune.v1 import jobs_pb2

from .chaos import PORT_BASE, Client, StreamHolder, percentile, start_replica, timed_calls

WATCHES = 1000
ROUNDS = 3
CALLS = 60
SMALL, LARGE = 100, 10_000
SCAN_SECONDS = 2.0
FULL_SCAN_SECONDS = 60.0
HISTORY_S = 30 * 86400


def _store_env(s3: Storage) -> dict:
    c = s3.config
    return {"VIDTUNE_S3_ENDPOINT": f"{'https' if c.secure else 'http'}://{c.endpoint}",
            "VIDTUNE_S3_ACCESS_KEY": c.access_key, "VIDTUNE_S3_SECRET_KEY": c.secret_key}


def _quiet_record(store: JobStore, state: str = "QUEUED", age_s: float = 0.0) -> str:
    """A record this service will never run (a kind it has no handler for), in `state`, its id stamped
    `age_s` seconds ago."""
    while True:
        rec = new_record("transcode", "transcode.bench", {"inputs": [], "output": ""})
        if age_s:
            stamp = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s)
            rec["id"] = f"tc-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        if state != "QUEUED":
            rec.update(state=state, attempt=1, started=now_iso(), finished=now_iso())
            rec["progress"].update(done=1, total=1, percent=100.0, message=state.lower())
        try:
            store.create(rec)
            return rec["id"]
        except Conflict:  # two ids drawn in one second collided; draw again
            continue


def _fill(store: JobStore, n: int) -> float:
    """Write `n` finished records (1 in 100 FAILED); seconds taken."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: _quiet_record(store, FAILED if i % 100 == 0 else SUCCEEDED,
                                              age_s=HISTORY_S * (n - i) / n), range(n)))
    return time.perf_counter() - t0


def _cpu_percent(pid: int, seconds: float) -> float:
    """CPU the process used over `seconds` of wall time, in percent of one core (its scans, while idle)."""
    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    t0, c0 = time.monotonic(), ticks()
    time.sleep(seconds)
    return 100.0 * (ticks() - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)


def _stats(values: list[float]) -> tuple[float, float]:
    return percentile(values, 0.5), percentile(values, 0.99)


def streams_bench(s3: Storage, bucket: str, workdir: Path) -> dict:
    root = join(bucket, f"jobs-streams-{secrets.token_hex(2)}")
    held = _quiet_record(JobStore(s3, root, "transcode"))
    server = start_replica("streams", PORT_BASE + 90, _store_env(s3), root, workdir / "streams.log",
                           VIDTUNE_MAX_STREAMS_PER_PEER=2 * WATCHES,
                           # Every timed Submit leaves a job behind (each fails at once: no inputs); the cap on
                           # active jobs would otherwise refuse the later calls.
                           VIDTUNE_MAX_ACTIVE_JOBS=100_000)
    rounds = {"idle": {"submit": [], "get": []}, "streams": {"submit": [], "get": []}}
    empty = join(bucket, "bench-runtime-empty/")
    try:
        server.wait_serving()
        with Client(server.endpoint) as c:
            submit = lambda: c.submit([empty], join(bucket, "bench-runtime-out/"), timeout=10)  # noqa: E731
            get = lambda: c.get(held, timeout=10)  # noqa: E731
            timed_calls(get, 10)  # warm the channel
            for _ in range(ROUNDS):
                for phase in ("idle", "streams"):
                    holder = StreamHolder(server.endpoint, held, WATCHES, 0) if phase == "streams" else None
                    try:
                        if holder is not None and holder.wait_open(120) != (WATCHES, 0):
                            raise RuntimeError(f"could not open {WATCHES} Watch streams")
                        rounds[phase]["submit"].append(_stats(timed_calls(submit, CALLS)))
                        rounds[phase]["get"].append(_stats(timed_calls(get, CALLS)))
                    finally:
                        if holder is not None:
                            holder.close()
    finally:
        server.close()
    out = {"watch_streams": WATCHES, "calls_per_round": CALLS, "rounds": ROUNDS}
    for call in ("submit", "get"):
        for phase in ("idle", "streams"):
            p50s, p99s = zip(*rounds[phase][call])
            out[f"{call}_{phase}_p50_ms"] = round(1000 * statistics.median(p50s), 2)
            out[f"{call}_{phase}_p99_ms"] = round(1000 * statistics.median(p99s), 2)
        for q in ("p50", "p99"):
            out[f"{call}_{q}_ratio"] = round(out[f"{call}_streams_{q}_ms"] / out[f"{call}_idle_{q}_ms"], 2)
    return out


def list_bench(s3: Storage, bucket: str, workdir: Path) -> dict:
    out = {}
    for i, n in enumerate((SMALL, LARGE)):
        root = join(bucket, f"jobs-list-{n}-{secrets.token_hex(2)}")
        out[f"fill_{n}_s"] = round(_fill(JobStore(s3, root, "transcode"), n), 1)
        # The service's default scan intervals: incremental scans, a full listing every minute.
        server = start_replica(f"list-{n}", PORT_BASE + 91 + i, _store_env(s3), root, workdir / f"list-{n}.log",
                               VIDTUNE_SCAN_SECONDS=SCAN_SECONDS, VIDTUNE_FULL_SCAN_SECONDS=FULL_SCAN_SECONDS)
        try:
            out[f"start_{n}_s"] = round(server.wait_serving(300), 1)
            with Client(server.endpoint) as c:
                # The port answers before the first scan has read the records; the first ListJobs waits for it.
                t0 = time.perf_counter()
                c.job_service.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=c.meta, timeout=300)
                out[f"first_list_{n}_s"] = round(time.perf_counter() - t0, 1)
            out[f"idle_cpu_{n}_pct"] = round(_cpu_percent(server.pid, FULL_SCAN_SECONDS), 1)
            with Client(server.endpoint) as c:
                def page(state: int = 0):
                    resp = c.job_service.ListJobs(jobs_pb2.ListJobsRequest(page_size=100, state=state), metadata=c.meta,
                                           timeout=30)
                    assert len(resp.jobs) == min(100, n if not state else n // 100), len(resp.jobs)
                first, failed = [], []
                page()
                for _ in range(ROUNDS):
                    first.append(statistics.median(timed_calls(page, 20)))
                    failed.append(statistics.median(timed_calls(lambda: page(jobs_pb2.FAILED), 20)))
            out[f"page_{n}_ms"] = round(1000 * statistics.median(first), 2)
            out[f"page_failed_{n}_ms"] = round(1000 * statistics.median(failed), 2)
        finally:
            server.close()
    # Baseline: the same 10,000 records with every scan a full listing (VIDTUNE_FULL_SCAN_SECONDS=0).
    server = start_replica("list-full", PORT_BASE + 93, _store_env(s3), root, workdir / "list-full.log",
                           VIDTUNE_SCAN_SECONDS=SCAN_SECONDS, VIDTUNE_FULL_SCAN_SECONDS=0)
    try:
        server.wait_serving(300)
        with Client(server.endpoint) as c:
            c.job_service.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=c.meta, timeout=300)
        out[f"idle_cpu_{LARGE}_full_pct"] = round(_cpu_percent(server.pid, 20.0), 1)
    finally:
        server.close()
    out["page_ratio"] = round(out[f"page_{LARGE}_ms"] / out[f"page_{SMALL}_ms"], 2)
    out["page_failed_ratio"] = round(out[f"page_failed_{LARGE}_ms"] / out[f"page_failed_{SMALL}_ms"], 2)
    return out


def main(s3: Storage | None = None, bucket: str | None = None) -> dict:
    if s3 is None or not bucket:
        print("runtime: needs the object store of `python -m bench.run runtime`")
        return {}
    with tempfile.TemporaryDirectory(prefix="vt-bench-runtime-") as d:
        streams = streams_bench(s3, bucket, Path(d))
        listing = list_bench(s3, bucket, Path(d))
    print(f"runtime: one transcode server, {CALLS} calls per round, median of {ROUNDS} rounds")
    for call, name in (("submit", "SubmitTranscode"), ("get", "GetJob")):
        print(f"  {name:<16} idle p50 {streams[f'{call}_idle_p50_ms']:7.2f} ms  p99 {streams[f'{call}_idle_p99_ms']:7.2f} ms"
              f"   with {WATCHES} Watch streams p50 {streams[f'{call}_streams_p50_ms']:7.2f} ms"
              f"  p99 {streams[f'{call}_streams_p99_ms']:7.2f} ms   ratio p50 {streams[f'{call}_p50_ratio']:.2f}"
              f"  p99 {streams[f'{call}_p99_ratio']:.2f}")
    print(f"  ListJobs page (100)   at {SMALL} records {listing[f'page_{SMALL}_ms']:7.2f} ms   at {LARGE} records "
          f"{listing[f'page_{LARGE}_ms']:7.2f} ms   ratio {listing['page_ratio']:.2f}")
    print(f"  ListJobs state=FAILED at {SMALL} records {listing[f'page_failed_{SMALL}_ms']:7.2f} ms   at {LARGE} "
          f"records {listing[f'page_failed_{LARGE}_ms']:7.2f} ms   ratio {listing['page_failed_ratio']:.2f}")
    print(f"  first ListJobs after start (the index fill) at {SMALL} records {listing[f'first_list_{SMALL}_s']} s, "
          f"at {LARGE} {listing[f'first_list_{LARGE}_s']} s")
    print(f"  idle server CPU (its scans) at {SMALL} records {listing[f'idle_cpu_{SMALL}_pct']}% of a core, at {LARGE} "
          f"{listing[f'idle_cpu_{LARGE}_pct']}% (scan every {SCAN_SECONDS:.0f} s, full listing every {FULL_SCAN_SECONDS:.0f} s); "
          f"baseline, every scan a full listing, at {LARGE}: {listing[f'idle_cpu_{LARGE}_full_pct']}%")
    print(f"  server start (port answering) at {SMALL} records {listing[f'start_{SMALL}_s']} s, at {LARGE} "
          f"{listing[f'start_{LARGE}_s']} s; writing the {LARGE} records took {listing[f'fill_{LARGE}_s']} s")
    return {**streams, **listing}


if __name__ == "__main__":
    main()
