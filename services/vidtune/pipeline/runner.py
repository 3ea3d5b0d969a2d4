"""Run the stage graph: skip what is done, resume what is not, stop at the first stage that fails.

A stage's state lives beside its outputs, in `<work>/<stage>/_stage.json` (spec, digest, job id, state,
result, error), so `status` needs nothing but the work prefix and a re-run knows what is finished. A
finished stage is skipped only when it was asked exactly the same (its spec digest, which includes the
outputs of the stages before it); otherwise it runs again, and since every job is idempotent (outputs
keyed by input and settings, training resuming from its saved state) it picks up where it stopped.

How a stage's job runs is an executor: in this process through the services' own handlers
(`InProcess`), or submitted to the services over gRPC and followed to its end (`Submitted`).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import time
from typing import Callable

from vidtune.platform.errors import FailedPrecondition, NotFound, Unavailable
from vidtune.platform.storage import Storage

from .stages import STAGES, Pipeline, Stage, spec_digest, stages_until

Log = Callable[[str], None]
DONE, FAILED, RUNNING = "SUCCEEDED", "FAILED", "RUNNING"


def status_uri(p: Pipeline, stage: str) -> str:
    return p.out(stage, "_stage.json")


def load_status(storage: Storage, p: Pipeline, stage: str) -> dict | None:
    try:
        return json.loads(storage.read_text(status_uri(p, stage)))
    except NotFound:
        return None


def _save_status(storage: Storage, p: Pipeline, status: dict) -> None:
    storage.write_text(status_uri(p, status["stage"]), json.dumps(status, ensure_ascii=False, indent=2,
                                                                   default=str), "application/json")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ what each stage must have produced

def _count(result: dict, key: str) -> int:
    return int(float(result.get(key) or 0))


# A job can end well yet leave the next stage nothing to work on: that is a failed stage.
NOTHING_PRODUCED: dict[str, Callable[[dict], str | None]] = {
    "transcode": lambda r: None if _count(r, "ok") else "no input was transcoded",
    "quality": lambda r: None if _count(r, "clean") else "no row passed the quality rules",
    "export": lambda r: None if _count(r, "rows") else "nothing was exported",
    "generate": lambda r: None if _count(r, "generated") + _count(r, "skipped") else "no video was generated",
    "score": lambda r: None if _count(r, "scored") else "no video was scored",
}


# ------------------------------------------------------------------ inputs the pipeline derives

def _clean_rows(storage: Storage, p: Pipeline) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(p.out("quality", "clean.parquet"))))
    return table.to_pylist()


def write_prompts(storage: Storage, p: Pipeline, spec: dict) -> None:
    """One prompt per category, from the captions of the clean clips (when no prompt set is given)."""
    if p.get("generate", "prompts"):
        return
    by_category: dict[str, dict] = {}
    for row in _clean_rows(storage, p):
        if row["media_type"] == "video" and row.get("caption"):
            by_category.setdefault(row.get("category") or "", row)
    prompts = [{"id": f"p{i}", "prompt": r["caption"][:300], "category": cat}
               for i, (cat, r) in enumerate(sorted(by_category.items()))][: p.get("generate", "max_prompts")]
    if not prompts:
        raise FailedPrecondition("generate: no clean video row has a caption to prompt with; give "
                                 "stages.generate.prompts")
    storage.write_jsonl(spec["prompts"], prompts)


def write_reference(storage: Storage, p: Pipeline, spec: dict) -> None:
    """The clean transcoded clips as the FVD reference (when none is given), and tiny metric models when asked."""
    if p.get("score", "tiny_metric_models"):
        from vidtune.evaluate.demo import prepare_tiny_metric_models

        prepare_tiny_metric_models(p.out("score"), storage)
    if p.get("score", "reference"):
        return
    # In a pipeline every clean row has a transcoded clip: a row without one was rejected at ingest.
    rows = [{"video": r["transcoded"], "category": r.get("category") or ""}
            for r in _clean_rows(storage, p) if r["media_type"] == "video"]
    storage.write_jsonl(spec["reference"], rows)


PREPARE = {"prompts": write_prompts, "reference": write_reference}


# ------------------------------------------------------------------ executors

class InProcess:
    """Each stage's job runs here, through the handler its service runs (same spec, same code path)."""

    def __init__(self, storage: Storage, progress: Callable[[str], Callable[[int, int, str], None]] | None = None):
        self.storage = storage
        self.progress = progress or (lambda name: lambda d, t, m: None)

    def run(self, stage: Stage, spec: dict, status: dict, remember: Callable[[dict], None]) -> dict:
        from vidtune.platform.kinds import by_name, run_job
        from vidtune.registry import module

        kind = by_name(module(stage.service, "tasks").KINDS)[stage.kind]
        return run_job(kind, spec, self.progress(stage.name), self.storage)


