"""Sample generation: prompts x checkpoints (base and LoRA epochs) x seeds, written to the object store.

Each video lands at
    <out>/<checkpoint>/<prompt id>/seed-<seed>-<settings hash>.mp4
with a JSON of the same name beside it holding every setting that produced it (model, weights, LoRA, prompt,
category, seed, size, frames, steps, guidance). The hash covers all of those, so a changed setting gives a new
file, and an existing JSON (written after its video) marks the item done: a restarted run skips it.

The model is loaded through vidtune.models.loading.load_pipeline (DiffSynth's WanVideoPipeline); LoRA files
(`epoch-N.safetensors` from training) are fused into the DiT with `pipe.load_lora`. One pipeline per
checkpoint, loaded only when that checkpoint still has work.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vidtune.platform.errors import InvalidArgument, JobCancelled
from vidtune.platform.limits import limits
from vidtune.platform.media import check_image_pixels
from vidtune.platform.shards import interleave, shard_name, share
from vidtune.platform.storage import Storage, basename, is_s3, join

from .prompts import PromptItem, load_prompts
from .videoio import write_mp4

log = logging.getLogger("vidtune.evaluate.generate")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Checkpoint:
    """`base` (no LoRA) or a LoRA file fused into the DiT of `role` at strength `alpha`."""

    label: str
    lora: str | None = None
    alpha: float = 1.0
    role: str = "dit"


def _epoch_key(uri: str):
    m = re.search(r"epoch-(\d+)", basename(uri))
    return (0, int(m.group(1)), uri) if m else (1, 0, uri)


def parse_checkpoints(items: list, storage: Storage | None = None) -> list[Checkpoint]:
    """Checkpoints from strings or dicts: "base"; a LoRA file (label = its name without .safetensors);
    "label=URI"; a directory/prefix (every epoch-N.safetensors below it, ComfyUI copies excluded);
    or {"label", "lora", "alpha", "role"}."""
    storage = storage or Storage()
    out: list[Checkpoint] = []
    for item in items:
        if isinstance(item, dict):
            lora = item.get("lora") or item.get("path")
            label = item.get("label") or ("base" if not lora else basename(lora).removesuffix(".safetensors"))
            out.append(Checkpoint(label, lora, float(item.get("alpha", 1.0)), item.get("role", "dit")))
            continue
        item = str(item).strip()
        if item == "base":
            out.append(Checkpoint("base"))
            continue
        label, _, uri = item.partition("=") if "=" in item and not item.startswith(("s3://", "/")) else ("", "", item)
        if uri.endswith(".safetensors"):
            out.append(Checkpoint(label or basename(uri).removesuffix(".safetensors"), uri))
            continue
        found = sorted((u for u in storage.list(uri.rstrip("/") + "/" if is_s3(uri) else uri)
                        if u.endswith(".safetensors") and not u.endswith(".comfyui.safetensors")
                        and re.search(r"epoch-\d+", basename(u))), key=_epoch_key)
        if not found:
            raise InvalidArgument(f"checkpoint {item!r}: not 'base', a .safetensors LoRA, or a directory holding "
                                  "epoch-N.safetensors files")
        out += [Checkpoint(basename(u).removesuffix(".safetensors"), u) for u in found]
    labels = [c.label for c in out]
    for c in out:
        if not _LABEL_RE.fullmatch(c.label):
            raise InvalidArgument(f"checkpoint label {c.label!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise InvalidArgument(f"checkpoint labels must be unique; repeated: {sorted(dupes)} (use label=URI)")
    if not out:
        raise InvalidArgument("no checkpoints given (e.g. base and s3://bucket/run/checkpoints/)")
    return out


@dataclass
class GenerationSettings:
    model: str = "tiny-ti2v"         # a vidtune.models spec name
    weights: str | None = None       # model weights root (path/URI); None for tiny models
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    height: int = 64
    width: int = 64
    num_frames: int = 17
    steps: int = 4
    cfg_scale: float = 1.0
    negative_prompt: str = ""
    fps: float = 16.0
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        errors = []
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            errors.append(f"height and width must be positive multiples of 16 (got {self.height}x{self.width})")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            errors.append(f"num_frames must be 4n+1 (got {self.num_frames})")
        if self.steps < 1:
            errors.append(f"steps must be >= 1 (got {self.steps})")
        if not self.seeds:
            errors.append("give at least one seed")
        try:
            limits().check_generation(self.height, self.width, self.num_frames, self.steps, len(self.seeds))
        except InvalidArgument as e:
            errors.append(str(e))
        if self.dtype not in ("float32", "float16", "bfloat16"):
            errors.append(f"dtype must be float32, float16 or bfloat16 (got {self.dtype})")
        if errors:
            raise InvalidArgument("; ".join(errors))


def sample_settings(ckpt: Checkpoint, item: PromptItem, seed: int, s: GenerationSettings) -> dict:
    """Everything that determines one video's pixels (its hash names the file)."""
    return {"model": s.model, "weights": s.weights, "checkpoint": ckpt.label, "lora": ckpt.lora,
            "lora_alpha": ckpt.alpha, "lora_role": ckpt.role, "prompt_id": item.id, "prompt": item.prompt,
            "category": item.category, "image": item.image, "seed": int(seed), "height": s.height,
            "width": s.width, "num_frames": s.num_frames, "steps": s.steps, "cfg_scale": s.cfg_scale,
            "negative_prompt": s.negative_prompt, "fps": s.fps, "dtype": s.dtype}


