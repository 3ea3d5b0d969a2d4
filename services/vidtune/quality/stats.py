"""Dataset statistics (per split) and their report as Markdown, HTML with plots, and JSON.

Everything except the content-word count is computed column-wise over the whole table. Content words
need a morphological analyser (kiwipiepy), which costs milliseconds per long caption, so they are counted
on a seeded random sample of captions (default 200, each cut at its first 400 characters); the report says
so, and `content_sample_error` measures what the sample costs against a larger one. Whole captions are
used for every other number.
"""
from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidtune.platform.report import Report, new_figure
from vidtune.platform.storage import Storage

from .features import caption_array, word_types
from .rules import effective_columns

DURATION_BUCKETS = [(0, 10, "0-10s"), (10, 20, "10-20s"), (20, 30, "20-30s"), (30, 60, "30-60s"),
                    (60, float("inf"), "60s+")]
# Part-of-speech tags (Sejong, as kiwipiepy emits them) that carry content: nouns, verbs, adjectives,
# roots, foreign words. Particles (J*), endings (E*), auxiliaries (VX) and suffixes never count.
CONTENT_TAGS = ("NNG", "NNP", "VV", "VA", "XR", "SL")
# Lemmas so frequent in descriptions that they carry no content ("there is", "do", "thing", ...).
STOP_LEMMAS = frozenset({"있다", "없다", "하다", "되다", "이다", "아니다", "같다", "것", "수", "등", "때", "중",
                         "및", "더", "곳", "통하다", "위하다", "대하다"})

CONTENT_SAMPLE = 200
CONTENT_MAX_CHARS = 400
_kiwi = None
_kiwi_lock = threading.Lock()


def kiwi():
    """One shared analyser: loading its model takes about a second and a half."""
    global _kiwi
    with _kiwi_lock:
        if _kiwi is None:
            from kiwipiepy import Kiwi

            import os

            # Batched tokenize needs worker threads (it refuses single-thread mode).
            _kiwi = Kiwi(num_workers=max(2, os.cpu_count() or 2))
        return _kiwi


def content_words(texts: list[str]) -> Counter:
    """Lemmas of content morphemes over `texts` (particles, endings, auxiliaries, stop lemmas removed)."""
    counts: Counter = Counter()
    for per_text in content_words_per_text(texts):
        counts.update(per_text)
    return counts


def content_words_per_text(texts: list[str]) -> list[Counter]:
    """content_words of each text separately."""
    if not texts:
        return []
    out = []
    for tokens in kiwi().tokenize(texts):
        counts: Counter = Counter()
        for t in tokens:
            tag = t.tag.split("-")[0]
            if tag in CONTENT_TAGS:
                lemma = t.lemma if tag in ("VV", "VA") else t.form
                if lemma not in STOP_LEMMAS and len(lemma) > (0 if tag != "SL" else 1):
                    counts[lemma] += 1
        out.append(counts)
    return out


def content_sample_error(captions: list[str], sample: int = CONTENT_SAMPLE, reference: int = 2000,
                         top: int = 30, seeds: int = 20, max_chars: int = CONTENT_MAX_CHARS) -> dict:
    """What counting content words on `sample` captions costs, by simulation: `seeds` seeded samples drawn
    from a `reference`-caption sample (analysed once), each compared with the reference's top `top` words:
    the share of those words the sample also ranks in its top `top`, and the median relative error of
    their frequencies (per 1,000 content words)."""
    rng = np.random.default_rng(0)
    ref_idx = rng.choice(len(captions), size=min(reference, len(captions)), replace=False)
    per_text = content_words_per_text([captions[i][:max_chars] for i in ref_idx])
    ref: Counter = sum(per_text, Counter())
    ref_top = [w for w, _ in ref.most_common(top)]
    ref_share = np.array([ref[w] for w in ref_top]) / max(1, sum(ref.values()))
    overlap, error = [], []
    for seed in range(1, seeds + 1):
        pick = np.random.default_rng(seed).choice(len(per_text), size=min(sample, len(per_text)), replace=False)
        got: Counter = sum((per_text[i] for i in pick), Counter())
        share = np.array([got[w] for w in ref_top]) / max(1, sum(got.values()))
        # A reference word is in the sample's top when it counts at least as often as the sample's top-th
        # word (ties in, whatever order they were counted in).
        cut = max(1, sorted(got.values(), reverse=True)[min(top, len(got)) - 1]) if got else 1
        overlap.append(sum(got[w] >= cut for w in ref_top) / max(1, len(ref_top)))
        error.append(float(np.median(np.abs(share - ref_share) / np.maximum(ref_share, 1e-12))))
    return {"sample": int(min(sample, len(per_text))), "reference": int(len(per_text)), "top": top,
            "seeds": seeds, "top_overlap_mean": float(np.mean(overlap)), "top_overlap_min": float(np.min(overlap)),
            "median_relative_error_mean": float(np.mean(error)),
            "median_relative_error_p95": float(np.percentile(error, 95))}


