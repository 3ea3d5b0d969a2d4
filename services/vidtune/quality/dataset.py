"""Dataset build: stratified train/val split, subsets with target proportions, class weights, export.

Every choice is seeded and independent of row order (rows are ordered by id before sampling), so the same
manifest, ratio and seed give the same split on any machine.

Export writes exactly what DiffSynth's UnifiedDataset reads: `<out>/metadata.csv` with columns
`video,prompt` (paths relative to `<out>`) and the media below `<out>` at those relative paths.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.storage import Storage, join

from .manifest import relative_media, resolve_media

STRATA = ("category", "media_type")


def _strata_keys(table: pa.Table, columns) -> np.ndarray:
    parts = []
    for c in columns:
        if c in table.column_names:
            parts.append(pc.fill_null(table.column(c).cast(pa.string()), "").to_numpy(zero_copy_only=False)
                         .astype(str))
    if not parts:
        return np.full(table.num_rows, "", dtype=object)
    key = parts[0]
    for p in parts[1:]:
        key = np.char.add(np.char.add(key, "\x1f"), p)
    return key


def _seed_for(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()[:8], "little")


def _ordered(ids: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx[np.argsort(ids[idx], kind="stable")]


def split(table: pa.Table, val_ratio: float = 0.1, seed: int = 0, stratify=STRATA,
          column: str = "split") -> pa.Table:
    """`table` with a `split` column ("train"/"val").

    Each stratum sends floor(n * val_ratio) rows to val, and the strata with the largest remainders one
    more each until the total is round(N * val_ratio), so small strata still reach val and the overall
    ratio holds. Rows are drawn by a permutation seeded by (seed, stratum).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise InvalidArgument(f"val_ratio must be in [0, 1), got {val_ratio}")
    n = table.num_rows
    ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
    keys = _strata_keys(table, stratify)
    strata = sorted(set(keys.tolist()))
    members = {k: _ordered(ids, np.flatnonzero(keys == k)) for k in strata}
    exact = {k: members[k].size * val_ratio for k in strata}
    n_val = {k: int(math.floor(v + 1e-9)) for k, v in exact.items()}
    extra = int(math.floor(n * val_ratio + 0.5)) - sum(n_val.values())
    for k in sorted(strata, key=lambda k: (-(exact[k] - n_val[k]), _seed_for(seed, k)))[:max(0, extra)]:
        n_val[k] += 1
    out = np.full(n, "train", dtype=object)
    for k in strata:
        idx = members[k]
        perm = np.random.default_rng(_seed_for(seed, k)).permutation(idx.size)
        out[idx[perm[:n_val[k]]]] = "val"
    arr = pa.array(out.tolist(), type=pa.string())
    if column in table.column_names:
        return table.set_column(table.column_names.index(column), column, arr)
    return table.append_column(column, arr)


def allocate(n: int, capacity: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Share n samples between classes by weight, never more than a class holds (water-filling, then
    largest remainder for the integer parts)."""
    total_cap = sum(capacity.values())
    if n > total_cap:
        raise InvalidArgument(f"asked for {n} samples but only {total_cap} are available")
    alloc = {k: 0.0 for k in capacity}
    open_ = {k for k in capacity if capacity[k] > 0 and weights.get(k, 0) > 0}
    remaining = float(n)
    while open_ and remaining > 1e-9:
        wsum = sum(weights[k] for k in open_)
        share = {k: remaining * weights[k] / wsum for k in open_}
        full = {k for k in open_ if alloc[k] + share[k] >= capacity[k]}
        if not full:
            for k in open_:
                alloc[k] += share[k]
            remaining = 0
            break
        for k in full:
            remaining -= capacity[k] - alloc[k]
            alloc[k] = capacity[k]
        open_ -= full
    if remaining > 1e-9:  # the weighted classes are exhausted: fill from the others by size
        rest = {k: capacity[k] - alloc[k] for k in capacity if capacity[k] - alloc[k] > 0}
        if rest:
            extra = allocate(int(round(remaining)), {k: int(v) for k, v in rest.items()},
                             {k: float(v) for k, v in rest.items()})
            for k, v in extra.items():
                alloc[k] += v
    floors = {k: int(math.floor(v + 1e-9)) for k, v in alloc.items()}
    short = n - sum(floors.values())
    for k in sorted(alloc, key=lambda k: (-(alloc[k] - floors[k]), k)):
        if short <= 0:
            break
        if floors[k] < capacity[k]:
            floors[k] += 1
            short -= 1
    return floors


def subset(table: pa.Table, n: int, proportions: dict[str, float] | str | None = None, seed: int = 0,
           column: str = "category") -> tuple[pa.Table, dict]:
    """n rows with target class proportions ({"nature": 0.3, ...}: unnamed classes share the rest by
    size), "balanced" (equal per class), or None (proportional to the classes' sizes)."""
    if n <= 0:
        raise InvalidArgument(f"subset size must be positive, got {n}")
    classes = pc.fill_null(table.column(column).cast(pa.string()), "").to_numpy(zero_copy_only=False).astype(str)
    names, counts = np.unique(classes, return_counts=True)
    capacity = {str(k): int(c) for k, c in zip(names, counts)}
    if proportions == "balanced":
        weights = {k: 1.0 for k in capacity}
    elif proportions is None:
        weights = {k: float(c) for k, c in capacity.items()}
    else:
        unknown = set(proportions) - set(capacity)
        if unknown:
            raise InvalidArgument(f"proportions name classes not in the manifest: {sorted(unknown)}")
        given = sum(proportions.values())
        if given > 1.0 + 1e-6 or any(v < 0 for v in proportions.values()):
            raise InvalidArgument(f"proportions must be >= 0 and sum to at most 1, got {given:.3f}")
        others = {k: c for k, c in capacity.items() if k not in proportions}
        rest = max(0.0, 1.0 - given)
        weights = {k: float(v) for k, v in proportions.items()}
        osum = sum(others.values())
        weights.update({k: rest * c / osum for k, c in others.items()} if osum else {})
    targets = allocate(n, capacity, weights)
    ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
    chosen = []
    for k in sorted(targets):
        if targets[k] == 0:
            continue
        idx = _ordered(ids, np.flatnonzero(classes == k))
        perm = np.random.default_rng(_seed_for(seed, k)).permutation(idx.size)
        chosen.append(idx[np.sort(perm[:targets[k]])])
    take = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)
    return table.take(pa.array(take, type=pa.int64())), {
        "targets": targets, "proportions": {k: v / n for k, v in targets.items() if v}}


def class_weights(table: pa.Table, column: str = "category") -> tuple[pa.Table, dict[str, float]]:
    """Per-class weights for weighted sampling, N / (K * n_class), so the mean weight per sample is 1 and
    every class is drawn equally often; also added as a `sample_weight` column."""
    classes = pc.fill_null(table.column(column).cast(pa.string()), "").to_numpy(zero_copy_only=False).astype(str)
    names, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    w = table.num_rows / (len(names) * counts) if len(names) else counts.astype(float)
    arr = pa.array(w[inverse].astype(float))
    if "sample_weight" in table.column_names:
        table = table.set_column(table.column_names.index("sample_weight"), "sample_weight", arr)
    else:
        table = table.append_column("sample_weight", arr)
    return table, {str(k): float(v) for k, v in zip(names, w)}


# ---------------------------------------------------------------- caption budget

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=다\.)|\n+")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_WORDISH = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d\uac00-\ud7a3]")


