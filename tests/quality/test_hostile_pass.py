"""The whole metadata pass (caption features, every default rule, statistics) on a hostile manifest, against
the output the per-row implementation gave for it (tests/quality/data/hostile_pass.json, written once by
that implementation with `python tests/quality/test_hostile_pass.py --write`): no rejected row may gain,
lose or reword a reason, and no feature or statistic may change."""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from vidtune.quality.features import FEATURE_COLUMNS, with_features
from vidtune.quality.manifest import CORE_SCHEMA
from vidtune.quality.probe import PROBE_SCHEMA
from vidtune.quality.rules import apply_rules, default_rules, parse_rules
from vidtune.quality.stats import compute_stats

GOLDEN = Path(__file__).parent / "data" / "hostile_pass.json"
# Every default rule plus the same search at wide thresholds, where candidate generation differs most.
WIDE = parse_rules("rules:\n - {name: near_12, type: near_duplicate, field: phash, max_distance: 12}\n"
                   " - {name: near_16, type: near_duplicate, field: phash, max_distance: 16}\n"
                   " - {name: near_24, type: near_duplicate, field: phash, max_distance: 24}\n")


def hostile_captions(rng: random.Random) -> list:
    word = ["산", "바다", "강가의", "나무", "ㅋㅋㅋ", "!!", "A", "숲길", "漢字", "テスト", "😀", "café", "e\u0301"]
    ok = "설악산 능선 위로 구름이 천천히 흘러가는 모습이다. 카메라가 왼쪽에서 오른쪽으로 천천히 이동한다. " * 2
    return [
        None, "", " ", "\t\n\r", "\x00", "a\x00b " + ok, "\x01\x02\x03\x1b[31m" + ok, ok + "\x7f\x1c\x1d\x1e\x1f",
        "😀" * 60, "👨‍👩‍👧‍👦 가족 " * 20, ok + "😀🎬🎥" * 10, "𠀀𠀁 漢字 テスト " * 10, "ㅋ" * 11, "ㅋ" * 10 + ok,
        ok + " " * 11, ok + "\u3000" * 12 + "끝", ok + "\xa0\u2028\u2029\u200b\ufeff", "\ud7a3" * 60,
        "e\u0301" * 30 + ok, "A documentary shot of a harbour at dawn with fishing boats. " * 4, ok[:49], ok[:50],
        "파도가 바위에 부서지는 장면이다. " * 12, "■◆★※#@^*" * 5 + ok, "가 " * 800, ok * 12,
        "산" * 3_000_000,                                   # 3 M characters (9 MB of UTF-8) in one caption
        ("바다 " * 500_000)[:-1],                             # a million words, one 3-gram
        "\ufffd\ufffe" + ok, "\U0010ffff" + ok, ok.replace(" ", "\t"), ok.upper(), " " + ok + " ",
        *[" ".join(rng.choice(word) for _ in range(rng.randint(0, 120))) for _ in range(40)],
    ]


