"""Grades, acceptance criteria and the overall quality score, all driven by a YAML config (grades.yaml).

Code only interprets the config, so thresholds change without a release and every report states which
thresholds it used.
"""
from __future__ import annotations

import math
from importlib import resources

import yaml

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.storage import Storage

DEFAULT_CONFIG = "grades.yaml"
_OPS = ("min", "max")


def default_config_text() -> str:
    return resources.files("vidtune.evaluate").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")


def load_config(uri: str | None = None, storage: Storage | None = None) -> dict:
    """The grades config from a path/URI, or the packaged default; validated so mistakes fail early."""
    text = (storage or Storage()).read_text(uri) if uri else default_config_text()
    where = uri or f"packaged {DEFAULT_CONFIG}"
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{where}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise InvalidArgument(f"{where}: expected a mapping at the top level")
    for key in ("quality", "grades", "acceptance"):
        if key not in cfg:
            raise InvalidArgument(f"{where}: missing section {key!r}")
    weights = cfg["quality"].get("weights", {})
    if not weights or any(float(w) < 0 for w in weights.values()) or sum(map(float, weights.values())) <= 0:
        raise InvalidArgument(f"{where}: quality.weights must be non-negative and not all zero")
    for g in cfg["grades"]:
        if "grade" not in g:
            raise InvalidArgument(f"{where}: a grade entry has no 'grade' name: {g}")
        _check_rules(g.get("rules") or {}, f"{where}: grade {g['grade']}")
    _check_rules(cfg["acceptance"], f"{where}: acceptance")
    cfg.setdefault("verdict", {})
    cfg["verdict"].setdefault("confidence", 0.95)
    cfg["verdict"].setdefault("lower_is_better", ["flicker", "frame_difference", "fvd", "frozen"])
    cfg["verdict"].setdefault("min_relative_change", 0.0)
    cfg.setdefault("fvd", {})
    cfg["fvd"].setdefault("size", 224)
    cfg["fvd"].setdefault("min_reliable_clips", 256)
    cfg["fvd"].setdefault("threshold_clips", cfg["fvd"]["min_reliable_clips"])
    cfg["fvd"].setdefault("subsamples", 200)
    cfg["source"] = where
    return cfg


def _check_rules(rules: dict, where: str) -> None:
    for metric, rule in rules.items():
        if not isinstance(rule, dict) or not rule or any(op not in _OPS for op in rule):
            raise InvalidArgument(f"{where}: rule for {metric!r} must be a mapping of min/max, got {rule!r}")
        for op, v in rule.items():
            try:
                float(v)
            except (TypeError, ValueError):
                raise InvalidArgument(f"{where}: {metric}.{op} must be a number, got {v!r}") from None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def quality_components(metrics: dict, cfg: dict) -> dict[str, float]:
    """Each quality component in [0, 1] (formulas in grades.yaml); components that cannot be computed are absent."""
    q = cfg["quality"]
    out = {}
    cos = metrics.get("clip_cosine")
    if _finite(cos):
        lo, hi = float(q.get("clip_floor", 0.15)), float(q.get("clip_full", 0.35))
        out["clip"] = min(max((cos - lo) / (hi - lo), 0.0), 1.0)
    if _finite(metrics.get("temporal_consistency")):
        out["temporal_consistency"] = min(max(metrics["temporal_consistency"], 0.0), 1.0)
    if _finite(metrics.get("sharpness_lapvar")):
        lv = metrics["sharpness_lapvar"]
        out["sharpness"] = lv / (lv + float(q.get("sharpness_reference", 100.0)))
    if _finite(metrics.get("colour_diversity")):
        out["colour_diversity"] = min(max(metrics["colour_diversity"], 0.0), 1.0)
    if _finite(metrics.get("flicker")):
        out["stability"] = 1.0 / (1.0 + (metrics["flicker"] / float(q.get("flicker_reference", 5.0))) ** 2)
    if _finite(metrics.get("motion")):
        out["dynamics"] = min(metrics["motion"] / float(q.get("motion_reference", 2.0)), 1.0)
    return out


