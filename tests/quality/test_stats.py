"""Statistics: exact numbers on a small known manifest, content words, the written report."""
from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from vidtune.quality.stats import compute_stats, content_words, gini, write_stats


def known_manifest() -> pa.Table:
    return pa.table({
        "id": ["a", "b", "c", "d", "e"],
        "caption": ["산 바다 산 바다", "산 강 들 숲", "가" * 30, "나" * 50, "다 라"],
        "category": ["nature", "nature", "nature", "urban", "culture"],
        "media_type": ["video", "video", "video", "video", "image"],
        "width": [1920.0, 1920.0, 1280.0, 1280.0, 640.0],
        "height": [1080.0, 1080.0, 720.0, 720.0, 480.0],
        "duration": [5.0, 10.0, 25.0, 70.0, None],
        "ingest_error": pa.array([None] * 5, pa.string()),
        "split": ["train", "train", "train", "val", "train"],
    })


def test_gini_and_imbalance_exact():
    assert gini([10, 20, 30, 40]) == pytest.approx(0.25)
    assert gini([5, 5, 5]) == 0.0 and gini([]) == 0.0
    s = compute_stats(known_manifest(), content_sample=0)["overall"]
    assert s["category"] == {"nature": 3, "culture": 1, "urban": 1}
    assert s["class_imbalance"]["max_min_ratio"] == 3.0
    assert s["class_imbalance"]["gini"] == pytest.approx(gini([3, 1, 1]))
    assert gini([3, 1, 1]) == pytest.approx(4 / 15)  # sum|xi-xj| = 8, 2 n^2 mean = 30


def test_counts_buckets_ttr_and_pearson_exact():
    s = compute_stats(known_manifest(), content_sample=0)
    o = s["overall"]
    assert o["rows"] == 5 and o["media_type"] == {"video": 4, "image": 1}
    assert o["resolution"] == {"1280x720": 2, "1920x1080": 2, "640x480": 1}
    assert o["duration_buckets"] == {"0-10s": 1, "10-20s": 1, "20-30s": 1, "30-60s": 0, "60s+": 1, "unknown": 0}
    assert o["caption_chars"]["max"] == 50 and o["caption_words"]["mean"] == pytest.approx((4 + 4 + 1 + 1 + 2) / 5)
    ttr = o["type_token_ratio"]
    # per caption: 0.5, 1, 1, 1, 1; corpus: 12 tokens, 9 types
    assert ttr["caption_min"] == 0.5 and ttr["caption_max"] == 1.0 and ttr["caption_mean"] == pytest.approx(0.9)
    assert (ttr["tokens"], ttr["types"]) == (12, 9) and ttr["corpus"] == pytest.approx(9 / 12)
    # Pearson over the videos: durations 5, 10, 25, 70 against caption lengths 9, 7, 30, 50
    x, y = [5, 10, 25, 70], [9, 7, 30, 50]
    mx, my = sum(x) / 4, sum(y) / 4
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(
        sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert o["pearson_duration_caption_chars"] == pytest.approx(r)
    assert set(s["splits"]) == {"train", "val"}
    assert s["splits"]["val"]["rows"] == 1 and s["splits"]["val"]["type_token_ratio"]["tokens"] == 1
    assert s["splits"]["train"]["type_token_ratio"]["types"] == 8


def test_content_words_drop_particles_endings_and_auxiliaries():
    counts = content_words(["산에 나무가 많이 있다", "사람이 있는 거리의 풍경", "아이들이 공원에서 즐겁게 뛰어놀고 있습니다"])
    words = set(counts)
    assert {"산", "나무", "사람", "거리", "풍경", "공원", "뛰어놀다", "즐겁다"} <= words
    assert not words & {"있다", "있", "있는", "의", "에", "가", "이", "는", "에서", "습니다", "고"}


def test_report_has_markdown_html_json_and_plots(tmp_path):
    uris = write_stats(known_manifest(), str(tmp_path / "s"), content_sample=100)
    md = (tmp_path / "s/stats.md").read_text()
    assert "Gini" in md and "type-token ratio" in md and "## Per split" in md and "figures/" in md
    html = (tmp_path / "s/stats.html").read_text()
    assert "<img" in html and "<table>" in html
    data = json.loads((tmp_path / "s/stats.json").read_text())
    assert data["content_words"]["sampled_captions"] == 5 and data["content_words"]["analyser"] == "kiwipiepy"
    assert len(list((tmp_path / "s/figures").glob("*.png"))) >= 3 and uris["json"].endswith("stats.json")


def test_content_sample_error_is_zero_for_a_full_sample_and_bounded_otherwise():
    from vidtune.quality.stats import content_sample_error

    captions = ["산에 나무가 많이 있다", "사람이 있는 거리의 풍경", "바다 위로 배가 지나간다", "강가의 나무와 새"] * 5
    whole = content_sample_error(captions, sample=20, reference=20, top=5, seeds=2)
    assert whole["top_overlap_min"] == 1.0 and whole["median_relative_error_mean"] == 0.0
    part = content_sample_error(captions, sample=4, reference=20, top=5, seeds=5)
    assert part["sample"] == 4 and part["reference"] == 20 and 0.0 <= part["top_overlap_mean"] <= 1.0
    assert content_sample_error(captions, sample=4, reference=20, top=5, seeds=5) == part  # same seeds, same answer