class Submitted:
    """Each stage's job is submitted to its service and followed to its end (the next stage needs its
    outputs). A stage whose job is still running from an earlier invocation is followed, not resubmitted."""

    def __init__(self, show_progress: bool = False):
        self.show_progress = show_progress

    def run(self, stage: Stage, spec: dict, status: dict, remember: Callable[[dict], None]) -> dict:
        import importlib

        from vidtune.platform.client import ServiceClient, job_dict, watch

        pb2 = importlib.import_module(f"vidtune.v1.{stage.service}_pb2")
        grpc_mod = importlib.import_module(f"vidtune.v1.{stage.service}_pb2_grpc")
        stub_name = f"{stage.service.capitalize()}ServiceStub"
        with ServiceClient(stage.service) as client:
            job_id = status.get("job_id")  # set only when this stage's job, with this spec, is under way
            if not job_id:
                method, message = stage.rpc
                request = getattr(pb2, message)(**request_fields(stage, spec))
                job = getattr(client.stub(getattr(grpc_mod, stub_name)), method)(
                    request, metadata=client.metadata, timeout=client.timeout)
                job_id = job.id
                remember({"job_id": job_id})
            rec = job_dict(watch(client, job_id, show_bar=self.show_progress))
        if rec["state"] != DONE:
            raise FailedPrecondition(f"job {job_id} ended {rec['state']}: "
                                     f"{(rec.get('error') or {}).get('message', '')}".rstrip(": "))
        return rec.get("result", {})


def stage_job(stage: Stage, record: dict, spec_uri: str, settings):
    """The batch/v1 Job that runs one stage: `vidtune worker` creates the job record from the stored spec
    (so no service needs to be involved) and runs the stage's handler; a retried pod resumes it. GPUs,
    deadline and node choice come from the kind's own placement, as when its service launches it."""
    from vidtune.platform import kube
    from vidtune.platform.kinds import placement_of
    from vidtune.registry import module

    command = ["vidtune", "worker", "--service", stage.service, "--job-id", record["id"], "--spec", spec_uri,
               "--kind", stage.kind]
    placement = placement_of(module(stage.service, "tasks").KINDS)(record)
    labels = {**placement.pop("labels", {}), "vidtune.io/pipeline-stage": stage.name}
    return kube.worker_job(record, settings, command=command, labels=labels, **placement)


def shard_spec_uri(p: Pipeline, stage: Stage, index: int | str) -> str:
    return p.out(stage.name, "_shards", f"{index}.json")


def fanout_job(stage: Stage, p: Pipeline, job_id: str, shards: int, settings):
    """The Indexed Job of a fanned-out stage: pod i runs `vidtune worker` on the job record `<job_id>-<i>`,
    created from the shard spec the runner wrote at `<work>/<stage>/_shards/<i>.json`."""
    from vidtune.platform import kube
    from vidtune.platform.jobs import new_record
    from vidtune.platform.kinds import placement_of
    from vidtune.registry import module

    index = f"$({kube.COMPLETION_INDEX})"
    command = ["vidtune", "worker", "--service", stage.service, "--job-id", f"{job_id}-{index}",
               "--spec", shard_spec_uri(p, stage, index), "--kind", stage.fanout.kind]
    record = new_record(stage.service, stage.fanout.kind, {}, backend="kubernetes") | {"id": job_id}
    gpus = placement_of(module(stage.service, "tasks").KINDS)(record)["gpus"]  # per pod, as the kind declares
    return kube.indexed_worker_job(record, settings, shards, command, gpus=gpus,
                                   labels={"vidtune.io/pipeline-stage": stage.name})


