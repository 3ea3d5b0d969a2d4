"""Comparison reports: base vs LoRA and epoch vs epoch, per prompt, per category and overall.

Verdict rule (stated in every report): for a metric, the difference B - A is taken per (prompt, seed) pair,
so both checkpoints start from the same noise and seed-to-seed variation largely cancels. Its confidence
interval comes from
  - two or more prompts: a two-level bootstrap (prompts resampled with replacement, then seeds within each
    drawn prompt), `verdict.bootstrap` resamples;
  - one prompt: a Student-t interval over its seeds (needs two or more seeds).
"improved" when the interval lies entirely on the better side of 0, "worse" when entirely on the worse side,
"unchanged" otherwise (including when there are too few samples to form an interval, and when the change is
smaller than `verdict.min_relative_change` of A's value: real but too small to matter). FVD deltas use a
bootstrap over generated clips (paired by prompt and seed) and reference clips (fvd.fvd_delta_ci).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from vidtune.platform.errors import NotFound
from vidtune.platform.report import Report, new_figure
from vidtune.platform.storage import Storage, join

from . import fvd as fvdlib
from .grades import acceptance, grade, load_config
from .scoring import METRIC_DOCS, PER_VIDEO_METRICS, load_npy

COMPARED_METRICS = ["clip_cosine", "clip_score", "temporal_consistency", "flicker", "sharpness",
                    "colour_diversity", "quality"]
DETAIL_METRICS = ["clip_cosine", "quality"]   # per-prompt tables stay readable with two metrics
CHART_METRICS = ["clip_cosine", "quality", "temporal_consistency", "sharpness", "colour_diversity", "flicker"]


@dataclass
class Delta:
    metric: str
    scope: str            # overall | category | prompt
    group: str            # "all", the category or the prompt id
    a: str
    b: str
    value_a: float
    value_b: float
    delta: float
    percent: float
    ci_low: float
    ci_high: float
    n_pairs: int
    verdict: str
    note: str = ""


def checkpoint_order(labels) -> list[str]:
    """base first, then epoch-N by N, then any other label alphabetically."""
    def key(label: str):
        if label == "base":
            return (0, 0, label)
        m = re.fullmatch(r"epoch-(\d+)", label)
        return (1, int(m.group(1)), label) if m else (2, 0, label)
    return sorted(set(labels), key=key)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def verdict_of(lo: float, hi: float, lower_is_better: bool, negligible: bool = False) -> str:
    if negligible or not (_finite(lo) and _finite(hi)):
        return "unchanged"
    better_side = hi < 0 if lower_is_better else lo > 0
    worse_side = lo > 0 if lower_is_better else hi < 0
    return "improved" if better_side else "worse" if worse_side else "unchanged"


def interval_of_pairs(diffs_by_prompt: dict[str, list[float]], confidence: float, n_boot: int,
                      rng: np.random.Generator) -> tuple[float, float, str]:
    """CI of the mean paired difference (see the module docstring for the rule)."""
    prompts = [p for p, d in diffs_by_prompt.items() if d]
    a = (1 - confidence) / 2
    if len(prompts) >= 2:
        arrays = [np.asarray(diffs_by_prompt[p], np.float64) for p in prompts]
        means = np.empty(n_boot)
        for i in range(n_boot):
            chosen = rng.integers(0, len(arrays), len(arrays))
            draws = [arrays[j][rng.integers(0, len(arrays[j]), len(arrays[j]))] for j in chosen]
            means[i] = np.concatenate(draws).mean()
        lo, hi = np.quantile(means, [a, 1 - a])
        return float(lo), float(hi), f"bootstrap over {len(prompts)} prompts and their seeds"
    d = np.asarray(diffs_by_prompt[prompts[0]] if prompts else [], np.float64)
    if len(d) < 2:
        return float("nan"), float("nan"), f"{len(d)} paired sample(s): too few for an interval"
    from scipy import stats

    half = stats.t.ppf(1 - a, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half), f"t-interval over {len(d)} seeds"


def negligible(delta: float, base: float, cfg: dict) -> bool:
    """A change below `verdict.min_relative_change` of the base value does not count as a verdict."""
    rel = float(cfg["verdict"].get("min_relative_change", 0.0))
    return _finite(delta) and _finite(base) and abs(delta) < rel * abs(base)


def paired_delta(recs_a: list[dict], recs_b: list[dict], metric: str, scope: str, group: str, a: str, b: str,
                 cfg: dict, rng: np.random.Generator) -> Delta:
    """Delta of `metric` from checkpoint a to b over videos paired by (prompt id, seed)."""
    va = {(r.get("prompt_id"), r.get("seed")): r["metrics"].get(metric) for r in recs_a}
    vb = {(r.get("prompt_id"), r.get("seed")): r["metrics"].get(metric) for r in recs_b}
    keys = [k for k in va if k in vb and _finite(va[k]) and _finite(vb[k])]
    lower = metric in cfg["verdict"]["lower_is_better"]
    conf, n_boot = float(cfg["verdict"]["confidence"]), int(cfg["verdict"]["bootstrap"])
    if keys:
        mean_a = float(np.mean([va[k] for k in keys]))
        mean_b = float(np.mean([vb[k] for k in keys]))
        diffs: dict[str, list[float]] = {}
        for k in keys:
            diffs.setdefault(str(k[0]), []).append(vb[k] - va[k])
        lo, hi, note = interval_of_pairs(diffs, conf, n_boot, rng)
        n = len(keys)
    else:
        xa = np.array([v for v in va.values() if _finite(v)])
        xb = np.array([v for v in vb.values() if _finite(v)])
        if not len(xa) or not len(xb):
            nan = float("nan")
            return Delta(metric, scope, group, a, b, nan, nan, nan, nan, nan, nan, 0, "unchanged", "not measured")
        mean_a, mean_b = float(xa.mean()), float(xb.mean())
        boots = [xb[rng.integers(0, len(xb), len(xb))].mean() - xa[rng.integers(0, len(xa), len(xa))].mean()
                 for _ in range(n_boot)] if min(len(xa), len(xb)) >= 2 else []
        alpha = (1 - conf) / 2
        lo, hi = (np.quantile(boots, [alpha, 1 - alpha]) if boots else (float("nan"), float("nan")))
        lo, hi, n, note = float(lo), float(hi), 0, "unpaired bootstrap (no common prompt and seed)"
    delta = mean_b - mean_a
    pct = 100.0 * delta / abs(mean_a) if mean_a else float("nan")
    return Delta(metric, scope, group, a, b, mean_a, mean_b, delta, pct, lo, hi, n,
                 verdict_of(lo, hi, lower, negligible(delta, mean_a, cfg)), note)


def _load_scores(scores: list[str], storage: Storage) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(records, fvd rows, reference index, summaries) from one or more score directories."""
    records, fvd_rows, ref_index, summaries = [], [], [], []
    for s in scores:
        try:
            records += storage.read_jsonl(join(s, "scores.jsonl"))
        except NotFound:
            raise NotFound(f"{s} holds no scores.jsonl: run `vidtune eval score` into it first") from None
        for name, target in (("fvd.json", None), ("reference/index.json", ref_index), ("summary.json", summaries)):
            try:
                data = json.loads(storage.read_text(join(s, name)))
            except NotFound:
                continue
            if name == "fvd.json":
                fvd_rows += list(data.values())
            elif name == "summary.json":
                summaries.append(data)
            else:
                target += data
    return records, fvd_rows, ref_index, summaries


