"""The full metric pass: one JSON record per video with every metric, plus set-level FVD per category.

Output layout below `out` (a directory or s3:// prefix):
    records/<key>.json    one per video: identity (checkpoint, prompt, seed, category), every metric, grade
    features/<key>.npy    the video's I3D features (input to the set-level FVD)
    contact/<key>.png     a frame strip of the video
    reference/<key>.npy   I3D features of each reference clip
    fvd.json              FVD per (checkpoint, category) and per checkpoint over all categories, with CIs
    scores.jsonl          every record, one per line
    summary.json          settings, per-checkpoint means, grade and acceptance, warnings

A record whose settings fingerprint matches is reused, so an interrupted run resumes where it stopped.
A video that cannot be decoded gets a record with `error` and does not stop the batch.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from vidtune.platform.errors import InvalidArgument, NotFound, VidtuneError
from vidtune.platform.storage import Storage, basename, join

from . import fvd as fvdlib
from .clipscore import DEFAULT_CLIP_MODEL, ClipModel, load_clip, temporal_consistency, text_video_cosine
from .framestats import colour_entropies, flicker, laplacian_variance, normalised_sharpness
from .grades import acceptance, grade, load_config, quality_score
from .prompts import DEFAULT_CATEGORY, PromptItem, load_prompts, read_rows
from .videoio import contact_sheet, is_video, read_frames, uniform_indices

log = logging.getLogger("vidtune.evaluate.scoring")

# Every metric a record carries: (formula, frame sampling, model, units). The report prints this table.
METRIC_DOCS: dict[str, tuple[str, str, str, str]] = {
    "clip_cosine": ("mean_t cos(E_img(frame_t), E_txt(prompt))", "sample_frames evenly spaced frames",
                    "open_clip (configurable; default xlm-roberta-base-ViT-B-32)", "cosine, -1..1"),
    "clip_score": ("100 * max(clip_cosine, 0)", "as clip_cosine", "as clip_cosine", "0..100"),
    "temporal_consistency": ("mean_t cos(E_img(frame_t), E_img(frame_t+1))", "adjacent pairs of the sampled frames",
                             "open_clip image tower", "cosine, -1..1 (1 = still)"),
    "flicker": ("mean_t |Ybar_t - (Ybar_t-1 + Ybar_t+1)/2|, Ybar = mean luma", "all frames", "none",
                "8-bit levels, lower is better"),
    "sharpness_lapvar": ("mean_t Var(Laplacian(luma_t))", "sampled frames, native resolution", "none",
                         "squared 8-bit levels"),
    "sharpness": ("lapvar / (lapvar + sharpness_reference)", "as sharpness_lapvar", "none", "0..1 (0.5 at reference)"),
    "hue_entropy": ("entropy of 36-bin hue histogram (S,V >= 10%) / log 36", "sampled frames pooled", "none", "0..1"),
    "saturation_entropy": ("entropy of 32-bin saturation histogram / log 32", "sampled frames pooled", "none", "0..1"),
    "colour_diversity": ("(hue_entropy + saturation_entropy) / 2", "sampled frames pooled", "none", "0..1"),
    "quality": ("100 * sum_i w_i c_i / sum_i w_i (weights in the grades config)", "as its components", "as components",
                "0..100"),
    "fvd": ("|mu_g - mu_r|^2 + tr S_g + tr S_r - 2 tr sqrt(S_g^1/2 S_r S_g^1/2), clamped >= 0",
            "first 16 consecutive frames per video, shorter side resized to fvd_size + centre crop, [-1,1]",
            "I3D TorchScript (features, rescale=False, resize=False)", "squared feature units; per SET, lower is better"),
}
PER_VIDEO_METRICS = [m for m in METRIC_DOCS if m != "fvd"]


@dataclass
class ScoreSettings:
    """What the metric pass uses; everything that changes a number is part of the record fingerprint."""

    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str | None = None   # file or bundle directory (path or s3:// URI); None: no CLIP metrics
    i3d: str | None = None            # I3D TorchScript path/URI; None: no FVD
    reference: str | None = None      # reference clips: directory with category subfolders, or a manifest
    sample_frames: int = 16
    fvd_size: int = fvdlib.DEFAULT_SIZE
    batch_size: int = 32
    grades: str | None = None         # grades config path/URI; None: the packaged grades.yaml
    device: str = "cpu"

    def fingerprint(self) -> str:
        keys = ("clip_model", "clip_weights", "i3d", "sample_frames", "fvd_size")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Scorer:
    """Loaded models plus settings; `video_metrics` is the per-video core used by scoring and the benchmark."""

    settings: ScoreSettings
    clip: ClipModel | None = None
    i3d: object = None
    grades_cfg: dict = field(default_factory=dict)

    @classmethod
    def load(cls, settings: ScoreSettings, storage: Storage | None = None) -> "Scorer":
        clip = load_clip(settings.clip_model, settings.clip_weights, storage, settings.device) \
            if settings.clip_weights else None
        i3d = fvdlib.load_i3d(settings.i3d, storage, settings.device) if settings.i3d else None
        return cls(settings, clip, i3d, load_config(settings.grades, storage))

    def video_metrics(self, frames: np.ndarray, prompt: str | None) -> tuple[dict, np.ndarray | None, dict]:
        """(metrics, I3D features or None, notes) of one decoded video."""
        s = self.settings
        idx = uniform_indices(len(frames), s.sample_frames)
        sampled = frames[idx]
        lapvar = float(laplacian_variance(sampled).mean())
        hue_e, sat_e = colour_entropies(sampled)
        m: dict = {k: float("nan") for k in PER_VIDEO_METRICS}  # every record names every metric
        m.update({"sharpness_lapvar": lapvar,
                   "sharpness": normalised_sharpness(lapvar, float(self.grades_cfg["quality"]
                                                                   .get("sharpness_reference", 100.0))),
                   "hue_entropy": hue_e, "saturation_entropy": sat_e, "colour_diversity": (hue_e + sat_e) / 2,
                   "flicker": flicker(frames)})
        notes: dict = {"sampled_frames": [int(i) for i in idx]}
        if self.clip is not None:
            emb = self.clip.encode_frames(sampled, s.batch_size)
            m["temporal_consistency"] = temporal_consistency(emb)
            if prompt:
                cos = text_video_cosine(emb, self.clip.encode_texts([prompt])[0])
                m["clip_cosine"], m["clip_score"] = cos, 100.0 * max(cos, 0.0)
                n_tok = self.clip.token_count(prompt)
                notes["prompt_tokens"] = n_tok
                notes["prompt_truncated"] = bool(n_tok > self.clip.context_length)
        feats = None
        if self.i3d is not None:
            clip_t, padded = fvdlib.preprocess_clip(frames, s.fvd_size)
            feats = fvdlib.i3d_features(self.i3d, clip_t[None])[0]
            notes["fvd_clip_padded"] = padded
        m["quality"] = quality_score(m, self.grades_cfg)
        return m, feats, notes


def _key(root: str, uri: str) -> str:
    """A flat, stable record name from the video's path below the scored root."""
    rel = uri[len(root.rstrip("/")) + 1:] if uri.startswith(root.rstrip("/") + "/") else basename(uri)
    stem = rel.rsplit(".", 1)[0]
    return stem.replace("/", "__")


def _clean(v):
    """JSON without NaN: unmeasured numbers become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


def _sidecar(storage: Storage, video_uri: str) -> dict:
    side = video_uri.rsplit(".", 1)[0] + ".json"
    try:
        return json.loads(storage.read_text(side))
    except NotFound:
        return {}
    except ValueError:
        log.warning("ignoring unreadable settings file %s", side)
        return {}


def list_reference(reference: str, storage: Storage) -> list[tuple[str, str]]:
    """(video URI, category) of reference clips: a manifest (.jsonl/.csv with video, category) or a
    directory whose first-level subfolders name categories (videos directly inside: category "general")."""
    if reference.lower().endswith((".jsonl", ".csv", ".json", ".yaml", ".yml")):
        rows = read_rows(storage.read_text(reference), reference, "reference manifest", key="videos")
        base = reference.rsplit("/", 1)[0]
        out = []
        for n, r in enumerate(rows, 1):
            v = str(r.get("video") or "").strip()
            if not v:
                raise InvalidArgument(f"reference manifest {reference} row {n}: no 'video'")
            if "://" not in v and not v.startswith("/"):
                v = join(base, v)
            out.append((v, str(r.get("category") or DEFAULT_CATEGORY)))
        return out
    root = reference.rstrip("/")
    out = []
    for uri in storage.list(root + "/"):
        if not is_video(uri):
            continue
        rel = uri[len(root) + 1:]
        out.append((uri, rel.split("/", 1)[0] if "/" in rel else DEFAULT_CATEGORY))
    return out


def _aggregate(records: list[dict]) -> dict[str, float]:
    out = {}
    for m in PER_VIDEO_METRICS:
        vals = [r["metrics"].get(m) for r in records if r.get("metrics")]
        vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
        out[m] = float(np.mean(vals)) if vals else float("nan")
    return out


def score_videos(videos: str, out: str, prompts: str | None = None, settings: ScoreSettings | None = None,
                 storage: Storage | None = None, progress: Callable[[int, int, str], None] | None = None,
                 check_cancelled: Callable[[], None] | None = None, scorer: Scorer | None = None) -> dict:
    """Score every video below `videos` (a file, directory or s3:// prefix) into `out`; returns the summary."""
    storage = storage or Storage()
    settings = settings or ScoreSettings()
    progress = progress or (lambda d, t, m: None)
    check_cancelled = check_cancelled or (lambda: None)
    t0 = time.monotonic()
    uris = [u for u in storage.list(videos) if is_video(u)]
    if not uris:
        raise NotFound(f"no videos ({', '.join(('mp4', 'webm', 'mov', 'mkv', 'avi', 'gif'))}) below {videos}")
    root = videos if not is_video(videos) else videos.rsplit("/", 1)[0]
    by_id: dict[str, PromptItem] = {p.id: p for p in load_prompts(prompts, storage)} if prompts else {}
    scorer = scorer or Scorer.load(settings, storage)
    fp = settings.fingerprint()
    warnings: list[str] = []
    if scorer.clip is None:
        warnings.append("CLIP metrics not measured: no CLIP weights given (clip_weights)")
    elif scorer.clip.random_weights:
        warnings.append("CLIP weights are a tiny random test bundle: CLIP scores and grades are meaningless")
    if scorer.i3d is None:
        warnings.append("FVD not measured: no I3D TorchScript given (i3d)")
    elif not settings.reference:
        warnings.append("FVD not measured: no reference clips given (reference)")

    records: list[dict] = []
    total = len(uris)
    for n, uri in enumerate(uris):
        check_cancelled()
        key = _key(root, uri)
        rec_uri = join(out, "records", f"{key}.json")
        if storage.exists(rec_uri):
            try:
                old = json.loads(storage.read_text(rec_uri))
                if old.get("fingerprint") == fp:
                    records.append(old)
                    progress(n + 1, total, f"reused {key}")
                    continue
            except ValueError:
                pass
        records.append(_score_one(uri, key, rec_uri, out, by_id, scorer, fp, storage))
        progress(n + 1, total, f"scored {key}")

    # Grades follow the current config even for reused records.
    for r in records:
        if r.get("metrics"):
            r["metrics"]["quality"] = _clean(quality_score(r["metrics"], scorer.grades_cfg))
            r["grade"] = grade(r["metrics"], scorer.grades_cfg)[0]
    storage.write_jsonl(join(out, "scores.jsonl"), records)

    fvd_table = _set_fvd(records, out, settings, scorer, storage, check_cancelled) \
        if scorer.i3d is not None and settings.reference else {}
    if fvd_table:
        storage.write_text(join(out, "fvd.json"), json.dumps(_clean(fvd_table), indent=2), "application/json")
        warnings += _fvd_warning_summary(list(fvd_table.values()), int(scorer.grades_cfg["fvd"]["min_reliable_clips"]))

    checkpoints = {}
    for ck in sorted({r.get("checkpoint", "default") for r in records}):
        recs = [r for r in records if r.get("checkpoint", "default") == ck and r.get("metrics")]
        agg = _aggregate(recs)
        all_fvd = fvd_table.get(f"{ck}/all", {})
        agg["fvd"] = all_fvd.get("value", float("nan")) if all_fvd else float("nan")
        g, rows = grade(agg, scorer.grades_cfg)
        checkpoints[ck] = {"videos": len(recs), "metrics": agg, "grade": g, "grade_rules": rows,
                           "acceptance": acceptance(agg, scorer.grades_cfg)}
    summary = {
        "videos": videos, "out": out, "prompts": prompts, "settings": asdict(settings), "fingerprint": fp,
        "clip": scorer.clip.describe() if scorer.clip else None, "grades_config": scorer.grades_cfg.get("source"),
        "counts": {"videos": total, "scored": sum(1 for r in records if r.get("metrics")),
                   "rejected": sum(1 for r in records if r.get("error"))},
        "rejected": [{"video": r["video"], "error": r["error"]} for r in records if r.get("error")],
        "checkpoints": checkpoints, "fvd": list(fvd_table.values()), "warnings": warnings,
        "seconds": round(time.monotonic() - t0, 2),
    }
    storage.write_text(join(out, "summary.json"), json.dumps(_clean(summary), ensure_ascii=False, indent=2),
                       "application/json")
    return _clean(summary)


def _fvd_warning_summary(rows: list[dict], min_reliable: int) -> list[str]:
    """One line for the whole table instead of one per set; the per-set warnings stay in fvd.json."""
    out = [f"{r['checkpoint']}/{r['category']}: {w}" for r in rows for w in r.get("warnings", [])
           if "not computed" in w or "no reference" in w]
    sized = [r for r in rows if r.get("value") is not None]
    small = [r for r in sized if min(r["n_generated"], r["n_reference"]) < min_reliable]
    if small:
        sizes = sorted({min(r["n_generated"], r["n_reference"]) for r in small})
        dim = max(r.get("feature_dim", 0) for r in small)
        out.append(f"FVD: {len(small)} of {len(sized)} sets are small ({sizes[0]}-{sizes[-1]} clips, < {min_reliable};"
                   f" covariances of {dim}-d features are rank-deficient below {dim + 1} clips): those FVDs are noisy,"
                   " biased upward, and comparable only between sets of equal size; see fvd.json per set")
    return out


def _score_one(uri: str, key: str, rec_uri: str, out: str, by_id: dict, scorer: Scorer, fp: str,
               storage: Storage) -> dict:
    side = _sidecar(storage, uri)
    pid = side.get("prompt_id") or key.rsplit("__", 1)[-1]
    item = by_id.get(pid) or by_id.get(basename(uri).rsplit(".", 1)[0])
    prompt = side.get("prompt") or (item.prompt if item else None)
    rec = {"video": uri, "key": key, "fingerprint": fp,
           "checkpoint": side.get("checkpoint", "default"), "prompt_id": item.id if item else side.get("prompt_id"),
           "prompt": prompt, "category": side.get("category") or (item.category if item else DEFAULT_CATEGORY),
           "seed": side.get("seed"), "generation": side or None}
    try:
        with storage.local_copy(uri) as local:
            frames, fps = read_frames(local)
        metrics, feats, notes = scorer.video_metrics(frames, prompt)
    except VidtuneError as e:
        rec["error"] = str(e)
        storage.write_text(rec_uri, json.dumps(rec, ensure_ascii=False), "application/json")
        log.warning("rejected %s: %s", uri, e)
        return rec
    rec.update({"frames": int(len(frames)), "fps": fps, "height": int(frames.shape[1]),
                "width": int(frames.shape[2]), "metrics": _clean(metrics), "notes": notes,
                "grade": grade(metrics, scorer.grades_cfg)[0], "error": None})
    if prompt is None:
        rec["notes"]["clip"] = "no prompt for this video: CLIP text score not measured"
    sheet_uri = join(out, "contact", f"{key}.png")
    storage.write_bytes(sheet_uri, contact_sheet(frames, label=f"{rec['checkpoint']} {key}"), "image/png")
    rec["contact_sheet"] = sheet_uri
    if feats is not None:
        rec["features"] = _save_npy(storage, join(out, "features", f"{key}.npy"), feats)
    storage.write_text(rec_uri, json.dumps(rec, ensure_ascii=False), "application/json")
    return rec


def _save_npy(storage: Storage, uri: str, arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, np.float64))
    return storage.write_bytes(uri, buf.getvalue())


