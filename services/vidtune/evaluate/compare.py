"""Comparison reports: base vs LoRA and epoch vs epoch, per prompt, per category and overall.

Verdict rule (stated in every report): for a metric, the difference B - A is taken per (prompt, seed) pair,
so both checkpoints start from the same noise and seed-to-seed variation largely cancels. Then
  - overall and per-category rows: the unit is the PROMPT (its mean difference over seeds), and the test is
    a two-sided sign-flip permutation test of the mean prompt difference (exact over all 2^P sign patterns
    up to 16 prompts, 20,000 random patterns above). With fewer than 6 prompts no sign pattern can reach
    p <= 0.05 (the smallest possible p is 2 / 2^P), so the verdict is "too few prompts";
  - per-prompt rows: a one-sample t-test over that prompt's seed differences (2 or more seeds);
  - per-category and per-prompt rows of one metric and comparison are a family: their p-values are adjusted
    with Holm's step-down method (family-wise error <= 1 - confidence); the overall row is the primary test
    and is not adjusted.
"improved" / "worse" when the (adjusted) p-value is <= 1 - confidence, on the better / worse side, and the
change is at least `verdict.min_relative_change` of A's value (real but too small to matter otherwise);
"unchanged" otherwise. The interval shown is a Student-t interval on the prompt means (per-prompt rows: on
the seeds), for the size of the change; the verdict comes from the test. Checked by a seeded simulation
(tests/evaluate/test_compare.py): with no true effect, at 3 prompts x 3 seeds and 20 x 4, the false
improved/worse rate stays <= 5 %. FVD deltas: a half-sampling interval over generated clips (paired by prompt
and seed) and reference clips (fvd.fvd_delta_ci); improved / worse when it excludes 0.
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
from .scoring import METRIC_DOCS, PER_VIDEO_METRICS, fvd_set_size, load_npy

COMPARED_METRICS = ["quality", "clip_cosine", "clip_score", "temporal_consistency", "flicker", "motion", "frozen",
                    "sharpness", "colour_diversity"]
DETAIL_METRICS = ["clip_cosine", "quality"]   # per-prompt tables stay readable with two metrics
CHART_METRICS = ["quality", "clip_cosine", "temporal_consistency", "flicker", "motion", "sharpness",
                 "colour_diversity"]


MIN_PROMPTS = 6            # smallest P with 2 / 2^P <= 0.05: a sign-flip test can reach significance
EXACT_UP_TO = 16           # prompts; beyond, random sign patterns
RANDOM_FLIPS = 20_000
TOO_FEW = "too few prompts"


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
    p_value: float = float("nan")
    p_adjusted: float = float("nan")
    n_units: int = 0      # prompts (overall, category) or seeds (prompt rows) the test ran over


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
    """Verdict from an interval (FVD deltas): improved / worse when it excludes 0 on that side."""
    if negligible or not (_finite(lo) and _finite(hi)):
        return "unchanged"
    better_side = hi < 0 if lower_is_better else lo > 0
    worse_side = lo > 0 if lower_is_better else hi < 0
    return "improved" if better_side else "worse" if worse_side else "unchanged"


def sign_flip_pvalue(x: np.ndarray, rng: np.random.Generator) -> float:
    """Two-sided p-value of mean(x) = 0 under sign symmetry: exact up to EXACT_UP_TO values."""
    x = np.asarray(x, np.float64)
    n = len(x)
    observed = abs(x.mean()) * (1 - 1e-12)  # ties with the observed pattern count as extreme
    if n <= EXACT_UP_TO:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float((np.abs(signs @ x / n) >= observed).mean())
    signs = rng.choice(np.array([-1.0, 1.0]), size=(RANDOM_FLIPS, n))
    return float((1 + (np.abs(signs @ x / n) >= observed).sum()) / (RANDOM_FLIPS + 1))


def t_interval(x: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats

    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def t_test_pvalue(x: np.ndarray) -> float:
    from scipy import stats

    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return float("nan")
    if x.std(ddof=1) == 0:
        return 0.0 if x.mean() != 0 else 1.0
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family)."""
    idx = [i for i, p in enumerate(pvalues) if _finite(p)]
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        out[i] = running
    return out


def negligible(delta: float, base: float, cfg: dict) -> bool:
    """A change below `verdict.min_relative_change` of the base value does not count as a verdict."""
    rel = float(cfg["verdict"].get("min_relative_change", 0.0))
    return _finite(delta) and _finite(base) and abs(delta) < rel * abs(base)