def compare_scores(scores: str | list[str], out: str, baseline: str = "base", grades: str | None = None,
                   storage: Storage | None = None, contact_sheets: bool = True,
                   progress: Callable[[int, int, str], None] | None = None, seed: int = 0) -> dict:
    """Write the comparison report (report.md, report.html, figures/, report.json) below `out`."""
    storage = storage or Storage()
    progress = progress or (lambda d, t, m: None)
    scores = [scores] if isinstance(scores, str) else list(scores)
    cfg = load_config(grades, storage)
    records, fvd_rows, ref_index, summaries = _load_scores(scores, storage)
    ok = [r for r in records if r.get("metrics")]
    if not ok:
        raise NotFound(f"no scored videos in {', '.join(scores)}")
    order = checkpoint_order(r["checkpoint"] for r in ok)
    base = baseline if baseline in order else order[0]
    pairs = [(base, c) for c in order if c != base]
    rest = [c for c in order if c != base]
    pairs += [(x, y) for x, y in zip(rest, rest[1:]) if (x, y) not in pairs]
    by_ck = {c: [r for r in ok if r["checkpoint"] == c] for c in order}
    categories = sorted({r["category"] for r in ok})
    prompts = sorted({str(r.get("prompt_id")) for r in ok})
    rng = np.random.default_rng(seed)

    deltas: list[Delta] = []
    for k, (a, b) in enumerate(pairs):
        progress(k, len(pairs) + 1, f"comparing {a} -> {b}")
        for m in COMPARED_METRICS:
            deltas.append(paired_delta(by_ck[a], by_ck[b], m, "overall", "all", a, b, cfg, rng))
            for cat in categories:
                ra = [r for r in by_ck[a] if r["category"] == cat]
                rb = [r for r in by_ck[b] if r["category"] == cat]
                if ra and rb:
                    deltas.append(paired_delta(ra, rb, m, "category", cat, a, b, cfg, rng))
            if m in DETAIL_METRICS:
                for p in prompts:
                    ra = [r for r in by_ck[a] if str(r.get("prompt_id")) == p]
                    rb = [r for r in by_ck[b] if str(r.get("prompt_id")) == p]
                    if ra and rb:
                        deltas.append(paired_delta(ra, rb, m, "prompt", p, a, b, cfg, rng))
        deltas += _fvd_deltas(a, b, by_ck, ref_index, cfg, storage, seed)

    fvd_by = {(r["checkpoint"], r["category"]): r for r in fvd_rows}
    ck_rows = {}
    for c in order:
        agg = {m: _mean(r["metrics"].get(m) for r in by_ck[c]) for m in PER_VIDEO_METRICS}
        agg["fvd"] = _num(fvd_by.get((c, "all"), {}).get("value"))
        g, _ = grade(agg, cfg)
        ck_rows[c] = {"videos": len(by_ck[c]), "metrics": agg, "grade": g, "acceptance": acceptance(agg, cfg)}

    progress(len(pairs), len(pairs) + 1, "writing report")
    report = _build_report(order, ck_rows, deltas, by_ck, categories, fvd_by, records, summaries, cfg,
                           storage, contact_sheets)
    data = {"scores": scores, "baseline": base, "checkpoints": ck_rows, "pairs": pairs,
            "deltas": [asdict(d) for d in deltas], "grades_config": cfg["source"],
            "verdict_rule": __doc__.split("Verdict rule", 1)[1].strip()}
    uris = report.write(out, storage, stem="report", data=_clean(data))
    progress(len(pairs) + 1, len(pairs) + 1, "done")
    return {"report": uris["html"], "markdown": uris["markdown"], "json": uris["json"], "checkpoints": order,
            "baseline": base, "verdicts": _clean({f"{d.a}->{d.b}/{d.metric}": d.verdict for d in deltas
                                                  if d.scope == "overall"})}


