"""The evaluation part of the local demo: tiny base vs tiny LoRA, generated, scored and compared.

Everything below `root` (a directory or s3:// prefix):
    models/clip/, models/i3d_torchscript.pt   tiny random metric models (numbers are arbitrary by design)
    prompts.jsonl                              a small Korean prompt set
    videos/  scores/  report/                  the three stages' outputs
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from vidtune.platform.storage import Storage, join

from .compare import compare_scores
from .generate import GenerationSettings, generate_samples
from .scoring import ScoreSettings, score_videos
from .tiny import build_tiny_clip_bundle, build_tiny_i3d

DEMO_PROMPTS = [
    {"id": "jeju-waves", "category": "nature", "prompt": "제주 해안의 현무암 바위에 파도가 부서지는 장면"},
    {"id": "autumn-valley", "category": "nature", "prompt": "가을 단풍으로 붉게 물든 계곡과 맑은 물줄기"},
    {"id": "lantern-festival", "category": "festival", "prompt": "진주 남강 유등축제의 불빛이 강물에 비치는 밤 풍경"},
]


def prepare_tiny_metric_models(root: str, storage: Storage) -> tuple[str, str]:
    """Build the tiny CLIP bundle and I3D TorchScript and publish them below root/models/ (once)."""
    clip_uri, i3d_uri = join(root, "models", "clip"), join(root, "models", "i3d_torchscript.pt")
    if not storage.exists(join(clip_uri, "open_clip_model.safetensors")) or not storage.exists(i3d_uri):
        with tempfile.TemporaryDirectory(prefix="vt-demo-models-") as d:
            bundle = build_tiny_clip_bundle(Path(d) / "clip")
            for f in bundle.iterdir():
                storage.upload(f, join(clip_uri, f.name))
            storage.upload(build_tiny_i3d(Path(d) / "i3d.pt"), i3d_uri)
    return clip_uri, i3d_uri


def run_demo(root: str, checkpoints: list[str], reference: str | None = None, storage: Storage | None = None,
             prompts: str | None = None, seeds: tuple[int, ...] = (0, 1),
             progress: Callable[[int, int, str], None] | None = None) -> dict:
    """generate -> score -> compare for `checkpoints` (e.g. ["base", "s3://vidtune/run/checkpoints/"]).

    `reference`: clips for FVD (directory with category subfolders, or a manifest); without it FVD is skipped
    and the report says so. Returns the URIs of every stage's output, "report" being the HTML report.
    """
    storage = storage or Storage()
    if prompts is None:
        prompts = join(root, "prompts.jsonl")
        storage.write_jsonl(prompts, DEMO_PROMPTS)
    clip_uri, i3d_uri = prepare_tiny_metric_models(root, storage)
    gen = generate_samples(prompts, checkpoints, join(root, "videos"),
                           GenerationSettings(seeds=list(seeds), num_frames=17, steps=4), storage, progress)
    scores = join(root, "scores")
    score_videos(join(root, "videos"), scores, settings=ScoreSettings(
        clip_weights=clip_uri, i3d=i3d_uri, reference=reference, fvd_size=64), storage=storage, progress=progress)
    res = compare_scores(scores, join(root, "report"), storage=storage, progress=progress)
    return {"videos": join(root, "videos"), "scores": scores, "report": res["report"],
            "markdown": res["markdown"], "generated": gen["generated"], "verdicts": res["verdicts"]}


if __name__ == "__main__":  # python -m vidtune.evaluate.demo ROOT CHECKPOINT... [--reference R]
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--reference")
    a = ap.parse_args()
    out = run_demo(a.root, a.checkpoints, a.reference)
    print(f"evaluation report: {out['report']}")