def hostile_manifest() -> pa.Table:
    rng = random.Random(14)
    captions = hostile_captions(rng)
    n = len(captions)
    nums = [1280.0, 720.0, 1920.0, 1080.0, 0.0, -1.0, math.inf, -math.inf, math.nan, None, 1e308, 5e-324, 240.0]
    durs = [10.0, 3.0, 46.0, 5.0, 45.0, 0.0, -2.0, math.inf, -math.inf, math.nan, None, 1e300]
    base = rng.getrandbits(192)
    rows = []
    for i, cap in enumerate(captions):
        kind = rng.choice(["video", "video", "image", "", None, "VIDEO"])
        bits = 64 if kind == "image" else 192
        h = base if i % 3 == 0 else rng.getrandbits(192)
        for _ in range(rng.randint(0, 30)):
            h ^= 1 << rng.randrange(192)
        h &= (1 << bits) - 1
        phash = rng.choice([f"{h:0{bits // 4}x}", f"{h:0{bits // 4}X}", None, ""])
        rows.append({
            "id": rng.choice([f"r{i}", f"r{i}", "dup", "", "아이디 😀"]),
            "media": f"m/{i}.mp4", "caption": cap, "category": rng.choice(["자연", "", None, "역사", "😀"]),
            "media_type": kind, "width": rng.choice(nums), "height": rng.choice(nums), "duration": rng.choice(durs),
            "source": "hostile", "ingest_error": rng.choice([None] * 6 + ["malformed JSON: x", "", "bad\x00byte"]),
            "extra": None, "media_exists": rng.choice([True, False, None]),
            "decodable": rng.choice([True, True, False, None]),
            "probe_error": rng.choice([None, "undecodable: no frame", ""]),
            "probe_fps": rng.choice([25.0, 5.0, 121.0, math.nan, None, math.inf]),
            "probe_width": rng.choice([None, 1280.0, math.nan]), "probe_height": rng.choice([None, 720.0, 0.0]),
            "probe_duration": rng.choice([None, 12.0, math.inf]),
            "sha256": rng.choice(["aa", "bb", None, "", f"s{i}"]), "phash": phash,
            "blur": rng.choice([200.0, 3.0, math.nan, None, -math.inf]), "motion": rng.choice([1.0, 0.0, None]),
            "black_ratio": rng.choice([0.0, 0.9, None]), "frozen_ratio": rng.choice([0.1, 0.95, math.nan]),
            "scene_cuts": rng.choice([0, 31, None]),
        })
    # Well-formed rows whose key-frame hashes form clusters a few bits apart, as re-encodes do.
    bases = {kind: [rng.getrandbits(bits) for _ in range(4)] for kind, bits in (("video", 192), ("image", 64))}
    for i in range(120):
        kind = "image" if i % 5 == 0 else "video"
        bits = 64 if kind == "image" else 192
        h = rng.choice(bases[kind])
        for _ in range(rng.randint(0, 20 if kind == "video" else 12)):
            h ^= 1 << rng.randrange(bits)
        rows.append({**rows[-1], "id": f"ok{i}", "caption": captions[5][4:],
                     "category": "자연", "media_type": kind, "width": 1280.0, "height": 720.0,
                     "duration": 10.0 + (i % 3) * 0.2 if kind == "video" else None, "ingest_error": None,
                     "decodable": True, "probe_error": None, "probe_fps": 25.0, "probe_width": None,
                     "probe_height": None, "probe_duration": None, "sha256": f"ok{i}", "blur": 200.0,
                     "motion": 1.0, "black_ratio": 0.0, "frozen_ratio": 0.0, "scene_cuts": 0,
                     "phash": f"{h:0{bits // 4}x}"})
    probe = [f for f in PROBE_SCHEMA if f.name in rows[0]]
    return pa.Table.from_pylist(rows, schema=pa.schema(list(CORE_SCHEMA) + probe))


def _plain(x):
    """JSON-stable values: floats by repr (nan, inf and -0.0 kept apart), containers walked."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def run_pass() -> dict:
    table = with_features(hostile_manifest())
    out = {"features": {c: _plain(table.column(c).to_pylist()) for c in FEATURE_COLUMNS}}
    for name, rules in (("default", default_rules()), ("wide", WIDE)):
        res = apply_rules(table, rules)
        out[name] = {"report": _plain(res.report), "clean": res.clean.column("id").to_pylist(),
                     "rejected": [[i, r] for i, r in zip(res.rejected.column("id").to_pylist(),
                                                         res.rejected.column("reasons").to_pylist())]}
    stats = compute_stats(table.append_column("split", pa.array(
        ["val" if i % 4 == 0 else "train" for i in range(table.num_rows)])), content_sample=0)
    out["stats"] = _plain({k: v for k, v in stats.items() if k != "content_words"})
    return out


def test_the_pass_matches_the_per_row_implementation_on_hostile_rows():
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = json.loads(json.dumps(run_pass(), ensure_ascii=False))
    assert got["features"] == want["features"]
    for name in ("default", "wide"):
        assert got[name]["rejected"] == want[name]["rejected"], name
        assert got[name]["clean"] == want[name]["clean"], name
        assert got[name]["report"] == want[name]["report"], name
    assert got["stats"] == want["stats"]
    # The manifest is hostile enough to exercise every default rule and a near-duplicate cluster.
    assert all(r["rejected"] for r in want["default"]["report"]["rules"] if r["name"] not in ("aspect_ratio",))
    assert any("cluster keeps" in " ".join(r) for _, r in want["wide"]["rejected"])


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_text(json.dumps(run_pass(), ensure_ascii=False, indent=0), encoding="utf-8")