def decide(d: Delta, cfg: dict) -> str:
    """The verdict of a row from its (adjusted) p-value, direction and size."""
    if d.note.startswith(TOO_FEW):
        return TOO_FEW
    p = d.p_adjusted if _finite(d.p_adjusted) else d.p_value
    alpha = 1 - float(cfg["verdict"]["confidence"])
    if not _finite(p) or p > alpha or negligible(d.delta, d.value_a, cfg) or not d.delta:
        return "unchanged"
    better = d.delta < 0 if d.metric in cfg["verdict"]["lower_is_better"] else d.delta > 0
    return "improved" if better else "worse"


def paired_delta(recs_a: list[dict], recs_b: list[dict], metric: str, scope: str, group: str, a: str, b: str,
                 cfg: dict, rng: np.random.Generator) -> Delta:
    """Delta of `metric` from checkpoint a to b over videos paired by (prompt id, seed), with its test
    (verdict before any multiplicity adjustment; compare_scores adjusts the family and decides again)."""
    va = {(r.get("prompt_id"), r.get("seed")): r["metrics"].get(metric) for r in recs_a}
    vb = {(r.get("prompt_id"), r.get("seed")): r["metrics"].get(metric) for r in recs_b}
    keys = [k for k in va if k in vb and _finite(va[k]) and _finite(vb[k])]
    conf = float(cfg["verdict"]["confidence"])
    nan = float("nan")
    if not keys:
        return Delta(metric, scope, group, a, b, nan, nan, nan, nan, nan, nan, 0, "unchanged",
                     "not measured (no video of both checkpoints with the same prompt and seed)")
    mean_a = float(np.mean([va[k] for k in keys]))
    mean_b = float(np.mean([vb[k] for k in keys]))
    diffs: dict[str, list[float]] = {}
    for k in keys:
        diffs.setdefault(str(k[0]), []).append(vb[k] - va[k])
    if scope == "prompt":
        units = np.concatenate(list(diffs.values()))
        p = t_test_pvalue(units)
        note = f"t-test over {len(units)} seeds" if len(units) >= 2 else f"{TOO_FEW}: 1 seed, no test"
    else:
        units = np.array([np.mean(v) for v in diffs.values()])
        if len(units) < MIN_PROMPTS:
            p = nan
            note = (f"{TOO_FEW}: {len(units)} < {MIN_PROMPTS} (a sign-flip test over prompts cannot reach "
                    f"p <= 0.05 with fewer)")
        else:
            p = sign_flip_pvalue(units, rng)
            note = (f"sign-flip test over {len(units)} prompt means, "
                    f"{'exact' if len(units) <= EXACT_UP_TO else f'{RANDOM_FLIPS} random patterns'}")
    lo, hi = t_interval(units, conf)
    delta = mean_b - mean_a
    pct = 100.0 * delta / abs(mean_a) if mean_a else nan
    d = Delta(metric, scope, group, a, b, mean_a, mean_b, delta, pct, lo, hi, len(keys), "unchanged", note, p, p,
              len(units))
    d.verdict = decide(d, cfg)
    return d