def estimate_tokens(text: str) -> int:
    """Tokenizer-agnostic estimate of SentencePiece (umT5) tokens: about 2 Hangul syllables per token
    (measured on umT5-style vocabularies: ~0.5-0.6 tokens per syllable), one per Latin word, digit run
    or punctuation mark. Errs high, so a truncated caption stays inside the real budget."""
    hangul = len(_HANGUL.findall(text))
    return int(math.ceil(hangul * 0.6)) + len(_WORDISH.findall(text))


def truncate_caption(text: str, max_tokens: int, count: Callable[[str], int] = estimate_tokens) -> str:
    """The longest prefix of whole sentences within `max_tokens`; if even the first sentence is longer,
    the longest prefix of whole words."""
    if max_tokens <= 0 or count(text) <= max_tokens:
        return text
    pieces = [p for p in _SENTENCE_END.split(text) if p and p.strip()]
    kept = ""
    for p in pieces:
        cand = (kept + " " + p.strip()).strip()
        if count(cand) > max_tokens:
            break
        kept = cand
    if kept:
        return kept
    words, out = text.split(), ""
    for w in words:
        cand = (out + " " + w).strip()
        if count(cand) > max_tokens:
            break
        out = cand
    return out


def hf_token_counter(tokenizer_path: str) -> Callable[[str], int]:
    """Exact token counts from a local Hugging Face tokenizer (e.g. the umT5 tokenizer of the model)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    return lambda s: len(tok(s, add_special_tokens=True)["input_ids"])


# ---------------------------------------------------------------- export

@dataclass
class ExportResult:
    metadata: str
    rows: int
    copied: int
    skipped: int
    truncated: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def export(table: pa.Table, root: str, out: str, storage: Storage | None = None, max_tokens: int = 512,
           token_counter: Callable[[str], int] | None = None, copy_media: bool = True, workers: int = 4,
           scratch: str | None = None, progress: Callable[[int, int, str], None] | None = None,
           cancelled: Callable[[], bool] | None = None, metadata_name: str = "metadata.csv") -> ExportResult:
    """Write `<out>/metadata.csv` (video,prompt) and lay the media out below `out` (local dir or s3 prefix).

    Media already present with the same size is not copied again, so a resumed export repeats no work.
    """
    storage = storage or Storage()
    medias = table.column("media").to_pylist()
    captions = table.column("caption").to_pylist()
    count = token_counter or estimate_tokens
    rel_paths, prompts, truncated, seen = [], [], 0, set()
    for m, cap in zip(medias, captions):
        rel = relative_media(root, m)
        if rel in seen:
            raise InvalidArgument(f"two rows export to the same path {rel!r}")
        seen.add(rel)
        rel_paths.append(rel)
        short = truncate_caption(cap or "", max_tokens, count)
        truncated += short != (cap or "")
        prompts.append(short)
    copied = skipped = 0
    if copy_media:
        def copy(i: int) -> bool:
            if cancelled and cancelled():
                return False
            src = resolve_media(root, medias[i])
            dst = join(out, rel_paths[i])
            if storage.exists(dst) and storage.size(dst) == storage.size(src):
                return False
            with storage.local_copy(src, scratch) as local:
                storage.upload(local, dst)
            return True

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for k, did in enumerate(pool.map(copy, range(len(medias))), 1):
                copied += did
                skipped += not did
                if progress and (k % 10 == 0 or k == len(medias)):
                    progress(k, len(medias), "copying media")
        if cancelled and cancelled():
            from vidtune.platform.errors import JobCancelled

            raise JobCancelled("export cancelled")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "prompt"])
    w.writerows(zip(rel_paths, prompts))
    meta_uri = join(out, metadata_name)
    storage.write_text(meta_uri, buf.getvalue(), "text/csv; charset=utf-8")
    return ExportResult(meta_uri, len(rel_paths), copied, skipped, truncated)