def shards_of(stage: Stage, p: Pipeline, spec: dict) -> int:
    """Pods of the stage's Indexed Job: 1 (one plain Job) for a stage that does not fan out."""
    return int(p.get(stage.name, "shards")) if stage.fanout and stage.fanout.wanted(spec) else 1


class OnKubernetes:
    """Each stage is a Kubernetes Job created in order and followed to its end; the stage's result is read
    from the job record its worker wrote. A stage that fans out (`Stage.fanout`, `shards` > 1) is one
    Indexed Job of that many pods, then its merge. The work prefix must be in the object store the pods reach."""

    POLL_SECONDS = 5.0  # how often a Job's status is read

    def __init__(self, storage: Storage, pipeline: Pipeline, settings=None, api=None, poll_seconds: float | None = None):
        from vidtune.platform import kube

        self.storage, self.pipeline, self.api = storage, pipeline, api
        self.poll_seconds = self.POLL_SECONDS if poll_seconds is None else poll_seconds
        self.settings = settings or kube.ClusterSettings.from_env()

    def run(self, stage: Stage, spec: dict, status: dict, remember: Callable[[dict], None]) -> dict:
        spec = stage.on_cluster(spec) if stage.on_cluster else spec
        shards = shards_of(stage, self.pipeline, spec)
        if shards > 1:
            self._run_shards(stage, spec, status, remember, shards)
            if stage.fanout.merge is not None:
                return stage.fanout.merge(self.storage, spec, shards)
        return self._run_one(stage, spec, status, remember)

    def _follow(self, name: str):
        from vidtune.platform import kube

        while True:
            st = kube.read_status(name, self.settings.namespace, self.api)
            phase = kube.job_phase(st)
            if phase in (DONE, FAILED, "MISSING"):
                return phase, st
            time.sleep(self.poll_seconds)

    def _record(self, service: str, job_id: str) -> dict | None:
        from vidtune.platform.jobs import JobStore
        from vidtune.platform.settings import jobs_root

        try:
            return JobStore(self.storage, jobs_root(), service).load(job_id)
        except NotFound:
            return None

    def _run_one(self, stage: Stage, spec: dict, status: dict, remember: Callable[[dict], None]) -> dict:
        from vidtune.platform import kube
        from vidtune.platform.jobs import new_record

        job_id, name = status.get("job_id"), status.get("k8s_job")
        if not job_id:
            record = new_record(stage.service, stage.kind, spec, backend="kubernetes")
            spec_uri = self.pipeline.out(stage.name, "_spec.json")
            self.storage.write_text(spec_uri, json.dumps(spec, ensure_ascii=False), "application/json")
            job = kube.submit(stage_job(stage, record, spec_uri, self.settings), self.api)
            job_id, name = record["id"], job.metadata.name
            remember({"job_id": job_id, "k8s_job": name})
        phase, _ = self._follow(name)
        record = self._record(stage.service, job_id)
        if record is None:
            raise FailedPrecondition(f"Kubernetes Job {name} ended {phase} without a job record")
        if record["state"] != DONE:
            raise FailedPrecondition(f"job {job_id} (Kubernetes Job {name}) ended {record['state']}: "
                                     f"{(record.get('error') or {}).get('message', '')}")
        return record["result"]

    def _run_shards(self, stage: Stage, spec: dict, status: dict, remember: Callable[[dict], None],
                    shards: int) -> list[dict]:
        """Create (or, resumed, follow) the stage's Indexed Job; every shard's result, or FailedPrecondition
        naming each failed index and why."""
        from vidtune.platform import kube
        from vidtune.platform.jobs import new_job_id

        base, name = status.get("shards_job_id"), status.get("shards_k8s_job")
        if not base or status.get("shards") != shards:
            base = new_job_id(stage.service)
            for i in range(shards):
                self.storage.write_text(shard_spec_uri(self.pipeline, stage, i),
                                        json.dumps(stage.fanout.shard(spec, i, shards), ensure_ascii=False),
                                        "application/json")
            name = kube.submit(fanout_job(stage, self.pipeline, base, shards, self.settings), self.api).metadata.name
            remember({"shards_job_id": base, "shards_k8s_job": name, "shards": shards})
        phase, st = self._follow(name)
        records = [self._record(stage.service, f"{base}-{i}") for i in range(shards)]
        problems = shard_problems(st, records)
        if problems:
            why = f"; {kube.failure_reason(st)}" if phase in kube.ENDED_BADLY else ""
            raise FailedPrecondition(f"{len(problems)} of {shards} shards failed (Indexed Job {name}): "
                                     + "; ".join(problems) + why)
        return [r["result"] for r in records]