def adjust_families(deltas: list[Delta], cfg: dict) -> None:
    """Holm across the per-category and per-prompt rows of each (comparison, metric); verdicts re-decided."""
    families: dict[tuple, list[Delta]] = {}
    for d in deltas:
        if d.scope in ("category", "prompt") and d.metric != "fvd":
            families.setdefault((d.a, d.b, d.metric), []).append(d)
    for rows in families.values():
        for d, p in zip(rows, holm([d.p_value for d in rows])):
            d.p_adjusted = p
            d.verdict = decide(d, cfg)


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
    adjust_families(deltas, cfg)

    fvd_by = {(r["checkpoint"], r["category"]): r for r in fvd_rows}
    ck_rows = {}
    for c in order:
        agg = {m: _mean(r["metrics"].get(m) for r in by_ck[c]) for m in PER_VIDEO_METRICS}
        agg["fvd"] = _num(fvd_by.get((c, "all"), {}).get("value"))
        g, _ = grade(agg, cfg)
        ck_rows[c] = {"videos": len(by_ck[c]), "metrics": agg, "grade": g,
                      "acceptance": acceptance(agg, cfg, fvd_set_size(fvd_by.get((c, "all"))))}

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
    n_sub = int(cfg["fvd"]["subsamples"])
    conf = float(cfg["verdict"]["confidence"])
    lower = "fvd" in cfg["verdict"]["lower_is_better"]
    for cat in ["all", *sorted(ref_by_cat)]:
        ks = [k for k in keys if cat == "all" or fa[k]["category"] == cat]
        ref = [f for fs in ref_by_cat.values() for f in fs] if cat == "all" else ref_by_cat.get(cat, [])
        if len(ks) < 2 or len(ref) < 2:
            continue
        ga = np.stack([load_npy(storage, fa[k]["features"]) for k in ks])
        gb = np.stack([load_npy(storage, fb[k]["features"]) for k in ks])
        d, lo, hi = fvdlib.fvd_delta_ci(ga, gb, np.stack(ref), n_sub=n_sub, confidence=conf, seed=seed)
        va = fvdlib.fvd_from_features(ga, np.stack(ref))
        out.append(Delta("fvd", "overall" if cat == "all" else "category", cat, a, b, va, va + d, d,
                         100.0 * d / va if va else float("nan"), lo, hi, len(ks),
                         verdict_of(lo, hi, lower, negligible(d, va, cfg)),
                         "paired half-sampling interval over generated and reference clips"))
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
               "p", "p (Holm)", "verdict", "test"]
    body, css = [], {}
    for i, d in enumerate(rows):
        label = d.metric if first_col == "metric" else d.group
        adjusted = d.p_adjusted if d.scope != "overall" else float("nan")
        body.append([label, d.a, d.b, d.value_a, d.value_b, d.delta, d.percent, d.ci_low, d.ci_high, d.n_pairs,
                     d.p_value, adjusted, d.verdict, d.note])
        css[(i, 12)] = _VERDICT_CSS.get(d.verdict, "")
    report.table(headers, body, css)


def conclusion(deltas: list[Delta], order: list[str], base: str) -> str:
    """One line: what the last checkpoint did to the overall score against the baseline, and how sure."""
    last = order[-1] if order[-1] != base else (order[0] if len(order) > 1 else base)
    row = next((d for d in deltas if d.scope == "overall" and d.metric == "quality" and d.a == base
                and d.b == last), None)
    if row is None or not _finite(row.delta):
        return f"Conclusion: no paired quality comparison of {last} against {base} (see below)."
    others = sorted({d.metric for d in deltas if d.scope == "overall" and d.a == base and d.b == last
                     and d.verdict in ("improved", "worse") and d.metric != "quality"})
    tail = f"; also changed: {', '.join(others)}" if others else ""
    if row.verdict == TOO_FEW:
        return (f"Conclusion: {last} vs {base}: quality {row.delta:+.2f} points, but {row.n_units} prompts are too "
                f"few for a verdict (need {MIN_PROMPTS}){tail}.")
    p = f"p = {row.p_value:.3g}, {row.note}"
    word = {"improved": "IMPROVED", "worse": "WORSE", "unchanged": "no clear change in"}[row.verdict]
    return (f"Conclusion: {last} vs {base}: {word} quality, {row.delta:+.2f} points "
            f"({row.value_a:.1f} -> {row.value_b:.1f}, 95% interval [{row.ci_low:+.2f}, {row.ci_high:+.2f}], {p})"
            f"{tail}.")


def test_model_banner(records: list[dict], summaries: list[dict]) -> str:
    """A warning when the videos or the metrics come from random test models (their numbers mean nothing)."""
    from vidtune.models.specs import get_spec

    parts = []
    models = {str((r.get("generation") or {}).get("model")) for r in records if r.get("generation")}
    tiny = []
    for m in sorted(models):
        try:
            if get_spec(m).tiny:
                tiny.append(m)
        except Exception:  # an unknown model name: not ours to judge
            continue
    if tiny:
        parts.append(f"the videos come from random test generators ({', '.join(tiny)})")
    if any((s.get("clip") or {}).get("random_weights") for s in summaries):
        parts.append("CLIP is a tiny random test model")
    if any("I3D is a tiny random test model" in w for s in summaries for w in s.get("warnings", [])):
        parts.append("I3D is a tiny random test model")
    if not parts:
        return ""
    return "TEST MODELS: " + "; ".join(parts) + ". The numbers below exercise the pipeline and mean nothing."