def gini(counts) -> float:
    """Gini coefficient of class sizes: 0 when all classes are equal, towards 1 when one dominates."""
    x = np.sort(np.asarray(list(counts), dtype=float))
    n = x.size
    if n == 0 or x.sum() == 0:
        return 0.0
    # Mean absolute difference over all ordered pairs / (2 * mean), from the sorted cumulative form.
    return float((2 * np.sum(np.arange(1, n + 1) * x) - (n + 1) * x.sum()) / (n * x.sum()))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _describe(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)] if x.dtype.kind == "f" else x
    if x.size == 0:
        return {"count": 0}
    q = np.percentile(x, [5, 25, 50, 75, 95])
    return {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p5": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "max": float(x.max())}


def _value_counts(values: np.ndarray) -> dict[str, int]:
    """Counts of each distinct value, largest first (ties in key order); hashed in Arrow, not sorted."""
    vc = pc.value_counts(pa.array(values.astype(str) if values.dtype != object else values, pa.string()))
    pairs = zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    return {str(k): int(c) for k, c in sorted(pairs, key=lambda kc: (-kc[1], kc[0]))}


def _group_stats(idx: np.ndarray, cols: dict[str, np.ndarray], total_tokens: int, distinct: int) -> dict[str, Any]:
    n = int(idx.size)
    out: dict[str, Any] = {"rows": n}
    if n == 0:
        return out
    out["media_type"] = _value_counts(cols["media_type"][idx])
    cats = cols["category"][idx]
    out["category"] = _value_counts(cats)
    cat_counts = [c for k, c in out["category"].items() if k not in ("", "None")]
    out["class_imbalance"] = {
        "classes": len(cat_counts),
        "max_min_ratio": (max(cat_counts) / min(cat_counts)) if cat_counts else None,
        "gini": gini(cat_counts),
    }
    w, h = cols["width"][idx], cols["height"][idx]
    # Distinct sizes are few: count the (width, height) pairs, then word each once. A size that is not a
    # finite number (a hostile label's inf) is unknown, not a crash.
    unknown = ~(np.isfinite(w) & np.isfinite(h))
    pairs, count = np.unique(np.stack([np.where(unknown, 0, w), np.where(unknown, 0, h), unknown]).T, axis=0,
                             return_counts=True)
    sizes: dict[str, int] = {}
    for (a, b, u), c in zip(pairs.tolist(), count.tolist()):
        label = "unknown" if u else f"{int(a)}x{int(b)}"
        sizes[label] = sizes.get(label, 0) + c
    out["resolution"] = dict(sorted(sizes.items(), key=lambda kc: (-kc[1], kc[0]))[:15])
    dur = cols["duration"][idx]
    is_video = cols["media_type"][idx] == "video"
    vd = dur[is_video]
    out["duration_buckets"] = {label: int(np.sum((vd >= lo) & (vd < hi))) for lo, hi, label in DURATION_BUCKETS}
    out["duration_buckets"]["unknown"] = int(np.isnan(vd).sum())
    out["duration"] = _describe(vd.astype(float))
    chars = cols["caption_chars"][idx].astype(float)
    words = cols["caption_words"][idx].astype(float)
    uniq = cols["caption_unique_words"][idx].astype(float)
    out["caption_chars"] = _describe(chars)
    out["caption_words"] = _describe(words)
    ttr = uniq[words > 0] / words[words > 0]
    out["type_token_ratio"] = {
        "caption_mean": float(ttr.mean()) if ttr.size else None,
        "caption_min": float(ttr.min()) if ttr.size else None,
        "caption_max": float(ttr.max()) if ttr.size else None,
        "corpus": distinct / total_tokens if total_tokens else None,
        "tokens": total_tokens, "types": distinct,
        "unit": "whitespace-separated words (eojeol)",
    }
    out["pearson_duration_caption_chars"] = pearson(dur[is_video].astype(float), chars[is_video])
    return out


def compute_stats(table: pa.Table, split_column: str = "split", content_sample: int = CONTENT_SAMPLE,
                  content_max_chars: int = CONTENT_MAX_CHARS, top_words: int = 30, seed: int = 0) -> dict[str, Any]:
    """Statistics of the whole table and of each split (when a `split` column exists)."""
    n = table.num_rows
    eff = effective_columns(table)

    def text_col(name: str) -> np.ndarray:
        if name not in table.column_names:
            return np.full(n, "", dtype=object)
        return pc.fill_null(table.column(name).cast(pa.string()), "").to_numpy(zero_copy_only=False)

    caps = caption_array(table)
    # Content words on a seeded sample: the analyser is the one per-caption cost that does not vectorise.
    # It releases the GIL while it analyses, so it runs on its own thread while the rest is computed (a gain
    # only where a core is idle: both parts already use two).
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n, size=min(n, content_sample), replace=False)) if n else np.array([], int)
    texts = [t[:content_max_chars] for t in caps.take(pa.array(take, type=pa.int64())).to_pylist() if t]
    with ThreadPoolExecutor(1) as pool:
        counted = pool.submit(content_words, texts)
        cols = {k: eff[k] for k in ("width", "height", "duration", "caption_chars", "caption_words",
                                    "caption_unique_words")}
        cols["media_type"] = text_col("media_type").astype(str)
        cols["category"] = text_col("category").astype(str)
        names: list[str] = []
        group = np.zeros(n, np.int64)
        if split_column in table.column_names:
            names, group = np.unique(text_col(split_column).astype(str), return_inverse=True)
            names = names.tolist()
        tokens, types = word_types(caps, group.ravel(), max(1, len(names)))  # one group of all rows when unsplit
        result: dict[str, Any] = {"overall": _group_stats(np.arange(n), cols, int(tokens[-1]), int(types[-1])),
                                  "splits": {}}
        for k, name in enumerate(names):
            result["splits"][name or "unassigned"] = _group_stats(np.flatnonzero(group == k), cols,
                                                                  int(tokens[k]), int(types[k]))
        counts = counted.result()
    result["content_words"] = {
        "top": [[w, c] for w, c in counts.most_common(top_words)],
        "sampled_captions": len(texts), "of_captions": n, "max_chars_per_caption": content_max_chars,
        "analyser": "kiwipiepy", "seed": seed,
    }
    return result