def _fvd_deltas(a: str, b: str, by_ck: dict, ref_index: list[dict], cfg: dict, storage: Storage,
                seed: int) -> list[Delta]:
    if not ref_index:
        return []
    ref_by_cat: dict[str, list[np.ndarray]] = {}
    for row in ref_index:
        ref_by_cat.setdefault(row["category"], []).append(load_npy(storage, row["features"]))
    fa = {(r.get("prompt_id"), r.get("seed")): r for r in by_ck[a] if r.get("features")}
    fb = {(r.get("prompt_id"), r.get("seed")): r for r in by_ck[b] if r.get("features")}
    keys = sorted((k for k in fa if k in fb), key=str)
    out = []
    n_boot = int(cfg["fvd"]["bootstrap"])
    conf = float(cfg["verdict"]["confidence"])
    lower = "fvd" in cfg["verdict"]["lower_is_better"]
    for cat in ["all", *sorted(ref_by_cat)]:
        ks = [k for k in keys if cat == "all" or fa[k]["category"] == cat]
        ref = [f for fs in ref_by_cat.values() for f in fs] if cat == "all" else ref_by_cat.get(cat, [])
        if len(ks) < 2 or len(ref) < 2:
            continue
        ga = np.stack([load_npy(storage, fa[k]["features"]) for k in ks])
        gb = np.stack([load_npy(storage, fb[k]["features"]) for k in ks])
        d, lo, hi = fvdlib.fvd_delta_ci(ga, gb, np.stack(ref), n_boot=n_boot, confidence=conf, seed=seed)
        va = fvdlib.fvd_from_features(ga, np.stack(ref))
        out.append(Delta("fvd", "overall" if cat == "all" else "category", cat, a, b, va, va + d, d,
                         100.0 * d / va if va else float("nan"), lo, hi, len(ks),
                         verdict_of(lo, hi, lower, negligible(d, va, cfg)),
                         "paired bootstrap over generated and reference clips"))
    return out


def _num(v) -> float:
    return float(v) if _finite(v) else float("nan")