def shard_problems(status, records: list[dict | None]) -> list[str]:
    """Per failed index of an ended Indexed Job: which shard (its job record) and why."""
    from vidtune.platform import kube

    n = len(records)
    given_up = set(kube.failed_indexes(status))
    problems = []
    for i, rec in enumerate(records):
        if rec is not None and rec["state"] == DONE:
            continue
        if rec is not None and rec["state"] == FAILED:
            why = (rec.get("error") or {}).get("message") or "failed"
        elif rec is None:
            why = "no job record: its pod never started the work"
        else:
            why = f"its job record is still {rec['state']}"
        if given_up and i not in given_up:
            continue  # not given up on, only stopped when the Job failed
        problems.append(f"shard {i} of {n} (job {rec['id'] if rec else '-'}): {why}")
    return problems


def render_jobs(p: Pipeline, storage: Storage, until: str | None, settings) -> list[tuple[str, object]]:
    """The Jobs `run --backend kubernetes` creates, in order, for `--dry-run`, each with comment lines
    saying what it runs. Every stage is rendered: a Job names only its spec's URI below `<work>/<stage>/`,
    which `pipeline run` writes just before creating it; a spec field that needs an earlier stage's result
    is shown as a placeholder naming where that value will be read."""
    from vidtune.platform.jobs import new_job_id, new_record

    out, results, store_away = [], {}, None
    for stage in stages_until(until):
        spec = stage.spec(p, results)
        spec = stage.on_cluster(spec) if stage.on_cluster else spec
        try:  # a stage done before is shown with its result; rendering needs no store, so none answering is noted
            st = None if store_away else load_status(storage, p, stage.name)
        except (Unavailable, FailedPrecondition) as e:  # unreachable, or refusing these settings
            store_away, st = str(e), None
            out.append((f"{e}: every stage is shown as not run yet (a run skips the ones it finds done)", None))
        done = bool(st) and st.get("state") == DONE
        results[stage.name] = st["result"] if done else (stage.expected(p) if stage.expected else {})
        shards = shards_of(stage, p, spec)
        shown = json.dumps(spec, ensure_ascii=False, default=str)
        if shards > 1:
            record_id = new_job_id(stage.service)
            lines = [f"stage {stage.name}: one Indexed Job of {shards} pods; pod i runs {stage.fanout.kind} on "
                     f"every {shards}-th item from i, its spec at {shard_spec_uri(p, stage, '<i>')}",
                     f"the stage's spec, which each shard's narrows: {shown}"]
            if stage.fanout.merge is not None:
                lines.append(f"then `pipeline run` merges the {shards} shards' outputs into the stage's result")
            out.append(("\n".join(lines), fanout_job(stage, p, record_id, shards, settings)))
            if stage.fanout.merge is not None:
                continue
            intro = f"stage {stage.name}: after its shards, {stage.kind} (the merge; it finds every shard's work done)"
        else:
            intro = f"stage {stage.name}: {stage.kind}"
        record = new_record(stage.service, stage.kind, spec, backend="kubernetes")
        out.append((f"{intro}; spec at {p.out(stage.name, '_spec.json')}: {shown}",
                    stage_job(stage, record, p.out(stage.name, "_spec.json"), settings)))
    return out


def request_fields(stage: Stage, spec: dict) -> dict:
    """A stage's spec as the fields of its Submit request (the proto names the spec already uses)."""
    if stage.kind == "train.run":
        import yaml

        fields = {k: v for k, v in spec.items() if k != "config"}
        return fields | {"config_yaml": yaml.safe_dump(spec["config"]) if spec["config"] else ""}
    return spec


# ------------------------------------------------------------------ the run

class StageFailed(FailedPrecondition):
    pass


# What an executor remembers of a stage's jobs (see `remember`), kept when the stage is resumed.
RESUMABLE = ("job_id", "k8s_job", "shards_job_id", "shards_k8s_job", "shards")