def _build_report(order, ck_rows, deltas, by_ck, categories, fvd_by, records, summaries, cfg, storage,
                  contact_sheets) -> Report:
    r = Report(f"vidtune evaluation: {', '.join(order)}")
    banner = test_model_banner(records, summaries)
    if banner:
        r.paragraph(banner, "bad")
    base = next((d.a for d in deltas if d.scope == "overall"), order[0])
    r.paragraph(conclusion(deltas, order, base))
    r.paragraph(f"{sum(len(v) for v in by_ck.values())} scored videos, {len(categories)} categories, "
                f"checkpoints in order: {', '.join(order)}. Grades and acceptance from {cfg['source']}.")
    r.paragraph("Verdict method: sign-flip permutation test over prompt means (exact up to "
                f"{EXACT_UP_TO} prompts; 'too few prompts' below {MIN_PROMPTS}); per-prompt rows: t-test over "
                "seeds; Holm's correction across the per-category and per-prompt rows of each metric; "
                f"level {1 - float(cfg['verdict']['confidence']):.2f}. Intervals: Student-t on prompt means.")
    clip_desc = next((s.get("clip") for s in summaries if s.get("clip")), None)
    if clip_desc:
        r.paragraph(f"CLIP model {clip_desc['model']} from {clip_desc['weights']} (image size "
                    f"{clip_desc['image_size']}, text context {clip_desc['context_length']} tokens; longer prompts "
                    "are embedded as the mean of sentence chunks, each record gives the share of tokens seen).")
    long_prompts = sorted({(str(x.get("prompt_id")), (x.get("notes") or {}).get("prompt_chunks"),
                            (x.get("notes") or {}).get("prompt_kept_share")) for x in records
                           if (x.get("notes") or {}).get("prompt_chunks", 1) > 1
                           or (x.get("notes") or {}).get("prompt_kept_share", 1.0) < 1.0})
    if long_prompts:
        r.paragraph("Prompts longer than the text context: " + "; ".join(
            f"{p}: {c} chunks, {100 * k:.0f}% of tokens embedded" for p, c, k in long_prompts))

    r.heading("Checkpoints")
    headers = ["checkpoint", "videos", "quality", "clip_cosine", "temporal", "flicker", "motion", "frozen share",
               "sharpness", "colour", "FVD (set)", "FVD interval", "clips/set", "archive overall (100 - FVD/10)",
               "grade", "accepted"]
    rows, css = [], {}
    for i, c in enumerate(order):
        m = ck_rows[c]["metrics"]
        f = fvd_by.get((c, "all"), {})
        has = f.get("value") is not None
        ci = f"[{_num(f.get('ci_low')):.4g}, {_num(f.get('ci_high')):.4g}]" if has else "n/a"
        size = f"{f.get('n_generated')} gen / {f.get('n_reference')} ref" if f else "n/a"
        acc = ck_rows[c]["acceptance"]["passed"]
        rows.append([c, ck_rows[c]["videos"], m["quality"], m["clip_cosine"], m["temporal_consistency"],
                     m["flicker"], m["motion"], m["frozen"], m["sharpness"], m["colour_diversity"], m["fvd"], ci, size,
                     _num(f.get("archive_overall")), ck_rows[c]["grade"],
                     {True: "yes", False: "no", None: "incomplete"}[acc]])
        css[(i, 15)] = {True: "good", False: "bad", None: "muted"}[acc]
    r.table(headers, rows, css)
    crit = "; ".join(f"{k} {'>=' if 'min' in v else '<='} {v.get('min', v.get('max'))}"
                     for k, v in cfg["acceptance"].items())
    r.paragraph(f"Acceptance: {crit}; the FVD limit holds for sets of {cfg['fvd']['threshold_clips']} clips. "
                "'incomplete' means a criterion's metric was not measured or its FVD set was smaller. A grade "
                "is 'incomplete' unless every graded metric was measured.")
    r.paragraph(f"FVD protocol: {fvdlib.PROTOCOL}. FVD is a distance between SETS; it is biased upward in small "
                "sets (two identical distributions: ~200 at 9 clips, ~55 at 256), so compare it only between "
                "sets of the same size. 'archive overall (100 - FVD/10)' is the archive team's legacy 'Overall %', "
                "given here from the per-set FVD so old and new reports can be read side by side; per-video FVD "
                "is not reported because one clip has no distribution (its covariance is undefined), so the old "
                "per-video numbers measured mostly the small-set bias.")
    discarded = sum(int(f.get("n_discarded_short") or 0) for (c, cat), f in fvd_by.items() if cat == "all")
    if discarded:
        r.paragraph(f"FVD: {discarded} generated videos shorter than 16 frames were discarded (not padded).")

    warns = sorted({w for s in summaries for w in s.get("warnings", [])})
    if warns:
        r.heading("Warnings")
        r.bullets(warns)

    r.heading("Changes with their intervals")
    for a, b in list(dict.fromkeys((d.a, d.b) for d in deltas)):
        rows_o = [d for d in deltas if (d.a, d.b) == (a, b) and d.scope == "overall" and _finite(d.percent)]
        if rows_o:
            r.figure(_delta_figure(rows_o, cfg), f"{a} -> {b}: change of each metric in % of {a} with its 95% "
                     "interval; right of 0 is better for every metric (lower-is-better metrics are flipped)",
                     name=f"deltas-{a}-{b}")
    r.heading("Charts")
    r.figure(_metric_per_checkpoint_figure(order, by_ck, fvd_by), "Metrics per checkpoint (mean and 95% "
             "interval over videos; FVD with its half-sampling interval)", name="metrics-per-checkpoint")
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
        r.paragraph(f"Per prompt and seed, the same eight evenly spaced frames of every checkpoint, one row each "
                    f"({' | '.join(order)}), so changes are seen side by side.")
        groups: dict[tuple[str, str], list[dict]] = {}
        for rec in records:
            if rec.get("contact_sheet"):
                groups.setdefault((str(rec.get("prompt_id")), str(rec.get("seed"))), []).append(rec)
        for (p, seed), recs in sorted(groups.items()):
            recs = sorted(recs, key=lambda x: order.index(x["checkpoint"]) if x["checkpoint"] in order else 99)
            first = recs[0]
            caption = (f"{p} seed {seed} ({first.get('category')}): {str(first.get('prompt') or '')[:160]} -- " +
                       " | ".join(f"{x['checkpoint']} grade {x.get('grade')}, quality "
                                  f"{_fmt((x.get('metrics') or {}).get('quality'))}" for x in recs))
            sheets = []
            for x in recs:
                try:
                    sheets.append(storage.read_bytes(x["contact_sheet"]))
                except NotFound:
                    continue
            if sheets:
                r.figure(_stack_sheets(sheets), caption, name=f"sheets-{p}-{seed}")
            else:
                r.paragraph(f"{caption} (contact sheets missing)", "muted")
    rejected = [rec for rec in records if rec.get("error")]
    if rejected:
        r.heading("Rejected videos")
        r.table(["video", "reason"], [[x["video"], x["error"]] for x in rejected])
    return r


