import secrets
import threading
import time

import pytest

from vidtune.platform.errors import FailedPrecondition, InvalidArgument
from vidtune.platform.errors import Conflict
from vidtune.platform.jobs import (CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobManager, JobStore, acquire,
                                   execute, new_record, service_of, transition)


def test_state_machine_allows_only_forward_moves():
    rec = new_record("transcode", "transcode.batch", {})
    assert rec["state"] == QUEUED and service_of(rec["id"]) == "transcode"
    transition(rec, RUNNING)
    assert rec["attempt"] == 1 and rec["started"]
    transition(rec, SUCCEEDED)
    assert rec["finished"]
    with pytest.raises(FailedPrecondition, match="is SUCCEEDED and cannot become RUNNING"):
        transition(rec, RUNNING)


def _counting_handler(calls):
    def handler(ctx):
        for i in range(3):
            ctx.check_cancelled()
            calls.append(i)
            ctx.progress(i + 1, 3, f"item {i}")
        return {"count": 3}
    return handler


def test_manager_runs_persists_and_reports_progress(storage, jobs_root):
    calls = []
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler(calls)})
    m.start()
    try:
        rec = m.submit("t.count", {"x": 1})
        states = [r["state"] for r in m.watch(rec["id"], timeout=20)]
        final = m.get(rec["id"])
        assert states[-1] == SUCCEEDED and final["result"] == {"count": 3}
        assert final["progress"]["done"] == 3 and final["progress"]["percent"] == 100.0
        # the record is in the object store, readable by another process
        assert JobStore(storage, jobs_root, "transcode").load(rec["id"])["state"] == SUCCEEDED
        assert [r["id"] for r in m.list(state=SUCCEEDED)[0]] == [rec["id"]]
    finally:
        m.stop()


def test_unknown_kind_and_backend_are_invalid(storage, jobs_root):
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler([])})
    with pytest.raises(InvalidArgument, match="no job kind 't.nope'"):
        m.submit("t.nope", {})
    with pytest.raises(InvalidArgument, match="backend 'kubernetes' is not available"):
        m.submit("t.count", {}, backend="kubernetes")


def test_failure_keeps_the_reason_and_code(storage, jobs_root):
    def broken(ctx):
        raise InvalidArgument("input s3://b/x.mp4: not a video")

    store = JobStore(storage, jobs_root, "transcode")
    rec = new_record("transcode", "t.broken", {})
    store.create(rec)
    out = execute(acquire(store, rec["id"]), broken, storage)
    assert out["state"] == FAILED and out["error"] == {"code": 3, "message": "input s3://b/x.mp4: not a video"}
    assert store.load(rec["id"])["lease"] is None, "an ended job holds no lease"


def test_cancel_a_running_job(storage, jobs_root):
    started = threading.Event()

    def slow(ctx):
        started.set()
        for i in range(200):
            ctx.check_cancelled()
            time.sleep(0.05)
        return {}

    m = JobManager("transcode", storage, jobs_root, {"t.slow": slow})
    m.start()
    try:
        rec = m.submit("t.slow", {})
        assert started.wait(10)
        m.cancel(rec["id"])
        assert list(m.watch(rec["id"], timeout=20))[-1]["state"] == CANCELLED
    finally:
        m.stop()


def test_cancel_before_start_never_runs(storage, jobs_root):
    calls = []
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler(calls)})
    rec = m.submit("t.count", {})          # workers not started: stays queued
    assert m.cancel(rec["id"])["state"] == CANCELLED
    m.start()
    time.sleep(0.5)
    m.stop()
    assert calls == [] and m.get(rec["id"])["state"] == CANCELLED


def test_restart_resumes_queued_and_running_jobs(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    queued = new_record("transcode", "t.count", {})
    running = transition(new_record("transcode", "t.count", {}), RUNNING)  # as a crash leaves it
    store.create(queued)
    running["lease"] = {"holder": "gone/1/x", "expires": "2000-01-01T00:00:00+00:00"}  # its runner died
    store.create(running)
    calls = []
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler(calls)})
    m.start()
    try:
        for rec in (queued, running):
            assert list(m.watch(rec["id"], timeout=20))[-1]["state"] == SUCCEEDED
        assert m.get(running["id"])["attempt"] == 2
    finally:
        m.stop()