def stats_report(stats: dict, title: str = "Dataset statistics") -> Report:
    """The statistics as a report with plots (Markdown + HTML + JSON through platform.report)."""
    rep = Report(title)
    o = stats["overall"]
    rep.paragraph(f"{o['rows']:,} samples.")
    if not o.get("rows"):
        return rep
    rep.heading("Media types and resolution")
    rep.table(["media type", "samples"], [[k, v] for k, v in o["media_type"].items()])
    rep.table(["resolution", "samples"], [[k, v] for k, v in o["resolution"].items()])
    rep.figure(_bar(o["duration_buckets"], "video duration", "clips"), "Video duration buckets")
    rep.heading("Categories")
    ci = o["class_imbalance"]
    rep.paragraph(f"{ci['classes']} classes; largest/smallest = "
                  f"{ci['max_min_ratio']:.3g}; Gini = {ci['gini']:.3f}." if ci["max_min_ratio"] else
                  "No categories.")
    rep.table(["category", "samples", "share"],
              [[k, v, f"{100 * v / o['rows']:.1f}%"] for k, v in o["category"].items()])
    rep.figure(_bar(dict(list(o["category"].items())[:25]), "category", "samples"), "Category distribution")
    rep.heading("Captions")
    rows = [[name, f"{d.get('mean', float('nan')):.1f}", d.get("min"), d.get("median"), d.get("p95"), d.get("max")]
            for name, d in (("characters", o["caption_chars"]), ("words", o["caption_words"]))]
    rep.table(["per caption", "mean", "min", "median", "p95", "max"], rows)
    t = o["type_token_ratio"]
    rep.bullets([f"type-token ratio per caption: mean {t['caption_mean']:.3f}, min {t['caption_min']:.3f}, "
                 f"max {t['caption_max']:.3f}" if t["caption_mean"] is not None else "no words",
                 f"corpus type-token ratio: {t['corpus']:.4f} ({t['types']:,} types / {t['tokens']:,} "
                 f"{t['unit']})" if t["corpus"] is not None else "corpus empty",
                 "Pearson r(duration, caption characters) over videos: "
                 + (f"{o['pearson_duration_caption_chars']:.3f}" if o["pearson_duration_caption_chars"]
                    is not None else "n/a")])
    rep.figure(_hist(stats.get("_caption_chars_sample"), o), "Caption length (characters)")
    cw = stats["content_words"]
    rep.heading("Top content words")
    rep.paragraph(f"Lemmas of nouns, verbs and adjectives from {cw['analyser']} (particles, endings, "
                  f"auxiliaries and stop lemmas such as 있다 removed), counted on {cw['sampled_captions']:,} "
                  f"of {cw['of_captions']:,} captions (seeded sample, first {cw['max_chars_per_caption']:,} "
                  "characters of each).", css_class="muted")
    rep.table(["word", "count"], cw["top"])
    if cw["top"]:
        rep.figure(_bar(dict(cw["top"][:20]), "word", "count"), "Top content words")
    if stats["splits"]:
        rep.heading("Per split")
        names = list(stats["splits"])
        rep.table(["", *names], [
            ["samples", *[stats["splits"][s]["rows"] for s in names]],
            ["mean caption chars", *[stats["splits"][s].get("caption_chars", {}).get("mean") for s in names]],
            ["corpus TTR", *[stats["splits"][s].get("type_token_ratio", {}).get("corpus") for s in names]],
            ["classes", *[stats["splits"][s].get("class_imbalance", {}).get("classes") for s in names]],
            ["Gini", *[stats["splits"][s].get("class_imbalance", {}).get("gini") for s in names]],
        ])
        cats = list(o["category"])[:12]
        rep.table(["category", *names], [[c, *[stats["splits"][s].get("category", {}).get(c, 0) for s in names]]
                                         for c in cats])
    return rep