def run(p: Pipeline, executor, storage: Storage, until: str | None = None, log: Log = print) -> dict[str, dict]:
    """Run every stage up to `until` in order; returns each stage's result. Raises StageFailed (with the
    stage's state file written) when a stage fails or produces nothing."""
    results: dict[str, dict] = {}
    upstream = ""
    for stage in stages_until(until):
        spec = stage.spec(p, results)
        digest = spec_digest(spec, upstream)
        status = load_status(storage, p, stage.name) or {}
        if status.get("state") == DONE and status.get("digest") == digest:
            log(f"{stage.name}: done already ({status.get('job_id') or 'in-process'}), skipped")
            results[stage.name] = status["result"]
            upstream = f"{digest} {status['finished']}"
            continue
        resumed = bool(status) and status.get("digest") == digest
        # A stage still running from an earlier invocation keeps its jobs, to be followed, not created again.
        running = {k: v for k, v in status.items() if k in RESUMABLE} if resumed and status.get("state") == RUNNING else {}
        status = {"stage": stage.name, "service": stage.service, "kind": stage.kind, "spec": spec,
                  "digest": digest, "state": RUNNING, "job_id": "", **running,
                  "result": {}, "error": "", "started": _now(), "finished": "", "seconds": 0.0}
        _save_status(storage, p, status)
        log(f"{stage.name}: {'resuming' if resumed else 'running'} {stage.kind}")
        t0 = time.monotonic()

        def remember(values: dict, status=status) -> None:
            status.update(values)
            _save_status(storage, p, status)

        try:
            if stage.prepare:
                PREPARE[stage.prepare](storage, p, spec)
            result = executor.run(stage, spec, status, remember)
            empty = NOTHING_PRODUCED.get(stage.name, lambda r: None)(result)
            if empty:
                raise FailedPrecondition(empty)
        except Exception as e:  # the stage fails; its state says why, the run stops here
            status.update(state=FAILED, error=f"{type(e).__name__}: {e}" if not str(e) else str(e),
                          finished=_now(), seconds=round(time.monotonic() - t0, 3))
            _save_status(storage, p, status)
            raise StageFailed(f"stage {stage.name} failed: {status['error']}") from e
        status.update(state=DONE, result=result, finished=_now(), seconds=round(time.monotonic() - t0, 3))
        _save_status(storage, p, status)
        results[stage.name] = result
        upstream = f"{digest} {status['finished']}"
        log(f"{stage.name}: done in {status['seconds']:.1f} s")
    return results


def status(p: Pipeline, storage: Storage) -> list[dict]:
    """Every stage at a glance: its state, job, time, error, and whether its settings changed since."""
    rows, results, upstream = [], {}, ""
    for stage in STAGES:
        st = load_status(storage, p, stage.name)
        row = {"stage": stage.name, "kind": stage.kind, "state": "NOT STARTED", "job_id": "", "seconds": 0.0,
               "error": "", "output": p.out(stage.name)}
        if st:
            row.update(state=st["state"], job_id=st.get("job_id", ""), seconds=st.get("seconds", 0.0),
                       error=st.get("error", ""))
            try:
                changed = st["state"] == DONE and spec_digest(stage.spec(p, results), upstream) != st["digest"]
            except KeyError:  # an earlier stage has no result yet
                changed = False
            if changed:
                row["state"] = "STALE"  # finished with other settings or inputs: the next run redoes it
            results[stage.name] = st.get("result", {})
            upstream = f"{st['digest']} {st.get('finished', '')}"
        rows.append(row)
    return rows


def verdicts(storage: Storage, p: Pipeline) -> list[dict]:
    return verdicts_of(json.loads(storage.read_text(p.out("compare", "report.json"))))


def verdicts_of(report: dict) -> list[dict]:
    """Per checkpoint of a comparison report (report.json): its grade and its overall verdicts against
    the baseline."""
    out = []
    for name, row in report.get("checkpoints", {}).items():
        against = {d["metric"]: d["verdict"] for d in report.get("deltas", [])
                   if d.get("scope") == "overall" and d.get("b") == name and d.get("a") == report.get("baseline")}
        out.append({"checkpoint": name, "grade": row.get("grade"), "verdicts": against})
    return out

