"""`make demo`: the whole pipeline on a generated archive, through the real services on this machine.

Starts a private stack (embedded object store + the gRPC services on free loopback ports), makes a small
broadcaster-style archive (Korean captions, several sizes, stills, damaged files), and runs each stage as
a job of its service, watched with a progress bar. Everything lands under ./demo-out and in the stack's
object store; the stack is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vidtune.platform import stack
from vidtune.platform.client import ServiceClient, watch
from vidtune.platform.objectstore import free_ports
from vidtune.platform.storage import S3Config, Storage, join
from vidtune.samples import make_archive

BUCKET = "s3://vidtune"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def follow(client: ServiceClient, job) -> dict:
    from vidtune.platform.client import job_dict

    final = watch(client, job.id)
    rec = job_dict(final)
    if rec["state"] != "SUCCEEDED":
        raise SystemExit(f"job {rec['id']} ended {rec['state']}: {rec.get('error', {}).get('message', '')}")
    return rec


def transcode_stage(storage: Storage, archive_uri: str) -> dict:
    from vidtune.v1 import transcode_pb2, transcode_pb2_grpc

    say("transcode: archive -> 1280x720 clips and stills (a job of the transcode service)")
    with ServiceClient("transcode") as c:
        job = c.stub(transcode_pb2_grpc.TranscodeServiceStub).SubmitTranscode(transcode_pb2.TranscodeRequest(
            inputs=[join(archive_uri, "media/")], output=join(BUCKET, "transcoded/wan-720p"), profile="wan-720p",
            workers=2), metadata=c.metadata, timeout=30)
        rec = follow(c, job)
    result = rec["result"]
    lines = storage.read_jsonl(result["report"])
    print(f"{int(result['ok'])} ok, {int(result['failed'])} rejected of {int(result['total'])}; "
          f"report {result['report']}")
    for ln in lines:
        if ln["status"] == "ok":
            timing = f" {ln['duration']:.1f}s {ln['fps']:g}fps" if ln["media_type"] == "video" else " still"
            print(f"  ok       {ln['input'].rsplit('/', 1)[-1]:14s} -> {ln['output'].rsplit('/', 1)[-1]} "
                  f"{ln['width']}x{ln['height']}{timing}")
        else:
            print(f"  rejected {ln['input'].rsplit('/', 1)[-1]:14s} {ln['reason']}")
    return result


def quality_stage(storage: Storage, archive_uri: str, transcode: dict) -> dict:
    """Labels + the transcode report -> ingest/probe/filter/stats/split/export as one job of the quality
    service. The report maps each label row to its transcoded clip; a row whose transcode failed is
    rejected with that reason, so the quality report accounts for every item."""
    from vidtune.v1 import quality_pb2, quality_pb2_grpc

    say("quality: ingest labels joined to the transcoded clips, probe and score them, filter with the default "
        "rules, statistics, export")
    out = join(BUCKET, "quality", "archive-wan-720p")
    with ServiceClient("quality") as c:
        job = c.stub(quality_pb2_grpc.QualityServiceStub).SubmitRun(quality_pb2.RunQualityRequest(
            source=join(archive_uri, "labels") + "/", root=archive_uri, transcoded=transcode["report"], output=out,
            val_ratio=0.15, seed=0, workers=2), metadata=c.metadata, timeout=30)
        rec = follow(c, job)
    import io

    import pyarrow.parquet as pq

    clean = pq.read_table(io.BytesIO(storage.read_bytes(join(out, "clean.parquet")))).to_pylist()
    rejected = pq.read_table(io.BytesIO(storage.read_bytes(join(out, "rejected.parquet")))).to_pylist()
    print(f"{int(rec['result']['rows_in'])} rows in = {len(clean)} clean + {len(rejected)} rejected")
    for row in rejected:
        print(f"  rejected {row['id']}: {'; '.join(row['reasons'])[:150]}")
    return {"output": out, "export": join(out, "export"), "clean": clean}


def train_stage(storage: Storage, dataset: str) -> dict:
    from vidtune.v1 import train_pb2, train_pb2_grpc

    say("train: LoRA on the tiny Wan (real DiffSynth classes, random weights) with the cpu-tiny preset")
    out = join(BUCKET, "runs", "demo-lora")
    with ServiceClient("train") as c:
        job = c.stub(train_pb2_grpc.TrainServiceStub).SubmitTrain(train_pb2.TrainRequest(
            preset="cpu-tiny", dataset=dataset, output=out), metadata=c.metadata, timeout=30)
        rec = follow(c, job)
    result = rec["result"]
    print(f"  {int(result['steps'])} steps, final loss {result['final_loss']:.4f}; LoRA {result['lora']}")
    print(f"  checkpoints: {', '.join(f'epoch-{e}' for e in sorted(result.get('epochs', [])))} under "
          f"{join(out, 'checkpoints')}/ (DiffSynth keys, and *.comfyui.safetensors for ComfyUI)")
    return result


def evaluate_stage(storage: Storage, run: dict, quality: dict, local_dir: Path) -> str:
    """Tiny base vs tiny LoRA (every epoch): generate, score against the clean clips of the same
    categories, compare; returns the local path of the HTML report."""
    from vidtune.evaluate.demo import prepare_tiny_metric_models
    from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

    say("evaluate: generate from base and every LoRA epoch, score, compare (tiny random metric models)")
    root = join(BUCKET, "eval", "demo-lora")
    clip_uri, i3d_uri = prepare_tiny_metric_models(root, storage)
    clean_videos = [r for r in quality["clean"] if r["media_type"] == "video"]
    by_category: dict[str, dict] = {}
    for r in clean_videos:
        by_category.setdefault(r["category"], r)
    prompts = [{"id": f"p{i}", "prompt": r["caption"][:300], "category": cat}
               for i, (cat, r) in enumerate(sorted(by_category.items()))][:3]
    storage.write_jsonl(join(root, "prompts.jsonl"), prompts)
    reference = join(root, "reference.jsonl")
    storage.write_jsonl(reference, ({"video": r["transcoded"], "category": r["category"]} for r in clean_videos))
    with ServiceClient("evaluate") as c:
        stub = c.stub(evaluate_pb2_grpc.EvaluateServiceStub)
        follow(c, stub.SubmitGenerate(evaluate_pb2.GenerateRequest(
            prompts=join(root, "prompts.jsonl"), checkpoints=["base", join(run["output"], "checkpoints") + "/"],
            output=join(root, "videos"), seeds=[0, 1, 2], num_frames=17, steps=4), metadata=c.metadata, timeout=30))
        follow(c, stub.SubmitScore(evaluate_pb2.ScoreRequest(
            videos=join(root, "videos") + "/", output=join(root, "scores"), clip_weights=clip_uri, i3d=i3d_uri,
            reference=reference, fvd_size=64), metadata=c.metadata, timeout=30))
        rec = follow(c, stub.SubmitCompare(evaluate_pb2.CompareRequest(
            scores=[join(root, "scores")], output=join(root, "report")), metadata=c.metadata, timeout=30))
    report = rec["result"].get("report", join(root, "report", "report.html"))
    local = download_prefix(storage, join(root, "report"), local_dir / "evaluation")
    print(f"  report: {report}")
    return str(local / "report.html")


REPORT_FILES = (".html", ".md", ".json", ".png")


def download_prefix(storage: Storage, prefix: str, local: Path) -> Path:
    """Copy a report (pages, figures, JSON) from the object store, so a browser can open it from disk."""
    prefix = prefix.rstrip("/") + "/"
    for uri in storage.list(prefix):
        rel = uri[len(prefix):]
        if rel.endswith(REPORT_FILES) and (rel.count("/") == 0 or rel.startswith("figures/")):
            storage.download(uri, local / rel)
    return local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtune-demo", description=__doc__)
    parser.add_argument("--out", default="demo-out", help="local directory for the archive and reports")
    parser.add_argument("--keep-running", action="store_true", help="leave the demo stack running even after a failure")
    parser.add_argument("--stop", action="store_true", help="stop the stack at the end instead of leaving the console up")
    parser.add_argument("--base-port", type=int, default=None, help="stack ports base, base+1, ... "
                                                                     "(default: the defaults, else free ports)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    home = out / "stack"
    os.environ["VIDTUNE_HOME"] = str(home)   # the demo's own stack, apart from a developer's `vidtune up`
    t0 = time.monotonic()

    say("starting the local stack: SeaweedFS object store + services on loopback")
    stack.down(home)  # a previous demo interrupted mid-way
    state = stack.up(home=home, base_port=args.base_port or (free_ports(1)[0] if _defaults_taken() else None))
    os.environ.update(state["s3"])
    for svc, port in state["ports"].items():
        print(f"  {svc:10s} 127.0.0.1:{port}")
    finished = False
    try:
        storage = Storage(S3Config.from_env())
        say("making a sample archive (Korean captions, 1080p/720p/portrait/10-bit clips, stills, damaged files)")
        items = make_archive(out / "archive")
        archive_uri = join(BUCKET, "archive")
        for path in sorted((out / "archive").rglob("*")):
            if path.is_file():
                storage.upload(path, join(archive_uri, str(path.relative_to(out / "archive"))))
        print(f"  {len(items)} items ({sum(i.damaged for i in items)} damaged) uploaded to {archive_uri}/")
        transcode = transcode_stage(storage, archive_uri)
        quality = quality_stage(storage, archive_uri, transcode)
        run = train_stage(storage, quality["export"])
        report = evaluate_stage(storage, run, quality, out)
        local_q = download_prefix(storage, quality["output"], out / "quality")
        local_t = download_prefix(storage, run["output"], out / "training")
        say("summary: verdict per checkpoint against the base model (tiny random models: meaningless by design)")
        from vidtune.pipeline.cli import verdict_lines
        from vidtune.pipeline.runner import verdicts_of

        print("  " + verdict_lines(verdicts_of(json.loads(
            (Path(report).parent / "report.json").read_text(encoding="utf-8")))).replace("\n", "\n  "))
        say(f"reports: local files under {out}, kept after the stack stops (open in a browser)")
        print(f"  quality statistics  {local_q / 'stats.html'}")
        print(f"  quality filter      {local_q / 'filter.html'}")
        print(f"  training            {local_t / 'report.html'}")
        print(f"  evaluation          {report}")
        finished = True
    finally:
        if args.stop or not (finished or args.keep_running):
            say("stopping the stack")
            print("  stopped: " + ", ".join(stack.down(home)))
    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s; files under {out}")
    if state.get("console") and not args.stop:
        print(f"console: {state['console']}  (token: {state['token']}; stop it with `make down`)")
    return 0


def _defaults_taken() -> bool:
    from vidtune.platform.server import DEFAULT_PORTS

    return not all(stack._port_free(p) for p in DEFAULT_PORTS.values())


if __name__ == "__main__":
    sys.exit(main())