def load_npy(storage: Storage, uri: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(uri)))


def reference_features(reference: str, out: str, scorer: Scorer, storage: Storage,
                       check_cancelled: Callable[[], None] = lambda: None) -> dict[str, list[np.ndarray]]:
    """I3D features of reference clips by category, cached under out/reference/ (skipped when present)."""
    by_cat: dict[str, list[np.ndarray]] = {}
    index = []
    root = reference.rstrip("/")
    for uri, cat in list_reference(reference, storage):
        check_cancelled()
        key = hashlib.sha256(f"{uri}|{scorer.settings.fvd_size}|{scorer.settings.i3d}".encode()).hexdigest()[:16]
        fu = join(out, "reference", f"{_key(root, uri)}-{key}.npy")
        if storage.exists(fu):
            feats = load_npy(storage, fu)
        else:
            try:
                with storage.local_copy(uri) as local:
                    frames, _ = read_frames(local, max_frames=fvdlib.CLIP_FRAMES)
            except VidtuneError as e:
                log.warning("skipping reference clip %s: %s", uri, e)
                continue
            clip_t, _ = fvdlib.preprocess_clip(frames, scorer.settings.fvd_size)
            feats = fvdlib.i3d_features(scorer.i3d, clip_t[None])[0]
            _save_npy(storage, fu, feats)
        by_cat.setdefault(cat, []).append(feats)
        index.append({"video": uri, "category": cat, "features": fu})
    # The comparison stage recomputes FVD deltas from these, so it needs to know each clip's category.
    storage.write_text(join(out, "reference", "index.json"), json.dumps(index, ensure_ascii=False, indent=1),
                       "application/json")
    return by_cat