def _stack_sheets(sheets: list[bytes]) -> bytes:
    """Contact strips stacked top to bottom (one row per checkpoint) as one PNG."""
    import io

    from PIL import Image

    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in sheets]
    out = Image.new("RGB", (max(i.width for i in imgs), sum(i.height for i in imgs)), (255, 255, 255))
    y = 0
    for i in imgs:
        out.paste(i, (0, y))
        y += i.height
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def _delta_figure(rows: list[Delta], cfg: dict):
    """Horizontal bars of % change per metric with 95% intervals, oriented so that right is better."""
    fig, ax = new_figure(7.0, 0.45 * len(rows) + 1.2)
    y = np.arange(len(rows))
    sign = [-1.0 if d.metric in cfg["verdict"]["lower_is_better"] else 1.0 for d in rows]
    scale = [100.0 / abs(d.value_a) if d.value_a else float("nan") for d in rows]
    mid = [s * d.percent for s, d in zip(sign, rows)]
    lo = [s * k * (d.ci_low if s > 0 else d.ci_high) for s, k, d in zip(sign, scale, rows)]
    hi = [s * k * (d.ci_high if s > 0 else d.ci_low) for s, k, d in zip(sign, scale, rows)]
    err = np.array([[max(m - l_, 0) if _finite(l_) else 0 for m, l_ in zip(mid, lo)],
                    [max(h - m, 0) if _finite(h) else 0 for m, h in zip(mid, hi)]])
    colours = [{"improved": "tab:green", "worse": "tab:red"}.get(d.verdict, "tab:gray") for d in rows]
    ax.barh(y, mid, xerr=err, color=colours, capsize=3, alpha=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{d.metric} ({d.verdict})" for d in rows], fontsize=8)
    ax.set_xlabel("% change (right = better)")
    span = max([abs(v) for v in (*mid, *lo, *hi) if _finite(v)] + [1.0])
    ax.set_xlim(-1.1 * span, 1.1 * span)   # symmetric around 0: the axis does not magnify a small change
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


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
        # From 0 (and to the top of bounded scales): an autoscaled axis turns a noise-sized gap into a cliff.
        top = {"quality": 100.0, "clip_cosine": 1.0, "temporal_consistency": 1.0, "sharpness": 1.0,
               "colour_diversity": 1.0}.get(m)
        ax.set_ylim(bottom=min([0.0, *(v for v in vals if _finite(v))]), top=top)
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