def test_records_are_written_by_compare_and_swap(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    rec = new_record("transcode", "t.count", {})
    v1 = store.create(rec)
    with pytest.raises(Conflict):
        store.create(rec)  # an id is created once
    loaded, version = store.load_versioned(rec["id"])
    assert version == v1
    store.replace(loaded, version)
    with pytest.raises(Conflict):
        store.replace(loaded, version)  # a writer holding a stale version loses


def test_one_lease_at_a_time(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    rec = new_record("transcode", "t.count", {})
    store.create(rec)
    first = acquire(store, rec["id"], holder="replica-a", ttl=30)
    assert first is not None and first.record["state"] == RUNNING and first.record["attempt"] == 1
    assert acquire(store, rec["id"], holder="replica-b", ttl=30) is None, "a live lease keeps others out"
    first.save()  # renewal by the holder works


def test_a_runner_whose_lease_was_taken_over_stops_writing(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    rec = new_record("transcode", "t.count", {})
    store.create(rec)
    stale = acquire(store, rec["id"], holder="replica-a", ttl=0.2)
    time.sleep(0.4)  # replica-a stalls past its lease
    fresh = acquire(store, rec["id"], holder="replica-b", ttl=30)
    assert fresh is not None and fresh.record["attempt"] == 2
    from vidtune.platform.errors import JobInterrupted

    with pytest.raises(JobInterrupted, match="lease lost"):
        stale.save()
    assert stale.lost and store.load(rec["id"])["lease"]["holder"] == "replica-b"


def test_two_managers_run_each_job_once(storage, jobs_root):
    """Two replicas over one store (a rolling update): every job runs once, every item once."""
    done, lock = [], threading.Lock()

    def handler(ctx):
        for i in range(3):
            ctx.check_cancelled()
            with lock:
                done.append((ctx.job_id, i))
            time.sleep(0.05)
        return {}

    managers = [JobManager("transcode", storage, jobs_root, {"t.items": handler}, workers=2, scan_interval=0.2)
                for _ in range(2)]
    for m in managers:
        m.start()
    try:
        ids = [managers[i % 2].submit("t.items", {})["id"] for i in range(6)]
        for job_id in ids:
            assert list(managers[0].watch(job_id, timeout=30))[-1]["state"] == SUCCEEDED
        assert sorted(done) == sorted((j, i) for j in ids for i in range(3)), "an item ran twice or never"
        assert all(managers[0].store.load(j)["attempt"] == 1 for j in ids)
    finally:
        for m in managers:
            m.stop()


def test_drain_hands_a_running_job_back_and_another_replica_finishes_it(storage, jobs_root):
    started, done = threading.Event(), []

    def handler(ctx):
        for i in range(6):
            if i < len(done):
                continue
            ctx.check_cancelled()
            started.set()
            time.sleep(0.2)
            done.append(i)
        return {"items": len(done)}

    first = JobManager("transcode", storage, jobs_root, {"t.items": handler}, scan_interval=0.2)
    first.start()
    rec = first.submit("t.items", {})
    assert started.wait(10)
    assert first.drain(grace=10) == [rec["id"]]
    first.stop()
    handed_back = first.store.load(rec["id"])
    assert handed_back["state"] == QUEUED and handed_back["lease"] is None
    assert "service is stopping" in handed_back["progress"]["message"]
    second = JobManager("transcode", storage, jobs_root, {"t.items": handler}, scan_interval=0.2)
    second.start()
    try:
        final = list(second.watch(rec["id"], timeout=30))[-1]
        assert final["state"] == SUCCEEDED and final["attempt"] == 2
        assert done == list(range(6)), "each item exactly once across the hand-over"
    finally:
        second.stop()


def test_a_corrupt_or_foreign_object_under_the_jobs_root_is_skipped(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    good = new_record("transcode", "t.count", {})
    store.create(good)
    storage.write_text(f"{jobs_root}/transcode/tc-20200101-000000-aaaaaa.json", "{not json")
    storage.write_text(f"{jobs_root}/transcode/tc-20200101-000000-bbbbbb.json", '{"hello": "world"}')
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler([])}, scan_interval=0.2)
    m.start()  # must not die at start-up
    try:
        assert [r["id"] for r in m.list()[0]] == [good["id"]]
        assert list(m.watch(good["id"], timeout=20))[-1]["state"] == SUCCEEDED
    finally:
        m.stop()


def test_list_pages_newest_first_and_filters(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    recs = []
    for i in range(5):
        rec = new_record("transcode", "t.a" if i % 2 else "t.b", {}, labels={"team": "x" if i < 3 else "y"})
        rec["id"] = f"tc-20260101-00000{i}-abcdef"
        store.create(rec)
        recs.append(rec)
    m = JobManager("transcode", storage, jobs_root, {})
    page, token = m.list(page_size=2)
    assert [r["id"] for r in page] == [recs[4]["id"], recs[3]["id"]] and token == recs[3]["id"]
    page, token = m.list(page_size=2, page_token=token)
    assert [r["id"] for r in page] == [recs[2]["id"], recs[1]["id"]]
    assert [r["id"] for r in m.list(kind="t.a")[0]] == [recs[3]["id"], recs[1]["id"]]
    assert [r["id"] for r in m.list(labels={"team": "y"})[0]] == [recs[4]["id"], recs[3]["id"]]


def test_index_lists_only_recent_ids_between_full_listings(storage, jobs_root, monkeypatch):
    """A refresh lists the ids since the newest known one less the clock skew, re-reads unfinished records
    by id, and a full listing (every `full_every` seconds) brings in an id stamped older than that."""
    from vidtune.platform.jobs import JobIndex

    store = JobStore(storage, jobs_root, "transcode")

    def make(stamp: str, state: str = SUCCEEDED) -> dict:
        rec = new_record("transcode", "t.a", {})
        rec["id"], rec["state"] = f"tc-{stamp}-{secrets.token_hex(3)}", state
        store.create(rec)
        return rec

    old = [make(f"20260101-00{m:02d}00") for m in range(30)]
    running = make("20260101-003000", RUNNING)
    ids_seen: list[list[str]] = []
    real_ids = store.ids
    monkeypatch.setattr(store, "ids", lambda since="": ids_seen.append(real_ids(since)) or ids_seen[-1])

    index = JobIndex(store, full_every=3600)
    index.refresh()  # the first refresh lists everything
    assert len(ids_seen[-1]) == 31 and index.get(old[0]["id"])
    newer = make("20260101-010000")
    straggler = make("20260101-000500")  # stamped by a replica whose clock ran behind: older than the skew
    running["state"] = SUCCEEDED
    store.replace(running, store.load_versioned(running["id"])[1])
    index.refresh()  # incremental: ids from 00:20:00 (the newest, 00:30, less 10 minutes) on
    assert sorted(ids_seen[-1]) == sorted(r["id"] for r in [*old[20:], running, newer])
    assert index.get(newer["id"]) and index.get(running["id"])["state"] == SUCCEEDED
    assert index.get(straggler["id"]) is None
    index._last_full -= 3600  # the next refresh is due a full listing
    index.refresh()
    assert len(ids_seen[-1]) == 33 and index.get(straggler["id"])
    storage.delete(store.uri(old[0]["id"]))
    index._last_full -= 3600
    index.refresh()
    assert index.get(old[0]["id"]) is None  # a deleted record leaves the index at the full listing


def test_cancelling_one_job_stops_its_own_subprocesses_only(storage, jobs_root):
    """Two jobs on one server, each with a child process: a cancel kills the cancelled job's child alone."""
    import subprocess

    started = {}

    def handler(ctx):
        proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
        ctx.processes.add(proc)
        started[ctx.job_id] = proc
        while proc.poll() is None:
            ctx.check_cancelled()
            time.sleep(0.05)
        return {}

    m = JobManager("transcode", storage, jobs_root, {"t.child": handler}, workers=2)
    m.start()
    try:
        a, b = m.submit("t.child", {}), m.submit("t.child", {})
        deadline = time.monotonic() + 20
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        m.cancel(a["id"])
        assert list(m.watch(a["id"], timeout=20))[-1]["state"] == CANCELLED
        assert started[a["id"]].wait(5) is not None
        assert started[b["id"]].poll() is None, "the other job's process was killed"
        started[b["id"]].kill()
        assert list(m.watch(b["id"], timeout=20))[-1]["state"] == SUCCEEDED
    finally:
        m.stop()