def _mean(values) -> float:
    vals = [v for v in values if _finite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


_VERDICT_CSS = {"improved": "good", "worse": "bad", "unchanged": "muted"}


def _delta_table(report: Report, rows: list[Delta], first_col: str) -> None:
    headers = [first_col, "A", "B", "A value", "B value", "delta", "% change", "CI low", "CI high", "pairs",
               "verdict"]
    body, css = [], {}
    for i, d in enumerate(rows):
        label = d.metric if first_col == "metric" else d.group
        body.append([label, d.a, d.b, d.value_a, d.value_b, d.delta, d.percent, d.ci_low, d.ci_high, d.n_pairs,
                     d.verdict])
        css[(i, 10)] = _VERDICT_CSS.get(d.verdict, "")
    report.table(headers, body, css)


def _build_report(order, ck_rows, deltas, by_ck, categories, fvd_by, records, summaries, cfg, storage,
                  contact_sheets) -> Report:
    r = Report(f"vidtune evaluation: {', '.join(order)}")
    r.paragraph(f"{sum(len(v) for v in by_ck.values())} scored videos, {len(categories)} categories, "
                f"checkpoints in order: {', '.join(order)}. Grades and acceptance from {cfg['source']}.")
    clip_desc = next((s.get("clip") for s in summaries if s.get("clip")), None)
    if clip_desc:
        r.paragraph(f"CLIP model {clip_desc['model']} from {clip_desc['weights']} (image size "
                    f"{clip_desc['image_size']}, text context {clip_desc['context_length']} tokens). Scores mean "
                    "something only with real trained weights.")
    r.paragraph("CLIP is reported two ways side by side: the raw cosine (clip_cosine, -1..1) and "
                "100*max(cos,0) (clip_score, the CLIPScore convention). Grades and acceptance use the RAW cosine.")

    r.heading("Checkpoints")
    headers = ["checkpoint", "videos", "clip_cosine", "clip_score", "temporal", "flicker", "sharpness", "colour",
               "quality", "FVD", "FVD CI", "grade", "accepted"]
    rows, css = [], {}
    for i, c in enumerate(order):
        m = ck_rows[c]["metrics"]
        f = fvd_by.get((c, "all"), {})
        ci = f"[{_num(f.get('ci_low')):.4g}, {_num(f.get('ci_high')):.4g}]" if f.get("value") is not None else "n/a"
        acc = ck_rows[c]["acceptance"]["passed"]
        rows.append([c, ck_rows[c]["videos"], m["clip_cosine"], m["clip_score"], m["temporal_consistency"],
                     m["flicker"], m["sharpness"], m["colour_diversity"], m["quality"], m["fvd"], ci,
                     ck_rows[c]["grade"], {True: "yes", False: "no", None: "incomplete"}[acc]])
        css[(i, 12)] = {True: "good", False: "bad", None: "muted"}[acc]
    r.table(headers, rows, css)
    crit = "; ".join(f"{k} {'>=' if 'min' in v else '<='} {v.get('min', v.get('max'))}"
                     for k, v in cfg["acceptance"].items())
    r.paragraph(f"Acceptance: {crit}. 'incomplete' means a criterion's metric was not measured.")

    warns = sorted({w for s in summaries for w in s.get("warnings", [])})
    if warns:
        r.heading("Warnings")
        r.bullets(warns)

    r.heading("Charts")
    r.figure(_metric_per_checkpoint_figure(order, by_ck, fvd_by), "Metrics per checkpoint (mean and 95% "
             "interval over videos; FVD with its bootstrap interval)", name="metrics-per-checkpoint")
    if len(categories) > 1 or len(order) > 1:
        r.figure(_per_category_figure(order, by_ck, categories, "quality"), "Quality per category and checkpoint",
                 name="quality-per-category")
        r.figure(_per_category_figure(order, by_ck, categories, "clip_cosine"),
                 "CLIP raw cosine per category and checkpoint", name="clip-per-category")

    r.heading("Comparisons")
    r.paragraph("Verdict rule: " + " ".join(__doc__.split("Verdict rule", 1)[1].split()))
    pairs = list(dict.fromkeys((d.a, d.b) for d in deltas))
    for a, b in pairs:
        r.heading(f"{a} -> {b}", 3)
        r.paragraph("Overall")
        _delta_table(r, [d for d in deltas if (d.a, d.b) == (a, b) and d.scope == "overall"], "metric")
        for m in ["quality", "clip_cosine", "fvd"]:
            rows_c = [d for d in deltas if (d.a, d.b) == (a, b) and d.scope == "category" and d.metric == m]
            if rows_c:
                r.paragraph(f"Per category: {m}")
                _delta_table(r, rows_c, "category")
        for m in DETAIL_METRICS:
            rows_p = [d for d in deltas if (d.a, d.b) == (a, b) and d.scope == "prompt" and d.metric == m]
            if rows_p:
                r.paragraph(f"Per prompt: {m}")
                _delta_table(r, rows_p, "prompt")

    r.heading("Metric definitions")
    r.table(["metric", "formula", "frames", "model", "units"], [[k, *v] for k, v in METRIC_DOCS.items()])
    q = cfg["quality"]
    r.paragraph("Quality weights: " + ", ".join(f"{k} {v}" for k, v in q["weights"].items())
                + f"; sharpness reference {q.get('sharpness_reference')}, flicker reference "
                f"{q.get('flicker_reference')}.")

    if contact_sheets:
        r.heading("Contact sheets")
        r.paragraph("Eight evenly spaced frames of every generated video, grouped by prompt.")
        by_prompt: dict[str, list[dict]] = {}
        for rec in records:
            if rec.get("contact_sheet"):
                by_prompt.setdefault(str(rec.get("prompt_id")), []).append(rec)
        for p, recs in sorted(by_prompt.items()):
            first = recs[0]
            r.heading(f"{p} ({first.get('category')}): {str(first.get('prompt') or '')[:160]}", 3)
            for rec in sorted(recs, key=lambda x: (order.index(x["checkpoint"]) if x["checkpoint"] in order
                                                   else 99, str(x.get("seed")))):
                m = rec.get("metrics") or {}
                cap = (f"{rec['checkpoint']} seed {rec.get('seed')}: grade {rec.get('grade')}, "
                       f"clip_cosine {_fmt(m.get('clip_cosine'))}, quality {_fmt(m.get('quality'))}")
                try:
                    r.figure(storage.read_bytes(rec["contact_sheet"]), cap, name=f"sheet-{rec['key']}")
                except NotFound:
                    r.paragraph(f"{cap} (contact sheet missing)", "muted")
    rejected = [rec for rec in records if rec.get("error")]
    if rejected:
        r.heading("Rejected videos")
        r.table(["video", "reason"], [[x["video"], x["error"]] for x in rejected])
    return r


def _fmt(v) -> str:
    return f"{v:.3f}" if _finite(v) else "n/a"


def _ci95(values) -> tuple[float, float]:
    vals = np.array([v for v in values if _finite(v)], np.float64)
    if len(vals) == 0:
        return float("nan"), 0.0
    half = 1.96 * vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return float(vals.mean()), float(half)


def _metric_per_checkpoint_figure(order, by_ck, fvd_by):
    metrics = CHART_METRICS + (["fvd"] if any(k[1] == "all" and v.get("value") is not None
                                               for k, v in fvd_by.items()) else [])
    cols = 4
    rows = math.ceil(len(metrics) / cols)
    fig, _ = new_figure(3.2 * cols, 2.6 * rows)
    fig.clf()
    x = np.arange(len(order))
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        if m == "fvd":
            vals = [_num(fvd_by.get((c, "all"), {}).get("value")) for c in order]
            lo = [_num(fvd_by.get((c, "all"), {}).get("ci_low")) for c in order]
            hi = [_num(fvd_by.get((c, "all"), {}).get("ci_high")) for c in order]
            err = np.array([[max(v - low, 0) if _finite(low) else 0 for v, low in zip(vals, lo)],
                            [max(high - v, 0) if _finite(high) else 0 for v, high in zip(vals, hi)]])
        else:
            stats = [_ci95(r["metrics"].get(m) for r in by_ck[c]) for c in order]
            vals = [s[0] for s in stats]
            err = [s[1] for s in stats]
        ax.errorbar(x, vals, yerr=err, marker="o", capsize=3)
        ax.set_xticks(x, order, rotation=30, fontsize=8)
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _per_category_figure(order, by_ck, categories, metric):
    fig, ax = new_figure(max(5.0, 1.2 * len(categories) * max(1, len(order)) * 0.5 + 3), 3.2)
    width = 0.8 / max(1, len(order))
    x = np.arange(len(categories))
    for i, c in enumerate(order):
        stats = [_ci95(r["metrics"].get(metric) for r in by_ck[c] if r["category"] == cat) for cat in categories]
        ax.bar(x + i * width, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=2, label=c)
    ax.set_xticks(x + width * (len(order) - 1) / 2, categories, fontsize=8)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig
