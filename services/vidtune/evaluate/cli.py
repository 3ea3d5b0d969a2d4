"""`vidtune eval generate|score|compare`: in this process by default, as a service job with --submit."""
from __future__ import annotations

import argparse
import json
import sys

from vidtune.platform.client import CliProgress, add_client_args, submit_and_follow


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", aliases=["evaluate"],
                       help="generate samples per checkpoint, score them, compare checkpoints in a report")
    s = p.add_subparsers(dest="action", required=True)

    def job_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--submit", action="store_true", help="run as a job of the evaluate service")
        q.add_argument("--backend", default="", choices=["inprocess", "local", "kubernetes"],
                       help="where the submitted job runs (implies --submit): the service's threads, a worker "
                            "subprocess beside it, or a Kubernetes Job (generation on a GPU node)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        add_client_args(q)

    g = s.add_parser("generate", help="prompts x checkpoints x seeds -> videos with their settings")
    g.add_argument("--prompts", required=True, help="prompt set (.jsonl/.json/.yaml/.csv) path or URI")
    g.add_argument("--checkpoint", action="append", required=True, dest="checkpoints",
                   help="'base', a LoRA .safetensors, label=URI, or a directory of epoch-N.safetensors (repeatable)")
    g.add_argument("--out", required=True, help="output directory or s3:// prefix")
    g.add_argument("--model", default="tiny-ti2v", help="model spec name (vidtune.models)")
    g.add_argument("--weights", help="model weights root (path or URI); not needed for tiny models")
    g.add_argument("--seeds", default="0,1", help="comma-separated seeds: samples per prompt")
    g.add_argument("--height", type=int, default=64)
    g.add_argument("--width", type=int, default=64)
    g.add_argument("--num-frames", type=int, default=17)
    g.add_argument("--steps", type=int, default=4)
    g.add_argument("--cfg-scale", type=float, default=1.0)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--fps", type=float, default=16.0)
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (V100 GPUs have no bf16 units: float16 there)")
    job_args(g)
    g.set_defaults(func=cmd_generate)

    sc = s.add_parser("score", help="every metric for every video: one JSON record per video, FVD per set")
    sc.add_argument("--videos", required=True, help="video file, directory or s3:// prefix")
    sc.add_argument("--out", required=True, help="output directory or s3:// prefix")
    sc.add_argument("--prompts", help="prompt set for videos without a settings JSON (matched by id = file stem)")
    sc.add_argument("--clip-model", default=None, help="open_clip architecture (default: xlm-roberta-base-ViT-B-32)")
    sc.add_argument("--clip-weights", help="CLIP weights file or bundle directory (path or URI)")
    sc.add_argument("--i3d", help="I3D TorchScript (i3d_torchscript.pt) path or URI, for FVD")
    sc.add_argument("--reference", help="reference clips: directory with category subfolders, or a manifest")
    sc.add_argument("--sample-frames", type=int, default=16)
    sc.add_argument("--fvd-size", type=int, default=224)
    sc.add_argument("--grades", help="grades config (default: the packaged grades.yaml)")
    job_args(sc)
    sc.set_defaults(func=cmd_score)

    c = s.add_parser("compare", help="base vs LoRA and epoch vs epoch: Markdown + HTML report")
    c.add_argument("--scores", action="append", required=True, help="a `score` output (repeatable)")
    c.add_argument("--out", required=True, help="report directory or s3:// prefix")
    c.add_argument("--baseline", default="base")
    c.add_argument("--grades", help="grades config (default: the packaged grades.yaml)")
    c.add_argument("--no-contact-sheets", action="store_true")
    job_args(c)
    c.set_defaults(func=cmd_compare)


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from vidtune.platform.errors import InvalidArgument

        raise InvalidArgument(f"--seeds must be comma-separated integers, got {text!r}") from None


def _generate_spec(args) -> dict:
    return {"prompts": args.prompts, "checkpoints": args.checkpoints, "output": args.out, "model": args.model,
            "weights": args.weights or "", "seeds": _seeds(args.seeds), "height": args.height,
            "width": args.width, "num_frames": args.num_frames, "steps": args.steps, "cfg_scale": args.cfg_scale,
            "negative_prompt": args.negative_prompt, "fps": args.fps, "dtype": args.dtype}


def _score_spec(args) -> dict:
    return {"videos": args.videos, "output": args.out, "prompts": args.prompts or "",
            "clip_model": args.clip_model or "", "clip_weights": args.clip_weights or "", "i3d": args.i3d or "",
            "reference": args.reference or "", "sample_frames": args.sample_frames, "fvd_size": args.fvd_size,
            "grades": args.grades or ""}


def _compare_spec(args) -> dict:
    return {"scores": args.scores, "output": args.out, "baseline": args.baseline, "grades": args.grades or "",
            "no_contact_sheets": args.no_contact_sheets}


def _submit(args, rpc_name: str, request_cls: str, spec: dict) -> int:
    from vidtune.platform.storage import absolute, absolute_locations
    from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

    from .tasks import KINDS

    # The service may run in another directory: local paths are sent absolute.
    spec = absolute_locations(spec, next(k for k in KINDS if k.rpc == rpc_name).locations)
    if "checkpoints" in spec:  # 'base', a path, or label=path
        spec["checkpoints"] = [c if c == "base" else "=".join([*c.split("=")[:-1], absolute(c.split("=")[-1])])
                               for c in spec["checkpoints"]]
    request = getattr(evaluate_pb2, request_cls)(**spec, backend=args.backend)
    return submit_and_follow("evaluate", args, lambda cl: getattr(
        cl.stub(evaluate_pb2_grpc.EvaluateServiceStub), rpc_name)(request, metadata=cl.metadata, timeout=cl.timeout))


def _run(name: str, spec: dict, quiet: bool, unit: str) -> dict:
    """In-process: the same validation and handler as a service job, reporting to a progress bar."""
    from vidtune.platform.kinds import by_name, run_job

    from .tasks import KINDS

    with CliProgress(name.split(".")[1], unit, enabled=not quiet) as bar:
        return run_job(by_name(KINDS)[name], spec, bar)


def cmd_generate(args) -> int:
    spec = _generate_spec(args)
    if args.submit or args.backend:
        return _submit(args, "SubmitGenerate", "GenerateRequest", spec)
    result = _run("evaluate.generate", spec, args.quiet, "video")
    print(f"{result['generated']} generated, {result['skipped']} already there, {result['failed']} failed "
          f"of {result['total']}; videos: {result['videos']}", file=sys.stderr)
    for f in result["failures"]:
        print(f"  failed {f['video']}: {f['error']}", file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, ensure_ascii=False))
    return 3 if result["failed"] else 0


def cmd_score(args) -> int:
    spec = _score_spec(args)
    if args.submit or args.backend:
        return _submit(args, "SubmitScore", "ScoreRequest", spec)
    result = _run("evaluate.score", spec, args.quiet, "video")
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for r in result["rejections"]:
        print(f"  rejected {r['video']}: {r['error']}", file=sys.stderr)
    print(f"{result['scored']} scored, {result['rejected']} rejected; records: {spec['output']}", file=sys.stderr)
    print(json.dumps({"checkpoints": result["checkpoints"], "counts": result["counts"]}, ensure_ascii=False))
    return 0


def cmd_compare(args) -> int:
    spec = _compare_spec(args)
    if args.submit or args.backend:
        return _submit(args, "SubmitCompare", "CompareRequest", spec)
    result = _run("evaluate.compare", spec, args.quiet, "step")
    print(f"report: {result['report']}", file=sys.stderr)
    print(json.dumps(result, ensure_ascii=False))
    return 0
