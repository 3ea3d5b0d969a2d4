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
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from vidtune.platform.errors import InvalidArgument, NotFound, VidtuneError
from vidtune.platform.storage import Storage, basename, join

from . import fvd as fvdlib
from .clipscore import DEFAULT_CLIP_MODEL, ClipModel, load_clip, temporal_consistency, text_video_cosine
from .framestats import frame_statistics, to_analysis
from .grades import acceptance, grade, load_config, missing_components, quality_score
from .prompts import DEFAULT_CATEGORY, PromptItem, load_prompts, read_rows
from .videoio import contact_sheet, is_video, read_frames, uniform_indices

log = logging.getLogger("vidtune.evaluate.scoring")

# Every metric a record carries: (formula, frame sampling, model, units). The report prints this table.
METRIC_DOCS: dict[str, tuple[str, str, str, str]] = {
    "clip_cosine": ("mean_t cos(E_img(frame_t), E_txt(prompt)); long prompts: mean of sentence-chunk embeddings",
                    "sample_frames evenly spaced frames",
                    "open_clip (configurable; default xlm-roberta-base-ViT-B-32)", "cosine, -1..1"),
    "clip_score": ("100 * max(clip_cosine, 0)", "as clip_cosine", "as clip_cosine", "0..100"),
    "temporal_consistency": ("mean_t cos(E_img(frame_t), E_img(frame_t+1))", "adjacent pairs of the sampled frames",
                             "open_clip image tower", "cosine, -1..1 (1 = still)"),
    "flicker": ("mean_t mean_px |Y_t - warp(Y_t-1, Farneback flow t->t-1)|: change that motion does not explain",
                "all frames, 240-line analysis size", "none (OpenCV optical flow)", "8-bit levels, lower is better"),
    "frame_difference": ("mean_t mean_px |Y_t - Y_t-1| (VBench temporal_flickering before scaling)",
                         "all frames, 240-line analysis size", "none", "8-bit levels; includes motion"),
    "motion": ("median over pairs of the mean of the top 5 % optical-flow magnitudes (VBench dynamic degree)",
               "all frames, 240-line analysis size", "none (OpenCV Farneback)", "analysis pixels per frame"),
    "frozen": ("1 when >= half the frame pairs differ by < 0.5 levels mean luma", "all frames", "none",
               "0/1 per video; per checkpoint the share of frozen videos"),
    "sharpness_lapvar": ("mean_t Var(Laplacian(luma_t))", "sampled frames, 240-line analysis size", "none",
                         "squared 8-bit levels"),
    "sharpness": ("lapvar / (lapvar + sharpness_reference)", "as sharpness_lapvar", "none", "0..1 (0.5 at reference)"),
    "hue_entropy": ("entropy of 36-bin hue histogram (S,V >= 10%) / log 36", "sampled frames pooled", "none", "0..1"),
    "saturation_entropy": ("entropy of 32-bin saturation histogram / log 32", "sampled frames pooled", "none", "0..1"),
    "colour_diversity": ("(hue_entropy + saturation_entropy) / 2", "sampled frames pooled", "none", "0..1"),
    "quality": ("100 * weighted geometric mean of components (grades config); none unless all measured",
                "as its components", "as components", "0..100"),
    "fvd": ("|mu_g - mu_r|^2 + tr S_g + tr S_r - 2 tr sqrt(S_g^1/2 S_r S_g^1/2), clamped >= 0",
            "first 16 consecutive frames per video (shorter videos discarded and counted), shorter side resized "
            "to fvd_size + centre crop, [-1,1]",
            "I3D TorchScript (features, rescale=False, resize=False)", "squared feature units; per SET, lower is better"),
}
PER_VIDEO_METRICS = [m for m in METRIC_DOCS if m != "fvd"]
# Bump when a formula or its numbers change, so stored records are scored again (3: CLIP frames preprocessed
# exactly as open_clip's transform; the float-tensor resize before it gave slightly different CLIP values).
METRICS_VERSION = 3
VIDEOS_PER_BATCH = 4    # videos decoded together (81 frames of 1280x720 RGB: 220 MB each); their CLIP frames batched together
WORKERS = 2             # threads for decoding and the metric work (PyAV, OpenCV, PIL, torch release the GIL)


