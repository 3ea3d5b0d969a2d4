"""Filter rules: each default rule with a passing and a failing row; YAML parsing; accounting."""
from __future__ import annotations

import pyarrow as pa
import pytest

from vidtune.platform.errors import InvalidArgument
from vidtune.quality.features import caption_features
from vidtune.quality.manifest import CORE_SCHEMA
from vidtune.quality.probe import PROBE_SCHEMA
from vidtune.quality.rules import apply_rules, default_rules, load_rules, near_duplicates, parse_rules

from quality_testlib import caption

GOOD = caption(1)


def manifest(*rows: dict, probed: bool = True) -> pa.Table:
    """A manifest whose rows pass every default rule unless a row overrides a field."""
    base = {"media": "m.mp4", "caption": GOOD, "category": "자연", "media_type": "video", "width": 1280.0,
            "height": 720.0, "duration": 10.0, "source": "t", "ingest_error": None, "extra": None}
    probe = {"media_exists": True, "decodable": True, "probe_error": None, "probe_fps": 25.0, "sha256": None,
             "phash": None, "blur": 200.0, "motion": 1.0, "black_ratio": 0.0, "frozen_ratio": 0.0, "scene_cuts": 0}
    full = [{**base, **(probe if probed else {}), "id": f"r{i}", **r} for i, r in enumerate(rows)]
    fields = list(CORE_SCHEMA) + ([f for f in PROBE_SCHEMA if f.name in probe] if probed else [])
    return pa.Table.from_pylist(full, schema=pa.schema(fields))


CASES = [  # rule, passing row, failing row, text in the failing reason
    ("caption_length", {"caption": GOOD}, {"caption": "짧은 설명입니다."}, "caption_chars 9 < min 50"),
    ("caption_length", {}, {"caption": GOOD + " 그리고 " + "바다와 산이 보인다. " * 160}, "> max 1500"),
    ("video_duration", {"duration": 45.0}, {"duration": 3.0}, "duration 3 < min 5"),
    ("video_duration", {"media_type": "image", "duration": None}, {"duration": 46.0}, "> max 45"),
    ("caption_char_run", {"caption": GOOD + " ㅋㅋㅋ"}, {"caption": GOOD + " " + "ㅋ" * 30}, "max_char_run 30"),
    ("caption_repeated_ngrams", {}, {"caption": "파도가 바위에 부서지는 장면이다. " * 12}, "ngram_repeat_ratio"),
    ("special_characters", {"caption": GOOD + " (사진)"}, {"caption": GOOD + " ■◆★※#@^*■◆★※#@^*■◆★※#@^*"},
     "special_ratio"),
    ("hangul_ratio", {}, {"caption": "A long English caption about a river valley in the autumn light. " * 2},
     "hangul_ratio 0 < min 0.5"),
    ("min_resolution", {"width": 426.0, "height": 240.0}, {"width": 320.0, "height": 180.0},
     "short_side 180 < min 240"),
    ("aspect_ratio", {"width": 720.0, "height": 1280.0}, {"width": 1280.0, "height": 400.0}, "aspect_ratio 3.2"),
    ("fps_range", {"probe_fps": 10.0}, {"probe_fps": 5.0}, "fps 5 < min 10"),
    ("media_readable", {}, {"decodable": False, "probe_error": "undecodable: x.mp4: no frame decodes"},
     "no frame decodes"),
    ("blur", {"blur": 15.0}, {"blur": 3.5}, "blur 3.5 < min 15"),
    ("still_clip", {"motion": 0.06}, {"motion": 0.0}, "motion 0 < min 0.05"),
    ("black_frames", {"black_ratio": 0.5}, {"black_ratio": 0.9}, "black_ratio 0.9 > max 0.5"),
    ("frozen_frames", {"frozen_ratio": 0.2}, {"frozen_ratio": 0.95}, "frozen_ratio 0.95 > max 0.8"),
    ("scene_cuts", {"scene_cuts": 30}, {"scene_cuts": 31}, "scene_cuts 31 > max 30"),
    ("ingest_errors", {}, {"ingest_error": "malformed JSON: Expecting value"}, "malformed JSON"),
]