def video_uri(out: str, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:10]
    return join(out, settings["checkpoint"], settings["prompt_id"], f"seed-{settings['seed']}-{digest}.mp4")


def default_pipeline_loader(ckpt: Checkpoint, s: GenerationSettings, storage: Storage):
    import torch

    from vidtune.models.loading import load_pipeline

    lora = [{"path": ckpt.lora, "alpha": ckpt.alpha, "role": ckpt.role}] if ckpt.lora else []
    return load_pipeline(s.model, weights=s.weights, device=s.device, dtype=getattr(torch, s.dtype), lora=lora,
                         storage=storage)


def _first_frame(uri: str, s: GenerationSettings, storage: Storage):
    from PIL import Image, UnidentifiedImageError

    try:
        data = storage.read_bytes(uri)
        check_image_pixels(data, f"first frame {uri}")
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except UnidentifiedImageError:
        raise InvalidArgument(f"first frame {uri} is not a readable image") from None
    return img.resize((s.width, s.height), Image.BICUBIC)


def run_pipeline(pipe, settings: dict, s: GenerationSettings, storage: Storage) -> np.ndarray:
    """One video as uint8 [T, H, W, 3] from the DiffSynth pipeline."""
    kwargs = dict(prompt=settings["prompt"], negative_prompt=s.negative_prompt, seed=settings["seed"],
                  height=s.height, width=s.width, num_frames=s.num_frames, num_inference_steps=s.steps,
                  cfg_scale=s.cfg_scale, tiled=False, progress_bar_cmd=lambda steps: steps)
    if settings.get("image"):
        kwargs["input_image"] = _first_frame(settings["image"], s, storage)
    if getattr(pipe, "dit2", None) is not None:
        from vidtune.models.specs import get_spec

        boundary = get_spec(s.model).switch_boundary
        if boundary is not None:
            kwargs["switch_DiT_boundary"] = boundary
    frames = pipe(**kwargs)
    return np.stack([np.asarray(f.convert("RGB")) for f in frames]).astype(np.uint8)