def _set_fvd(records: list[dict], out: str, settings: ScoreSettings, scorer: Scorer, storage: Storage,
             check_cancelled: Callable[[], None]) -> dict[str, dict]:
    ref = reference_features(settings.reference, out, scorer, storage, check_cancelled)
    if not ref:
        return {}
    cfg = scorer.grades_cfg["fvd"]
    gen: dict[tuple[str, str], list[np.ndarray]] = {}
    for r in records:
        if r.get("features"):
            f = load_npy(storage, r["features"])
            gen.setdefault((r["checkpoint"], r["category"]), []).append(f)
            gen.setdefault((r["checkpoint"], "all"), []).append(f)
    ref_all = [f for fs in ref.values() for f in fs]
    table = {}
    for (ck, cat), feats in sorted(gen.items()):
        check_cancelled()
        ref_set = ref_all if cat == "all" else ref.get(cat)
        row = {"checkpoint": ck, "category": cat}
        if not ref_set:
            row.update({"value": None, "n_generated": len(feats), "n_reference": 0,
                        "warnings": [f"no reference clips for category {cat!r}"]})
        else:
            res = fvdlib.fvd_with_ci(np.stack(feats), np.stack(ref_set), n_boot=int(cfg["bootstrap"]),
                                     min_reliable=int(cfg["min_reliable_clips"]))
            row.update(res.to_dict())
        table[f"{ck}/{cat}"] = row
    return table