@dataclass
class ScoreSettings:
    """What the metric pass uses; everything that changes a number is part of the record fingerprint."""

    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str | None = None   # file or bundle directory (path or s3:// URI); None: no CLIP metrics
    i3d: str | None = None            # I3D TorchScript path/URI; None: no FVD
    reference: str | None = None      # reference clips: directory with category subfolders, or a manifest
    sample_frames: int = 16
    fvd_size: int = fvdlib.DEFAULT_SIZE
    batch_size: int = 8             # CLIP frames per forward, one core each (8: fastest per frame on the bench CPU)
    grades: str | None = None         # grades config path/URI; None: the packaged grades.yaml
    device: str = "cpu"

    def fingerprint(self) -> str:
        keys = ("clip_model", "clip_weights", "i3d", "sample_frames", "fvd_size")
        blob = json.dumps({"metrics_version": METRICS_VERSION, **{k: getattr(self, k) for k in keys}}, sort_keys=True)
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
        return self.batch_metrics([(frames, prompt)])[0]

    def batch_metrics(self, videos: list[tuple[np.ndarray, str | None]]
                      ) -> list[tuple[dict, np.ndarray | None, dict]]:
        """(metrics, I3D features or None, notes) per decoded video. Each video's frames are resized once per
        consumer (240-line analysis frames for the pixel statistics, CLIP's and I3D's own sizes). All the work
        is cut into single-threaded pieces (pixel statistics per video, I3D clips, CLIP frames and prompts in
        batches across videos) run by WORKERS threads with one intra-op thread each: OpenCV, PIL and torch
        release the GIL, so every core does one piece at a time. Two-thread torch ops beside busy OpenCV
        threads would wait on each other at every op's barrier."""
        s = self.settings
        ref = float(self.grades_cfg["quality"].get("sharpness_reference", 100.0))
        idxs = [uniform_indices(len(f), s.sample_frames) for f, _ in videos]
        if self.clip is not None:
            self.clip.image_tower()  # built once, before the threads share it
        with torch_threads(1), ThreadPoolExecutor(WORKERS) as pool:
            # Longest pieces first, so the short CLIP batches fill the cores at the end.
            feats = self._i3d_tasks(pool, [f for f, _ in videos])
            pixel = [pool.submit(pixel_statistics, f, idx, ref) for (f, _), idx in zip(videos, idxs)]
            clip_out = self._clip_tasks(pool, videos, idxs)
            feats = [f.result() if f is not None else None for f in feats]
            pixel = [p.result() for p in pixel]
            clip_out = clip_out()
        out = []
        for k, (frames, prompt) in enumerate(videos):
            m: dict = {key: float("nan") for key in PER_VIDEO_METRICS}  # every record names every metric
            m.update(pixel[k])
            m.update(clip_out[k][0])
            notes = {"sampled_frames": [int(i) for i in idxs[k]], **clip_out[k][1]}
            if self.i3d is not None and feats[k] is None:
                notes["fvd_clip"] = (f"discarded: {len(frames)} frames < {fvdlib.CLIP_FRAMES} (FVD protocol takes "
                                     f"{fvdlib.CLIP_FRAMES} consecutive frames, no padding)")
            m["quality"] = quality_score(m, self.grades_cfg)
            missing = missing_components(m, self.grades_cfg)
            if missing:
                notes["quality"] = f"no overall score: {', '.join(missing)} not measured"
            out.append((m, feats[k], notes))
        return out

    def _clip_tasks(self, pool: ThreadPoolExecutor, videos, idxs) -> Callable[[], list[tuple[dict, dict]]]:
        """Submits the CLIP work; returns what collects it into (metrics, notes) per video."""
        if self.clip is None:
            return lambda: [({}, {}) for _ in videos]
        frames = [f[j] for (f, _), i in zip(videos, idxs) for j in i]  # a list: videos may differ in size
        bs = self.settings.batch_size
        parts = [pool.submit(self.clip.encode_frames, frames[i:i + bs], bs) for i in range(0, len(frames), bs)]
        prompts = [p for _, p in videos if p]
        texts = pool.submit(self.clip.encode_texts, prompts) if prompts else None

        def collect() -> list[tuple[dict, dict]]:
            emb = torch.cat([p.result() for p in parts])
            text = dict(zip(prompts, texts.result())) if texts else {}
            out, start = [], 0
            for (_, prompt), idx in zip(videos, idxs):
                e = emb[start:start + len(idx)]
                start += len(idx)
                m, notes = {"temporal_consistency": temporal_consistency(e)}, {}
                if prompt:
                    cos = text_video_cosine(e, text[prompt])
                    m["clip_cosine"], m["clip_score"] = cos, 100.0 * max(cos, 0.0)
                    plan = self.clip.caption_plan(prompt)
                    notes.update({"prompt_tokens": plan["tokens"], "prompt_chunks": len(plan["chunks"]),
                                  "prompt_kept_share": plan["kept_share"]})
                out.append((m, notes))
            return out
        return collect

    def _i3d_tasks(self, pool: ThreadPoolExecutor, frames: list[np.ndarray]) -> list[Future | None]:
        """Per video, a future of its I3D features, or None (no I3D, or shorter than the FVD clip)."""
        if self.i3d is None:
            return [None] * len(frames)
        return [pool.submit(self._i3d_one, f) if len(f) >= fvdlib.CLIP_FRAMES else None for f in frames]

    def _i3d_one(self, frames: np.ndarray) -> np.ndarray:
        return fvdlib.i3d_features(self.i3d, fvdlib.preprocess_clip(frames, self.settings.fvd_size)[None])[0]


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` for the block (it is process-wide), then restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pixel_statistics(frames: np.ndarray, sampled: np.ndarray, sharpness_reference: float) -> dict[str, float]:
    """framestats on the video's 240-line analysis frames, each frame resized once."""
    analysis = np.stack([to_analysis(f) for f in frames])
    return frame_statistics(analysis, sampled, sharpness_reference)


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
    elif fvdlib.is_test_model(scorer.i3d):
        warnings.append("I3D is a tiny random test model: FVD values are meaningless")
    elif not settings.reference:
        warnings.append("FVD not measured: no reference clips given (reference)")

    records: list[dict] = []
    total = len(uris)
    todo: list[tuple[str, str, str]] = []
    for uri in uris:
        key = _key(root, uri)
        rec_uri = join(out, "records", f"{key}.json")
        old = _reusable(storage, rec_uri, fp)
        if old is not None:
            records.append(old)
            progress(len(records), total, f"reused {key}")
        else:
            todo.append((uri, key, rec_uri))
    for start in range(0, len(todo), VIDEOS_PER_BATCH):
        check_cancelled()
        batch = todo[start:start + VIDEOS_PER_BATCH]
        for rec in _score_batch(batch, out, by_id, scorer, fp, storage):
            records.append(rec)
            progress(len(records), total, f"scored {rec['key']}")

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
                           "acceptance": acceptance(agg, scorer.grades_cfg, fvd_set_size(all_fvd))}
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


def fvd_set_size(row: dict | None) -> int:
    """Clips on the smaller side of an FVD row (the size its value belongs to)."""
    return min(int(row.get("n_generated") or 0), int(row.get("n_reference") or 0)) if row else 0


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


def _reusable(storage: Storage, rec_uri: str, fp: str) -> dict | None:
    """The stored record when it was made with the same settings (an interrupted run resumes)."""
    if not storage.exists(rec_uri):
        return None
    try:
        old = json.loads(storage.read_text(rec_uri))
    except ValueError:
        return None
    return old if old.get("fingerprint") == fp else None


def _identity(uri: str, key: str, by_id: dict, fp: str, storage: Storage) -> dict:
    side = _sidecar(storage, uri)
    pid = side.get("prompt_id") or key.rsplit("__", 1)[-1]
    item = by_id.get(pid) or by_id.get(basename(uri).rsplit(".", 1)[0])
    return {"video": uri, "key": key, "fingerprint": fp,
            "checkpoint": side.get("checkpoint", "default"), "prompt_id": item.id if item else side.get("prompt_id"),
            "prompt": side.get("prompt") or (item.prompt if item else None),
            "category": side.get("category") or (item.category if item else DEFAULT_CATEGORY),
            "seed": side.get("seed"), "generation": side or None}


def _decode(uri: str, storage: Storage) -> tuple[np.ndarray, float] | VidtuneError:
    try:
        with storage.local_copy(uri) as local:
            return read_frames(local)
    except VidtuneError as e:
        return e


def _score_batch(batch: list[tuple[str, str, str]], out: str, by_id: dict, scorer: Scorer, fp: str,
                 storage: Storage) -> list[dict]:
    """Decode a batch of videos once each (on threads), score them together, write one record per video."""
    recs = [_identity(uri, key, by_id, fp, storage) for uri, key, _ in batch]
    with ThreadPoolExecutor(WORKERS) as pool:
        decoded = list(pool.map(lambda b: _decode(b[0], storage), batch))
    good = [k for k, d in enumerate(decoded) if not isinstance(d, VidtuneError)]
    results = dict(zip(good, scorer.batch_metrics([(decoded[k][0], recs[k]["prompt"]) for k in good]))) if good else {}
    for k, ((uri, key, rec_uri), rec) in enumerate(zip(batch, recs)):
        if k not in results:
            rec["error"] = str(decoded[k])
            log.warning("rejected %s: %s", uri, decoded[k])
        else:
            frames, fps = decoded[k]
            metrics, feats, notes = results[k]
            rec.update({"frames": int(len(frames)), "fps": fps, "height": int(frames.shape[1]),
                        "width": int(frames.shape[2]), "metrics": _clean(metrics), "notes": notes,
                        "grade": grade(metrics, scorer.grades_cfg)[0], "error": None})
            if rec["prompt"] is None:
                rec["notes"]["clip"] = "no prompt for this video: CLIP text score not measured"
            sheet_uri = join(out, "contact", f"{key}.png")
            storage.write_bytes(sheet_uri, contact_sheet(frames, label=f"{rec['checkpoint']} {key}"), "image/png")
            rec["contact_sheet"] = sheet_uri
            if feats is not None:
                rec["features"] = _save_npy(storage, join(out, "features", f"{key}.npy"), feats)
        storage.write_text(rec_uri, json.dumps(rec, ensure_ascii=False), "application/json")
    return recs


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
    index, skipped = [], []
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
                clip_t = fvdlib.preprocess_clip(frames, scorer.settings.fvd_size)
            except VidtuneError as e:
                log.warning("skipping reference clip %s: %s", uri, e)
                skipped.append({"video": uri, "category": cat, "reason": str(e)})
                continue
            feats = fvdlib.i3d_features(scorer.i3d, clip_t[None])[0]
            _save_npy(storage, fu, feats)
        by_cat.setdefault(cat, []).append(feats)
        index.append({"video": uri, "category": cat, "features": fu})
    # The comparison stage recomputes FVD deltas from these, so it needs to know each clip's category.
    storage.write_text(join(out, "reference", "index.json"), json.dumps(index, ensure_ascii=False, indent=1),
                       "application/json")
    if skipped:
        storage.write_text(join(out, "reference", "discarded.json"), json.dumps(skipped, ensure_ascii=False,
                                                                                  indent=1), "application/json")
    return by_cat


def _set_fvd(records: list[dict], out: str, settings: ScoreSettings, scorer: Scorer, storage: Storage,
             check_cancelled: Callable[[], None]) -> dict[str, dict]:
    ref = reference_features(settings.reference, out, scorer, storage, check_cancelled)
    if not ref:
        return {}
    cfg = scorer.grades_cfg["fvd"]
    gen: dict[tuple[str, str], list[np.ndarray]] = {}
    discarded: dict[tuple[str, str], int] = {}
    for r in records:
        if (r.get("notes") or {}).get("fvd_clip", "").startswith("discarded"):
            for k in ((r["checkpoint"], r["category"]), (r["checkpoint"], "all")):
                discarded[k] = discarded.get(k, 0) + 1
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
            res = fvdlib.fvd_with_ci(np.stack(feats), np.stack(ref_set), n_sub=int(cfg["subsamples"]),
                                     min_reliable=int(cfg["min_reliable_clips"]))
            row.update(res.to_dict())
            row["archive_overall"] = fvdlib.archive_overall(res.value)
        row["protocol"] = fvdlib.PROTOCOL
        row["n_discarded_short"] = discarded.get((ck, cat), 0)
        table[f"{ck}/{cat}"] = row
    return table