def missing_components(metrics: dict, cfg: dict) -> list[str]:
    """Weighted quality components that were not measured (then there is no overall score)."""
    comps = quality_components(metrics, cfg)
    return [k for k, w in cfg["quality"]["weights"].items() if float(w) > 0 and k not in comps]


def quality_score(metrics: dict, cfg: dict) -> float:
    """100 * weighted GEOMETRIC mean of the components, each floored at `quality.floor`; NaN unless every
    weighted component was measured. A geometric mean lets one failed component (noise: no stability; a
    frozen or blank video: no dynamics) pull the whole score down, where an average would let the others
    (sharpness and colour reward noise) carry it."""
    comps = quality_components(metrics, cfg)
    weights = {k: float(w) for k, w in cfg["quality"]["weights"].items() if float(w) > 0}
    if any(k not in comps for k in weights):
        return float("nan")
    floor = float(cfg["quality"].get("floor", 0.01))
    total = sum(weights.values())
    return 100.0 * math.exp(sum(w * math.log(max(comps[k], floor)) for k, w in weights.items()) / total)


def graded_metrics(cfg: dict) -> list[str]:
    """Every metric a grade depends on: the overall score and each metric a grade rule names."""
    names = ["quality"]
    for g in cfg["grades"]:
        names += [m for m in (g.get("rules") or {}) if m not in names]
    return names


def check_rules(metrics: dict, rules: dict) -> list[dict]:
    """Evaluate min/max rules: one row per rule with status pass / fail / not measured."""
    rows = []
    for metric, rule in rules.items():
        v = metrics.get(metric)
        for op, limit in rule.items():
            limit = float(limit)
            if not _finite(v):
                status = "not measured"
            elif (op == "min" and v >= limit) or (op == "max" and v <= limit):
                status = "pass"
            else:
                status = "fail"
            rows.append({"metric": metric, "op": ">=" if op == "min" else "<=", "limit": limit,
                         "value": v if _finite(v) else None, "status": status})
    return rows


INCOMPLETE = "incomplete"


def grade(metrics: dict, cfg: dict) -> tuple[str, list[dict]]:
    """The first grade whose rules all pass, with its rule rows; the last grade when none does.

    "incomplete" (no letter) unless every graded metric was measured: a grade from part of the evidence
    would look the same as a grade from all of it."""
    grades = cfg["grades"]
    unmeasured = [m for m in graded_metrics(cfg) if not _finite(metrics.get(m))]
    if unmeasured:
        return INCOMPLETE, [{"metric": m, "op": "", "limit": None, "value": None, "status": "not measured"}
                            for m in unmeasured]
    for g in grades:
        rows = check_rules(metrics, g.get("rules") or {})
        if all(r["status"] == "pass" for r in rows):
            return str(g["grade"]), rows
    return str(grades[-1]["grade"]), check_rules(metrics, grades[-1].get("rules") or {})


def acceptance(metrics: dict, cfg: dict, fvd_set_size: int | None = None) -> dict:
    """{"passed": True | False | None (incomplete), "criteria": rule rows}.

    FVD thresholds hold for sets of `fvd.threshold_clips` clips (FVD is biased upward in small sets): an FVD
    from a smaller set is "not comparable" with them, and acceptance is then incomplete."""
    rows = check_rules(metrics, cfg["acceptance"])
    need = int(cfg["fvd"].get("threshold_clips", 0))
    for r in rows:
        if r["metric"] == "fvd" and r["status"] != "not measured" and (fvd_set_size or 0) < need:
            r["status"] = f"not comparable ({fvd_set_size or 0} clips per set; the limit holds for {need})"
    if any(r["status"] == "fail" for r in rows):
        passed = False
    elif any(r["status"] != "pass" for r in rows):
        passed = None
    else:
        passed = True
    return {"passed": passed, "criteria": rows}
