"""Dataset build: deterministic stratified split, subsets, class weights, caption budget, DiffSynth export."""
from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from vidtune.platform.errors import InvalidArgument
from vidtune.quality.dataset import (allocate, class_weights, estimate_tokens, export, split, subset,
                                     truncate_caption)

from quality_testlib import caption


def population(n_per: dict[tuple[str, str], int]) -> pa.Table:
    rows = []
    for (cat, mt), n in n_per.items():
        rows += [{"id": f"{cat}-{mt}-{i:04d}", "category": cat, "media_type": mt, "caption": "x",
                  "media": f"{cat}/{i}.mp4"} for i in range(n)]
    return pa.Table.from_pylist(rows)


POP = {("nature", "video"): 400, ("nature", "image"): 100, ("urban", "video"): 250, ("culture", "video"): 50,
       ("history", "image"): 7}


def assignment(t: pa.Table) -> dict[str, str]:
    return dict(zip(t.column("id").to_pylist(), t.column("split").to_pylist()))


def test_split_is_deterministic_order_independent_and_stratified():
    t = population(POP)
    a = assignment(split(t, 0.1, seed=42))
    shuffled = t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows)))
    assert assignment(split(shuffled, 0.1, seed=42)) == a          # same rows, any order: same split
    assert assignment(split(t, 0.1, seed=43)) != a                 # the seed matters
    val = Counter(tuple(i.split("-")[:2]) for i, s in a.items() if s == "val")
    assert val == {("nature", "video"): 40, ("nature", "image"): 10, ("urban", "video"): 25,
                   ("culture", "video"): 5, ("history", "image"): 1}
    with pytest.raises(InvalidArgument):
        split(t, 1.0)


def test_subset_hits_target_proportions_and_balanced():
    t = population(POP)
    sub, info = subset(t, 100, {"nature": 0.3, "urban": 0.25}, seed=1)
    counts = Counter(sub.column("category").to_pylist())
    # the unnamed classes share the remaining 45 by size (50:7), largest remainder for the last sample
    assert sub.num_rows == 100 and counts == {"nature": 30, "urban": 25, "culture": 39, "history": 6}
    again, _ = subset(t, 100, {"nature": 0.3, "urban": 0.25}, seed=1)
    assert again.column("id").to_pylist() == sub.column("id").to_pylist()
    assert len(set(sub.column("id").to_pylist())) == 100
    # infeasible targets (the other classes hold only 57 of the 90 asked): the shortfall is filled from
    # the rest, never by repeating rows
    big, info = subset(t, 200, {"nature": 0.3, "urban": 0.25}, seed=1)
    assert big.num_rows == 200 == len(set(big.column("id").to_pylist())) and info["targets"]["history"] == 7

    bal, info = subset(t, 100, "balanced", seed=1)
    c = Counter(bal.column("category").to_pylist())
    assert c["history"] == 7 and c["nature"] == c["urban"] == c["culture"] == 31  # 93 shared by three classes
    with pytest.raises(InvalidArgument, match="only 807"):
        subset(t, 10_000)
    with pytest.raises(InvalidArgument, match="not in the manifest"):
        subset(t, 10, {"space": 0.5})
    with pytest.raises(InvalidArgument, match="sum to at most 1"):
        subset(t, 10, {"nature": 0.7, "urban": 0.6})


def test_allocate_never_exceeds_capacity_and_sums_to_n():
    got = allocate(10, {"a": 2, "b": 100, "c": 100}, {"a": 1, "b": 1, "c": 1})
    assert got == {"a": 2, "b": 4, "c": 4} and sum(got.values()) == 10


def test_class_weights_equalise_expected_draws():
    t = population(POP)
    weighted, w = class_weights(t)
    col = weighted.column("sample_weight").to_numpy()
    cats = weighted.column("category").to_pylist()
    per_class = {c: col[[i for i, x in enumerate(cats) if x == c]].sum() for c in set(cats)}
    assert np.allclose(list(per_class.values()), t.num_rows / 4)       # each class drawn equally often
    assert col.mean() == pytest.approx(1.0) and w["history"] == pytest.approx(807 / (4 * 7))


