"""Evaluation job kinds: map a submitted spec onto the generate / score / compare cores.

Specs (field names as in protos/vidtune/v1/evaluate.proto; empty/zero values mean "the default"):
    evaluate.generate  prompts, checkpoints[], output, model, weights, seeds[], height, width, num_frames, steps,
                       cfg_scale, negative_prompt, fps
    evaluate.score     videos, output, prompts, clip_model, clip_weights, i3d, reference, sample_frames,
                       fvd_size, grades
    evaluate.compare   scores[], output, baseline, grades, no_contact_sheets
"""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobContext
from vidtune.platform.kinds import JobKind, handlers
from vidtune.platform.shards import shard_of


def generation_settings(spec: dict):
    from .generate import GenerationSettings

    d = GenerationSettings()
    return GenerationSettings(
        model=spec.get("model") or d.model, weights=spec.get("weights") or None,
        seeds=[int(s) for s in spec.get("seeds") or d.seeds], height=int(spec.get("height") or d.height),
        width=int(spec.get("width") or d.width), num_frames=int(spec.get("num_frames") or d.num_frames),
        steps=int(spec.get("steps") or d.steps), cfg_scale=float(spec.get("cfg_scale") or d.cfg_scale),
        negative_prompt=spec.get("negative_prompt") or "", fps=float(spec.get("fps") or d.fps),
        device=spec.get("device") or d.device, dtype=spec.get("dtype") or d.dtype)


def score_settings(spec: dict):
    from .clipscore import DEFAULT_CLIP_MODEL
    from .scoring import ScoreSettings

    d = ScoreSettings()
    return ScoreSettings(
        clip_model=spec.get("clip_model") or DEFAULT_CLIP_MODEL, clip_weights=spec.get("clip_weights") or None,
        i3d=spec.get("i3d") or None, reference=spec.get("reference") or None,
        sample_frames=int(spec.get("sample_frames") or d.sample_frames),
        fvd_size=int(spec.get("fvd_size") or d.fvd_size), grades=spec.get("grades") or None,
        device=spec.get("device") or d.device)


def _generate_problems(spec: dict) -> list[str]:
    try:
        generation_settings(spec).validate()
    except InvalidArgument as e:
        return [str(e)]
    return []


def _checkpoint_locations(spec: dict) -> dict[str, list[str]]:
    """Checkpoints may be the word "base" or "label=URI"; the URIs are storage locations."""
    return {"checkpoints": [c.split("=", 1)[-1] for c in spec.get("checkpoints") or [] if c != "base"]}


def generate(ctx: JobContext) -> dict:
    from .generate import generate_samples

    ctx.set_result(videos=ctx.spec["output"])
    summary = generate_samples(ctx.spec["prompts"], list(ctx.spec["checkpoints"]), ctx.spec["output"],
                               generation_settings(ctx.spec), ctx.storage, ctx.progress, ctx.check_cancelled,
                               scratch=ctx.scratch, shard=shard_of(ctx.spec))
    return generate_result(summary)


def generate_result(summary: dict) -> dict:
    # The first failures with their reasons ride in the result, so a caller sees why at once.
    return {"videos": summary["out"], "generated": summary["generated"], "skipped": summary["skipped"],
            "failed": len(summary["failed"]), "total": summary["total"], "failures": summary["failed"][:50]}


def merge_generate(storage, spec: dict, count: int) -> dict:
    """The result of a generation fanned out over `count` GPU pods, from their summaries."""
    from .generate import merge_summaries

    return generate_result(merge_summaries(storage, spec["output"], count))


def score(ctx: JobContext) -> dict:
    from vidtune.platform.storage import join

    from .scoring import score_videos

    out = ctx.spec["output"]
    ctx.set_result(scores=out)
    summary = score_videos(ctx.spec["videos"], out, ctx.spec.get("prompts") or None, score_settings(ctx.spec),
                           ctx.storage, ctx.progress, ctx.check_cancelled)
    return {"scores": out, "summary": join(out, "summary.json"), "records": join(out, "scores.jsonl"),
            "scored": summary["counts"]["scored"], "rejected": summary["counts"]["rejected"],
            "counts": summary["counts"], "checkpoints": summary["checkpoints"], "warnings": summary["warnings"],
            "rejections": summary["rejected"][:50]}


def compare(ctx: JobContext) -> dict:
    from .compare import compare_scores

    scores = ctx.spec["scores"]
    res = compare_scores([scores] if isinstance(scores, str) else list(scores), ctx.spec["output"],
                         ctx.spec.get("baseline") or "base", ctx.spec.get("grades") or None, ctx.storage,
                         contact_sheets=not ctx.spec.get("no_contact_sheets"), progress=ctx.progress)
    return {"report": res["report"], "markdown": res["markdown"], "json": res["json"]}


def evaluate_placement(record: dict) -> dict:
    """Kubernetes Job overrides of an evaluation record: one GPU for generation (one pipeline on one
    device), none for scoring and comparison."""
    from vidtune.platform.launchers import timeout_of

    return {"gpus": 1 if record["kind"] == "evaluate.generate" else 0,
            "active_deadline_seconds": int(timeout_of(record["spec"]))}


def _generate_spec(request) -> dict:
    from vidtune.platform.server import proto_to_dict

    spec = proto_to_dict(request)
    if spec.get("backend") == "kubernetes":
        spec.setdefault("device", "cuda")  # the pod sits on a GPU node: use it
    return spec


KINDS = [
    JobKind("evaluate.generate", generate, rpc="SubmitGenerate", required=("prompts", "checkpoints", "output"),
            locations=("prompts", "output", "weights"), check=_generate_problems, to_spec=_generate_spec,
            placement=evaluate_placement, nested_locations=_checkpoint_locations),
    JobKind("evaluate.score", score, rpc="SubmitScore", required=("videos", "output"),
            locations=("videos", "output", "prompts", "clip_weights", "i3d", "reference", "grades"),
            placement=evaluate_placement),
    JobKind("evaluate.compare", compare, rpc="SubmitCompare", required=("scores", "output"),
            locations=("scores", "output", "grades"), placement=evaluate_placement),
]
HANDLERS = handlers(KINDS)