def generate_samples(prompts: str, checkpoints: list, out: str, settings: GenerationSettings | None = None,
                     storage: Storage | None = None, progress: Callable[[int, int, str], None] | None = None,
                     check_cancelled: Callable[[], None] | None = None,
                     pipeline_loader: Callable | None = None, scratch: str | Path | None = None,
                     shard: tuple[int, int] | None = None) -> dict:
    """Generate every missing (checkpoint, prompt, seed) video below `out`; returns counts and URIs.

    `shard=(index, count)` keeps every count-th item of the plan from index on (one GPU pod's share of an
    Indexed Job); its summary goes to `summary_uri(out, shard)` and `merge_summaries` makes the whole one."""
    storage = storage or Storage()
    s = settings or GenerationSettings()
    s.validate()
    progress = progress or (lambda d, t, m: None)
    check_cancelled = check_cancelled or (lambda: None)
    loader = pipeline_loader or default_pipeline_loader
    items = load_prompts(prompts, storage)
    ckpts = parse_checkpoints(checkpoints, storage)
    plan = [(c, sample_settings(c, it, seed, s)) for c in ckpts for it in items for seed in s.seeds]
    if shard is not None:
        plan = share(plan, *shard)
    total, done = len(plan), 0
    made, skipped, failed, videos = 0, 0, [], []
    t0 = time.monotonic()
    for ckpt in ckpts:
        todo = []
        for c, st in plan:
            if c != ckpt:
                continue
            uri = video_uri(out, st)
            videos.append(uri)
            if storage.exists(uri.removesuffix(".mp4") + ".json"):
                skipped += 1
                done += 1
                progress(done, total, f"exists {ckpt.label}/{st['prompt_id']}/seed {st['seed']}")
            else:
                todo.append((st, uri))
        if not todo:
            continue
        check_cancelled()
        progress(done, total, f"loading {ckpt.label}")
        pipe = loader(ckpt, s, storage)
        for st, uri in todo:
            check_cancelled()
            started = time.monotonic()
            try:
                frames = run_pipeline(pipe, st, s, storage)
                with tempfile.TemporaryDirectory(dir=scratch, prefix="vt-gen-") as d:
                    local = write_mp4(frames, Path(d) / basename(uri), fps=s.fps)
                    storage.upload(local, uri, "video/mp4")
                meta = {**st, "video": uri, "frames_written": int(len(frames)),
                        "seconds": round(time.monotonic() - started, 3)}
                storage.write_text(uri.removesuffix(".mp4") + ".json", json.dumps(meta, ensure_ascii=False, indent=1),
                                   "application/json")
                made += 1
            except (JobCancelled, KeyboardInterrupt):
                raise
            except Exception as e:  # one bad item (unreadable first frame, model error) never fails the batch
                failed.append({"video": uri, "checkpoint": ckpt.label, "prompt_id": st["prompt_id"],
                               "seed": st["seed"], "error": str(e)})
                log.warning("generation failed for %s: %s", uri, e)
            done += 1
            progress(done, total, f"{ckpt.label}/{st['prompt_id']}/seed {st['seed']}")
        del pipe
    summary = {"out": out, "prompts": prompts, "checkpoints": [asdict(c) for c in ckpts], "settings": asdict(s),
               "total": total, "generated": made, "skipped": skipped, "failed": failed, "videos": videos,
               "seconds": round(time.monotonic() - t0, 2)}
    storage.write_text(summary_uri(out, shard), json.dumps(summary, ensure_ascii=False, indent=1), "application/json")
    return summary


def summary_uri(out: str, shard: tuple[int, int] | None = None) -> str:
    return join(out, "_shards", f"generation-{shard_name(*shard)}.json") if shard else join(out, "generation.json")


def merge_summaries(storage: Storage, out: str, count: int) -> dict:
    """`<out>/generation.json` of the whole plan from its `count` shards' summaries: videos and failures in
    plan order, counts summed; the summary one unsharded run writes (but for its seconds)."""
    parts = [json.loads(storage.read_text(summary_uri(out, (i, count)))) for i in range(count)]
    videos = interleave([p["videos"] for p in parts])
    order = {v: k for k, v in enumerate(videos)}
    summary = {**parts[0], "total": sum(p["total"] for p in parts), "generated": sum(p["generated"] for p in parts),
               "skipped": sum(p["skipped"] for p in parts),
               "failed": sorted((f for p in parts for f in p["failed"]), key=lambda f: order[f["video"]]),
               "videos": videos, "seconds": max(p["seconds"] for p in parts)}
    storage.write_text(summary_uri(out), json.dumps(summary, ensure_ascii=False, indent=1), "application/json")
    return summary