def test_caption_truncation_keeps_whole_sentences_within_the_budget():
    text = "첫 번째 문장은 바다를 설명한다. 두 번째 문장은 산을 설명한다. 세 번째 문장은 하늘을 설명한다."
    assert truncate_caption(text, 10_000) == text
    budget = estimate_tokens("첫 번째 문장은 바다를 설명한다. 두 번째 문장은 산을 설명한다.")
    assert truncate_caption(text, budget) == "첫 번째 문장은 바다를 설명한다. 두 번째 문장은 산을 설명한다."
    short = truncate_caption(text, 4)  # no whole sentence fits: whole words
    assert short and text.startswith(short) and estimate_tokens(short) <= 4 and not short.endswith("다.")
    assert truncate_caption(text, 3, count=lambda s: len(s.split())) == "첫 번째 문장은"


def test_export_layout_loads_in_diffsynth_unified_dataset(media_dir, tmp_path):
    from diffsynth.core import UnifiedDataset

    long_caption = " ".join([caption(i) for i in range(8)])
    t = pa.Table.from_pylist([
        {"id": "a", "media": "clips/moving.mp4", "caption": caption(1)},
        {"id": "b", "media": "clips/still.png", "caption": long_caption},
    ])
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    for name in ("moving.mp4", "still.png"):
        (root / "clips" / name).write_bytes((media_dir / name).read_bytes())
    out = tmp_path / "export"
    res = export(t, str(root), str(out), max_tokens=120)
    assert (res.rows, res.copied, res.truncated) == (2, 2, 1)
    rows = list(csv.DictReader(open(out / "metadata.csv", encoding="utf-8")))
    assert [r["video"] for r in rows] == ["clips/moving.mp4", "clips/still.png"]
    assert rows[0]["prompt"] == caption(1) and estimate_tokens(rows[1]["prompt"]) <= 120
    assert rows[1]["prompt"].endswith(".") and long_caption.startswith(rows[1]["prompt"])
    again = export(t, str(root), str(out), max_tokens=120)
    assert (again.copied, again.skipped) == (0, 2)  # a resumed export copies nothing twice

    ds = UnifiedDataset(base_path=str(out), metadata_path=str(out / "metadata.csv"), data_file_keys=("video",),
                        main_data_operator=UnifiedDataset.default_video_operator(
                            base_path=str(out), height=64, width=96, num_frames=5))
    item = ds[0]
    assert item["prompt"] == caption(1) and len(item["video"]) == 5 and item["video"][0].size == (96, 64)
    assert len(ds[1]["video"]) == 1  # a still image loads as a one-frame video


def test_export_to_an_object_store_prefix(storage, bucket, media_dir):
    root = f"{bucket}/archive"
    storage.upload(media_dir / "moving.mp4", f"{root}/v/moving.mp4")
    t = pa.Table.from_pylist([{"id": "a", "media": "v/moving.mp4", "caption": caption(1)}])
    res = export(t, root, f"{bucket}/export", storage)
    assert res.copied == 1 and storage.exists(f"{bucket}/export/v/moving.mp4")
    assert storage.read_text(f"{bucket}/export/metadata.csv").splitlines()[1].startswith("v/moving.mp4,")


def test_small_strata_still_give_the_overall_ratio():
    t = population({("a", "video"): 3, ("b", "video"): 3, ("c", "image"): 2, ("d", "video"): 2})
    a = split(t, 0.2, seed=5)
    splits = a.column("split").to_pylist()
    assert splits.count("val") == 2  # round(10 * 0.2), though every stratum alone rounds to 0
    assert split(t, 0.2, seed=5).column("split").to_pylist() == splits