def _bar(data: dict, xlabel: str, ylabel: str):
    fig, ax = new_figure(7, 3.2)
    ax.bar([str(k) for k in data], list(data.values()), color="#3a6ea5")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=45 if len(data) > 6 else 0)
    return fig


def _hist(values, overall: dict):
    fig, ax = new_figure(7, 3.2)
    if values is not None and len(values):
        ax.hist(values, bins=50, color="#3a6ea5")
    d = overall["caption_chars"]
    for k in ("p5", "median", "p95"):
        if k in d:
            ax.axvline(d[k], color="#b42318", lw=1, ls="--")
    ax.set_xlabel("characters")
    ax.set_ylabel("captions")
    return fig


def write_stats(table: pa.Table, out: str, storage: Storage | None = None, stem: str = "stats",
                title: str = "Dataset statistics", **kwargs) -> dict[str, str]:
    """Compute statistics of `table` and write `<out>/<stem>.{md,html,json}` + figures."""
    stats = compute_stats(table, **kwargs)
    feats = effective_columns(table)["caption_chars"]
    rng = np.random.default_rng(0)
    stats["_caption_chars_sample"] = feats[rng.choice(feats.size, min(feats.size, 20000), replace=False)] \
        if feats.size else None
    rep = stats_report(stats, title)
    stats.pop("_caption_chars_sample")
    uris = rep.write(out, storage, stem=stem, data=stats)
    return uris
