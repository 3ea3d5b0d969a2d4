"""Generate (tiny base + tiny LoRA) -> score -> compare, end to end through the object store, with resume."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from eval_clips import noise_clip, textured_clip, write_tiny_lora
from PIL import Image

from vidtune.evaluate.compare import compare_scores
from vidtune.evaluate.generate import GenerationSettings, generate_samples, parse_checkpoints
from vidtune.evaluate.scoring import PER_VIDEO_METRICS, ScoreSettings, score_videos
from vidtune.evaluate.videoio import write_mp4
from vidtune.platform.errors import InvalidArgument

PROMPTS = [
    {"id": "cat", "prompt": "고양이가 소파 위에서 잠을 자고 있다", "category": "animals"},
    {"id": "city", "prompt": "서울 도심의 야경을 비추는 드론 영상", "category": "city", "image": "first.png"},
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_clip_dir, tiny_i3d_path, object_store):
    """One full run shared by the tests below (generation is the slow part)."""
    from vidtune.platform.storage import S3Config, Storage

    storage = Storage(S3Config(endpoint=object_store.endpoint, access_key=object_store.access_key,
                               secret_key=object_store.secret_key))
    b = "s3://t-eval-pipeline"
    storage.ensure_bucket(b)
    tmp = tmp_path_factory.mktemp("pipeline")
    storage.write_text(f"{b}/prompts.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS))
    buf = io.BytesIO()
    Image.fromarray(textured_clip(t=1, h=64, w=64)[0]).save(buf, format="PNG")
    storage.write_bytes(f"{b}/first.png", buf.getvalue())
    storage.upload(write_tiny_lora(tmp / "epoch-1.safetensors"), f"{b}/run/checkpoints/epoch-1.safetensors")
    storage.write_bytes(f"{b}/run/checkpoints/epoch-1.comfyui.safetensors", b"ignored")
    for cat in ("animals", "city"):
        for i in range(3):
            local = write_mp4(textured_clip(t=17, h=64, w=64, seed=10 + i + (5 if cat == "city" else 0)),
                              tmp / f"{cat}-{i}.mp4")
            storage.upload(local, f"{b}/reference/{cat}/{i}.mp4")
    for f in tiny_clip_dir.iterdir():
        storage.upload(f, f"{b}/models/clip/{f.name}")
    storage.upload(tiny_i3d_path, f"{b}/models/i3d_torchscript.pt")

    settings = GenerationSettings(seeds=[0, 1], height=64, width=64, num_frames=17, steps=2)
    checkpoints = ["base", f"{b}/run/checkpoints/"]
    gen = generate_samples(f"{b}/prompts.jsonl", checkpoints, f"{b}/videos", settings, storage)
    gen_again = generate_samples(f"{b}/prompts.jsonl", checkpoints, f"{b}/videos", settings, storage)

    storage.write_bytes(f"{b}/videos/broken/clip.mp4", b"\x00\x00\x00\x18ftypmp42 not really a video")
    score_settings = ScoreSettings(clip_weights=f"{b}/models/clip", i3d=f"{b}/models/i3d_torchscript.pt",
                                   reference=f"{b}/reference", fvd_size=32)
    summary = score_videos(f"{b}/videos", f"{b}/scores", settings=score_settings, storage=storage)
    messages = []
    score_videos(f"{b}/videos", f"{b}/scores", settings=score_settings, storage=storage,
                 progress=lambda d, t, m: messages.append(m))
    report = compare_scores(f"{b}/scores", f"{b}/report", storage=storage)
    return {"storage": storage, "bucket": b, "gen": gen, "gen_again": gen_again, "summary": summary,
            "rescore_messages": messages, "report": report}


def test_generation_writes_every_video_with_settings_and_resumes(evaluated):
    gen, again, storage = evaluated["gen"], evaluated["gen_again"], evaluated["storage"]
    assert gen["total"] == 8 and gen["generated"] == 8 and not gen["failed"]
    assert again["generated"] == 0 and again["skipped"] == 8
    labels = {c["label"] for c in gen["checkpoints"]}
    assert labels == {"base", "epoch-1"}  # the ComfyUI copy is not a checkpoint of its own
    uri = next(v for v in gen["videos"] if "/epoch-1/city/" in v)
    meta = json.loads(storage.read_text(uri.removesuffix(".mp4") + ".json"))
    assert meta["lora"].endswith("epoch-1.safetensors") and meta["image"].endswith("first.png")
    assert (meta["seed"], meta["height"], meta["num_frames"], meta["steps"]) in {(0, 64, 17, 2), (1, 64, 17, 2)}


def test_score_writes_one_record_per_video_with_every_metric(evaluated):
    storage, b, summary = evaluated["storage"], evaluated["bucket"], evaluated["summary"]
    assert summary["counts"] == {"videos": 9, "scored": 8, "rejected": 1}
    assert "broken/clip.mp4" in summary["rejected"][0]["video"]
    assert "cannot decode" in summary["rejected"][0]["error"]
    records = [json.loads(line) for line in storage.read_text(f"{b}/scores/scores.jsonl").splitlines()]
    ok = [r for r in records if r.get("metrics")]
    assert len(ok) == 8
    for r in ok:
        assert set(PER_VIDEO_METRICS) <= set(r["metrics"]), r["metrics"].keys()
        assert all(isinstance(r["metrics"][m], float) for m in PER_VIDEO_METRICS)
        assert r["metrics"]["clip_score"] == pytest.approx(100 * max(r["metrics"]["clip_cosine"], 0))
        assert r["grade"] in ("S", "A", "B", "C", "D", "incomplete") and r["category"] in ("animals", "city")
        assert r["notes"]["prompt_kept_share"] == 1.0 and r["notes"]["prompt_chunks"] == 1
        assert storage.exists(r["contact_sheet"]) and storage.exists(r["features"])
        assert storage.exists(f"{b}/scores/records/{r['key']}.json")
    # Resumed: every good record is reused, only the broken one is tried again.
    assert sum(m.startswith("reused") for m in evaluated["rescore_messages"]) == 9


def test_fvd_is_per_set_with_interval_and_small_set_warning(evaluated):
    rows = {(r["checkpoint"], r["category"]): r for r in evaluated["summary"]["fvd"]}
    assert set(rows) == {(c, k) for c in ("base", "epoch-1") for k in ("all", "animals", "city")}
    for row in rows.values():
        assert row["value"] >= 0 and row["n_discarded_short"] == 0 and "StyleGAN-V" in row["protocol"]
        assert row["archive_overall"] == pytest.approx(100 - row["value"] / 10)
        if row["ci_low"] is not None:
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["n_generated"] in (2, 4) and row["n_reference"] in (3, 6)
        assert any("small set" in w for w in row["warnings"])
    assert any("sets are small" in w for w in evaluated["summary"]["warnings"])
    ck = evaluated["summary"]["checkpoints"]["epoch-1"]
    assert ck["grade"] in ("S", "A", "B", "C", "D", "incomplete") and ck["metrics"]["fvd"] == pytest.approx(rows[("epoch-1", "all")]["value"])


def test_compare_report_has_verdicts_charts_and_contact_sheets(evaluated):
    storage, b, report = evaluated["storage"], evaluated["bucket"], evaluated["report"]
    html = storage.read_text(report["report"])
    md = storage.read_text(report["markdown"])
    for text in ("base -&gt; epoch-1", "Per category: quality", "Per prompt: clip_cosine", "Verdict rule",
                 "Contact sheets", "Metric definitions", "sign-flip permutation test", "Holm",
                 "archive overall (100 - FVD/10)", "StyleGAN-V", "per-video FVD is not reported"):
        assert text in html, text
    # The verdict comes first, after the banner that says the models are random test models.
    body = html.split("<body>", 1)[1]
    assert body.index("TEST MODELS") < body.index("Conclusion:") < body.index("Checkpoints")
    assert "random test generators (tiny-ti2v)" in html and "CLIP is a tiny random test model" in html
    assert "I3D is a tiny random test model" in html
    assert "base -> epoch-1" in md
    data = json.loads(storage.read_text(report["json"]))
    overall = [d for d in data["deltas"] if d["scope"] == "overall"]
    assert {d["metric"] for d in overall} >= {"clip_cosine", "quality", "fvd", "flicker"}
    for d in overall:
        assert d["verdict"] in ("improved", "worse", "unchanged", "too few prompts")
        if d["value_a"] is not None and d["value_b"] is not None:
            assert d["delta"] == pytest.approx(d["value_b"] - d["value_a"], abs=1e-9)
    figures = list(storage.list(f"{b}/report/figures/"))
    assert sum("sheets-" in f for f in figures) == 4  # one per prompt and seed, checkpoints side by side
    assert any("deltas-base-epoch-1" in f for f in figures)
    assert any("metrics-per-checkpoint" in f for f in figures)
    assert any("quality-per-category" in f for f in figures)


def test_checkpoint_parsing_and_generation_settings_errors(storage, bucket):
    assert [c.label for c in parse_checkpoints(["base", "e3=s3://x-bucket/a/b.safetensors"], storage)] == ["base", "e3"]
    with pytest.raises(InvalidArgument, match="epoch-N"):
        parse_checkpoints([f"{bucket}/empty/"], storage)
    with pytest.raises(InvalidArgument, match="unique"):
        parse_checkpoints(["base", "base"], storage)
    with pytest.raises(InvalidArgument, match="4n\\+1"):
        GenerationSettings(num_frames=16).validate()
    with pytest.raises(InvalidArgument, match="multiples of 16"):
        GenerationSettings(height=50).validate()


def test_score_cli_on_a_local_directory_with_prompt_file(tmp_path, tiny_clip_dir, capsys):
    from vidtune.cli import main

    vids = tmp_path / "videos"
    write_mp4(textured_clip(t=9, h=32, w=48), vids / "cat.mp4")
    write_mp4(noise_clip(t=9, h=32, w=48), vids / "noise.mp4")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt,category\ncat,고양이가 잔다,animals\n", encoding="utf-8")
    rc = main(["eval", "score", "--videos", str(vids), "--prompts", str(prompts), "--out", str(tmp_path / "out"),
               "--clip-weights", str(tiny_clip_dir), "--quiet"])
    assert rc == 0
    cat = json.loads((tmp_path / "out" / "records" / "cat.json").read_text())
    noise = json.loads((tmp_path / "out" / "records" / "noise.json").read_text())
    assert cat["prompt"] == "고양이가 잔다" and cat["category"] == "animals"
    assert isinstance(cat["metrics"]["clip_cosine"], float)
    assert noise["metrics"]["clip_cosine"] is None and "no prompt" in noise["notes"]["clip"]
    assert noise["metrics"]["temporal_consistency"] < cat["metrics"]["temporal_consistency"]
    # No prompt, no CLIP text score: no overall score and no letter, rather than a score on what is left.
    assert noise["metrics"]["quality"] is None and noise["grade"] == "incomplete"
    assert "clip not measured" in noise["notes"]["quality"] and np.isfinite(cat["metrics"]["quality"])
    assert "FVD not measured" in capsys.readouterr().err


def test_two_expert_model_generates_and_its_high_noise_lora_changes_the_video(tmp_path):
    """T2V-A14B's shape: two DiTs switched at the spec's boundary; a LoRA for the high-noise expert."""
    from vidtune.evaluate.videoio import read_frames

    (tmp_path / "prompts.jsonl").write_text(json.dumps(PROMPTS[0], ensure_ascii=False) + "\n")
    (tmp_path / "ck").mkdir()
    write_tiny_lora(tmp_path / "ck" / "epoch-0.safetensors", model="tiny-t2v-a14b", scale=1.0)
    gen = generate_samples(str(tmp_path / "prompts.jsonl"), ["base", str(tmp_path / "ck" / "epoch-0.safetensors")],
                           str(tmp_path / "videos"), GenerationSettings(model="tiny-t2v-a14b", seeds=[0], num_frames=9,
                                                                        steps=4))
    assert gen["generated"] == 2 and not gen["failed"]
    base, lora = sorted(gen["videos"], key=lambda v: "/base/" not in v)
    a, _ = read_frames(base)
    b, _ = read_frames(lora)
    assert a.shape == b.shape == (9, 64, 64, 3)
    assert np.abs(a.astype(float) - b.astype(float)).mean() > 0.5