@pytest.mark.parametrize("rule,passing,failing,reason", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_rule_passes_one_row_and_rejects_the_other(rule, passing, failing, reason):
    res = apply_rules(manifest(passing, failing), default_rules())
    assert res.clean.column("id").to_pylist() == ["r0"], res.rejected.to_pylist()
    reasons = res.rejected.column("reasons").to_pylist()[0]
    mine = [r for r in reasons if r.startswith(f"{rule}: ")]
    assert mine and reason in mine[0], reasons
    counts = {r["name"]: r["rejected"] for r in res.report["rules"]}
    assert counts[rule] == 1


def test_exact_duplicates_keep_the_first_row():
    res = apply_rules(manifest({"sha256": "aa"}, {"sha256": "bb"}, {"sha256": "aa"}), default_rules())
    assert res.clean.column("id").to_pylist() == ["r0", "r1"]
    assert res.rejected.column("reasons").to_pylist() == [["exact_duplicate: same sha256 as r0"]]


def test_near_duplicates_need_close_hashes_and_the_same_shape_and_length():
    h = "f0f0f0f0f0f0f0f0"
    close = "f0f0f0f0f0f0f0f3"   # 2 bits away
    far = "0f0f0f0f0f0f0f0f"     # 64 bits away
    res = apply_rules(manifest({"phash": h}, {"phash": close}, {"phash": far},
                               {"phash": close, "duration": 30.0},               # another length: not a copy
                               {"phash": close, "width": 720.0, "height": 1280.0}),  # portrait: not a copy
                      default_rules())
    assert res.clean.column("id").to_pylist() == ["r0", "r2", "r3", "r4"]
    assert res.rejected.column("reasons").to_pylist() == [["near_duplicate: within 2 bits of r0"]]


def test_a_row_joined_through_a_later_row_names_its_closest_match_and_the_kept_row():
    # r2 is 8 bits from r1 and 10 from r0; r1 is 2 bits from r0: one cluster kept as r0.
    res = apply_rules(manifest({"phash": "f0f0f0f0f0f0f0f0"}, {"phash": "f0f0f0f0f0f0f0f3"},
                               {"phash": "f0f0f0f0f0f00ff3"}), default_rules())
    assert res.clean.column("id").to_pylist() == ["r0"]
    assert res.rejected.column("reasons").to_pylist() == [
        ["near_duplicate: within 2 bits of r0"], ["near_duplicate: within 8 bits of r1 (its cluster keeps r0)"]]


@pytest.mark.parametrize("bits,max_distance", [(192, 5), (192, 8), (192, 12), (192, 16), (192, 24), (64, 5), (64, 8),
                                               (64, 12), (64, 16), (64, 24)])
def test_near_duplicates_match_an_all_pairs_search(bits, max_distance):
    import random

    rng = random.Random(bits + max_distance)
    values = []
    for _ in range(30):  # variants a few bits either side of the threshold
        base = rng.getrandbits(bits)
        values.append(base)
        for k in (max_distance - 2, max_distance, max_distance + 2):
            v = base
            for bit in rng.sample(range(bits), k):
                v ^= 1 << bit
            values.append(v)
    shared = rng.getrandbits(bits // 2)  # 40 hashes alike in their low half: buckets too big for pair loops
    values += [(rng.getrandbits(bits - bits // 2) << (bits // 2)) | shared for _ in range(40)]
    rng.shuffle(values)
    hashes = [f"{v:0{bits // 4}x}" for v in values]
    expected = _all_pairs(values, max_distance)
    assert any(expected)
    assert near_duplicates(hashes, max_distance) == expected


def _all_pairs(values: list[int], max_distance: int, compatible=None) -> list:
    """near_duplicates by comparing every pair: clusters led by their earliest row."""
    parent = list(range(len(values)))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    closest = {}
    for j in range(len(values)):
        for i in range(j):
            d = (values[i] ^ values[j]).bit_count()
            if d <= max_distance and (compatible is None or compatible(i, j)):
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
                closest[i] = min((d, j), closest.get(i, (d, j)))
                closest[j] = min((d, i), closest.get(j, (d, i)))
    return [(find(i), closest[i][1], closest[i][0]) if find(i) != i else None for i in range(len(values))]


def test_copies_of_one_hash_give_what_every_pair_gives():
    import random

    import numpy as np

    # Groups of exact copies (a station ident, a re-used shot) whose lengths differ a little or a lot: copies
    # of one length stand for each other; another length is vetoed, a length within tolerance is not; a
    # negative aspect is vetoed even against itself. Plus near variants of the copied hash.
    rng = random.Random(7)
    base = rng.getrandbits(192)
    values, lengths, aspects = [], [], []
    for _ in range(300):
        kind = rng.random()
        values.append(base if kind < 0.6 else base ^ (1 << rng.randrange(192)) if kind < 0.8 else rng.getrandbits(192))
        lengths.append(rng.choice([10.0, 10.0, 10.2, 30.0]))
        aspects.append(rng.choice([1.78, 1.78, -1.0]))

    def compatible(i, j):
        return abs(lengths[i] - lengths[j]) <= 0.5 and not (aspects[i] < 0 and abs(aspects[i] - aspects[j]) > 0.1 * aspects[j])

    same = np.column_stack([np.array(lengths).view(np.uint64), np.array(aspects).view(np.uint64)])
    hashes = [f"{v:048x}" for v in values]
    expected = _all_pairs(values, 8, compatible)
    assert sum(e is not None for e in expected) > 150
    assert near_duplicates(hashes, 8, compatible, same) == expected
    assert near_duplicates(hashes, 8, compatible) == expected  # without `same`: no row stands for another


def test_twenty_thousand_copies_are_one_cluster_without_their_pairs():
    hashes = ["%048x" % (0xABCDEF << 100)] * 20_000  # all pairs would be 200 million
    res = near_duplicates(hashes, 8)
    assert res[0] is None and all(r == (0, 0, 0) for r in res[1:])


@pytest.mark.parametrize("bits", [64, 192])
@pytest.mark.parametrize("max_distance", [0, 5, 8, 12, 16, 24])
def test_every_search_plan_finds_exactly_the_close_pairs(bits, max_distance):
    import numpy as np

    from vidtune.quality.rules import _close_pairs

    rng = np.random.default_rng(bits * 100 + max_distance)
    words = rng.integers(0, 2**63, (300, bits // 64), dtype=np.int64).astype(np.uint64) << np.uint64(1)
    copies = rng.integers(0, 150, 150)  # half the rows are copies of another, 0 to 2d + 2 bits flipped
    words[150:] = words[copies]
    for row in range(150, 300):
        for bit in rng.choice(bits, rng.integers(0, 2 * max_distance + 3), replace=False):
            words[row, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    words[-40:, 0] = words[-1, 0]  # 40 rows alike in their low word: one crowded bucket per band there
    dist = sum(np.bitwise_count(words[:, None, w] ^ words[None, :, w]).astype(int) for w in range(bits // 64))
    a, b = np.nonzero(np.triu(dist <= max_distance, 1))
    assert a.size > 20
    plans = ["all", "r0", "r1"] if max_distance >= 1 and -(-bits // -(-(max_distance + 1) // 2)) <= 22 else ["all", "r0"]
    for plan in plans + [None]:
        got = _close_pairs(words, bits, max_distance, plan=plan)
        assert [x.tolist() for x in got] == [a.tolist(), b.tolist(), dist[a, b].tolist()], plan


def test_hashes_of_different_lengths_are_never_compared():
    image = "00000000000000ff"
    video = "0" * 32 + image  # same value, three frames long
    assert near_duplicates([image, video, image], 4) == [None, None, (0, 0, 0)]


def test_unprobed_manifest_skips_probe_rules_and_rows_add_up():
    res = apply_rules(manifest({}, {"caption": "짧다"}, probed=False), default_rules())
    assert res.report["rows_in"] == 2 == res.report["clean"] + res.report["rejected"]
    skipped = {r["name"]: r["skipped"] for r in res.report["rules"]}
    assert skipped["media_readable"] == "manifest not probed" and skipped["blur"] == "no column 'blur'"
    strict = parse_rules("rules:\n - {name: probed, type: probe_ok, require_probe: true}\n")
    assert apply_rules(manifest({}, probed=False), strict).rejected.column("reasons").to_pylist() == [
        ["probed: not probed"]]


def test_every_reason_of_a_row_is_kept():
    res = apply_rules(manifest({"caption": "짧다", "duration": 1.0, "blur": 0.0}), default_rules())
    names = [r.split(":")[0] for r in res.rejected.column("reasons").to_pylist()[0]]
    assert names == ["caption_length", "video_duration", "hangul_ratio", "blur"] or \
        set(names) >= {"caption_length", "video_duration", "blur"}


def test_rules_yaml_is_validated_and_overrides_apply(tmp_path):
    for text, msg in [("rules: 3", "expected `rules:`"),
                      ("rules:\n - {name: a, type: magic}", "unknown type"),
                      ("rules:\n - {name: a, type: range, field: x, min: 1}\n - {name: a, type: ingest}",
                       "used twice"),
                      ("rules:\n - {name: a, type: range, field: x}", "needs min and/or max"),
                      ("rules:\n - {name: a, type: range, feild: x, min: 1}", "unknown keys"),
                      ("rules: [", "not valid YAML"),
                      ("rules:\n - {name: off, type: ingest}", "must be text")]:
        with pytest.raises(InvalidArgument, match=msg):
            parse_rules(text)
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n - {name: long_enough, type: range, field: caption_chars, min: 200}\n"
                 " - {name: sharp, type: range, field: blur, min: 1000, enabled: false}\n")
    rs = load_rules(str(f))
    assert [r.name for r in rs.rules] == ["ingest_errors", "long_enough", "sharp"]  # ingest is always applied
    res = apply_rules(manifest({}, {"caption": GOOD + GOOD}), rs)
    assert res.clean.column("id").to_pylist() == ["r1"]
    loosened = load_rules(str(f), overrides={"long_enough": {"min": 10}})
    assert apply_rules(manifest({}, {}), loosened).clean.num_rows == 2
    with pytest.raises(InvalidArgument, match="unknown rule"):
        load_rules(None, overrides={"nope": {"min": 1}})


def test_caption_features_known_values():
    t = pa.table({"caption": ["산 바다 산 바다", "ㅋㅋㅋㅋㅋ 하하", "", None, "a b c a b c a b c", "가#나@"]})
    f = caption_features(t)
    assert f["caption_chars"].tolist() == [9, 8, 0, 0, 17, 4]
    assert f["caption_words"].tolist() == [4, 2, 0, 0, 9, 1]
    assert f["caption_unique_words"].tolist() == [2, 2, 0, 0, 3, 1]
    assert f["max_char_run"].tolist() == [1, 5, 0, 0, 1, 1]
    assert f["ngram_repeat_ratio"][4] == pytest.approx(1 - 3 / 7)   # 7 word 3-grams, 3 distinct
    assert f["hangul_ratio"][0] == 1.0 and f["hangul_ratio"][4] == 0.0
    assert f["special_ratio"][5] == pytest.approx(0.5)


@pytest.mark.parametrize("setting,words", [("max: lots", "max must be a number, not 'lots'"),
                                           ("min: .nan", "min must be a number, not nan"),
                                           ("min: true", "min must be a number, not True"),
                                           ("max_distance: 2.5", "max_distance must be a whole number")])
def test_a_rule_setting_that_is_not_a_number_is_refused_when_the_rules_load(setting, words):
    with pytest.raises(InvalidArgument, match=f"rule 'r': {words}"):
        parse_rules(f"rules: [{{name: r, type: range, field: duration, {setting}}}]")


def test_an_exponent_yaml_reads_as_text_is_a_number():
    # YAML 1.1 reads 1e308 (no dot) as a string; it once failed the whole pass with a NumPy type error.
    assert parse_rules("rules: [{name: r, type: range, field: duration, max: 1e308}]").rules[-1].max == 1e308


def test_a_tampered_row_is_rejected_with_its_reason_and_the_rest_pass():
    # A hash that is not hexadecimal (one non-ASCII letter, or none hex at all) and a width past 2**53 were an
    # exception that failed every row of the pass.
    table = manifest({"phash": "f0f0f0f0f0f0f0f0"}, {"phash": "f0f0f0f0f0f0f0fé"}, {"phash": "zz" * 400},
                     {"phash": "f0f0f0f0f0f0f0f1"}, {"phash": "0f0f0f0f0f0f0f0f"})
    table = table.set_column(table.schema.get_field_index("width"), "width",
                             pa.array([1280, 1280, 1280, 1280, 2**60], pa.int64()))
    res = apply_rules(table, default_rules())
    assert res.clean.column("id").to_pylist() == ["r0"]
    assert res.rejected.column("reasons").to_pylist() == [
        ["near_duplicate: phash 'f0f0f0f0f0f0f0fé' is not a hash of hexadecimal digits (at most 1024)"],
        [f"near_duplicate: phash '{'z' * 40}...' is not a hash of hexadecimal digits (at most 1024)"],
        ["near_duplicate: within 1 bits of r0"],
        ["aspect_ratio: aspect_ratio 1.6e+15 > max 2.4"]]
    assert {r["name"]: r["rejected"] for r in res.report["rules"]}["near_duplicate"] == 3


def test_copies_give_what_every_pair_gives_under_a_veto_that_depends_on_row_order():
    import random

    import numpy as np

    # The default rule's tolerances scale with the later row's length, so (a, b) and (b, a) can disagree:
    # (r0, r1) is vetoed (1.04 s is over 5 % of r1's 20.0 s) but (r1, r2) is not (within 5 % of 21.04 s): every
    # pair gives one cluster kept as r0, whether r2 is an exact copy of r0 or a hair longer.
    for last in (21.04, 21.040000000000003):
        res = apply_rules(manifest({"phash": "f0f0f0f0f0f0f0f0", "duration": 21.04},
                                   {"phash": "f0f0f0f0f0f0f0f3", "duration": 20.0},
                                   {"phash": "f0f0f0f0f0f0f0f0", "duration": last}), default_rules())
        assert res.clean.column("id").to_pylist() == ["r0"], last
    for seed in range(40):
        rng = random.Random(seed)
        base = rng.getrandbits(64)
        values = [base ^ (rng.getrandbits(3) << rng.randrange(60)) if rng.random() < 0.5 else base for _ in range(60)]
        lengths = [rng.choice([20.0, 21.04, 10.0, 10.4]) for _ in values]

        def later_scaled(i, j):
            return abs(lengths[i] - lengths[j]) <= max(0.5, 0.05 * lengths[j])

        same = np.array(lengths).view(np.uint64)[:, None]
        hashes = [f"{v:016x}" for v in values]
        assert near_duplicates(hashes, 8, later_scaled, same) == _all_pairs(values, 8, later_scaled), seed


def test_a_hash_longer_than_any_probe_writes_is_rejected_not_miscounted():
    # 16,384 digits are 65,536 bits: a distance counter of 16 bits would wrap to "within 0 bits".
    zero = "0" * 16384
    rows = [{"phash": zero}] + [{"phash": zero[:i] + "1" + zero[i + 1:]} for i in (0, 5000, 10000)] + [{"phash": "f" * 16384}]
    res = apply_rules(manifest(*rows), default_rules())
    assert res.clean.column("id").to_pylist() == []
    assert all(r == [f"near_duplicate: phash '{h['phash'][:40]}...' is not a hash of hexadecimal digits (at most 1024)"]
               for r, h in zip(res.rejected.column("reasons").to_pylist(), rows))
    assert near_duplicates(["0" * 1024, "f" * 1024, "0" * 1023 + "1"], 8) == [None, None, (0, 0, 1)]
