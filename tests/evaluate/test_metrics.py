"""Each metric against an independent reference: closed forms, direct computations, OpenCV, known orderings."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from vidtune.evaluate import fvd as fvdlib
from vidtune.evaluate.clipscore import load_clip, temporal_consistency, text_video_cosine
from vidtune.evaluate.framestats import colour_entropies, laplacian_variance
from vidtune.evaluate.grades import acceptance, grade, load_config, quality_score
from vidtune.platform.errors import FailedPrecondition, InvalidArgument

from eval_clips import noise_clip, textured_clip


# ---------------------------------------------------------------- Frechet distance
def _closed_form_diag(mu1, s1, mu2, s2) -> float:
    return float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = 12
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
        got = fvdlib.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
        assert got == pytest.approx(_closed_form_diag(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_frechet_matches_closed_form_for_rotated_commuting_covariances():
    # S1 = R D1 R^T and S2 = R D2 R^T commute, so the distance equals the diagonal formula on D1, D2.
    rng = np.random.default_rng(1)
    d = 16
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1, s2 = rng.uniform(0.05, 4, d), rng.uniform(0.05, 4, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    got = fvdlib.frechet_distance(mu1, rot @ np.diag(s1) @ rot.T, mu2, rot @ np.diag(s2) @ rot.T)
    assert got == pytest.approx(_closed_form_diag(mu1, s1, mu2, s2), rel=1e-8)


def test_fvd_of_samples_approaches_the_population_distance():
    rng = np.random.default_rng(2)
    d, n = 4, 20000
    mu2 = np.array([1.0, 0.0, -1.0, 0.5])
    s1, s2 = np.ones(d), np.array([4.0, 1.0, 0.25, 2.0])
    a = rng.normal(size=(n, d))
    b = mu2 + rng.normal(size=(n, d)) * np.sqrt(s2)
    expected = _closed_form_diag(np.zeros(d), s1, mu2, s2)
    assert fvdlib.fvd_from_features(a, b) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("n,d", [(200, 8), (10, 32), (3, 64)])
def test_identical_sets_give_zero_and_never_negative(n, d):
    feats = np.random.default_rng(n).normal(size=(n, d)) * 50  # n < d: singular covariances
    value = fvdlib.fvd_from_features(feats, feats.copy())
    assert 0.0 <= value < 1e-6 * max(1.0, float(np.trace(np.cov(feats, rowvar=False))))


def test_fvd_is_never_negative_on_random_small_sets():
    rng = np.random.default_rng(3)
    for _ in range(50):
        a = rng.normal(size=(rng.integers(2, 6), 10))
        b = a + rng.normal(size=a.shape) * 1e-9
        assert fvdlib.fvd_from_features(a, b) >= 0.0


def test_fvd_ci_warns_for_small_sets():
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(40, 8)), rng.normal(1.0, 1.0, size=(40, 8))
    res = fvdlib.fvd_with_ci(gen, ref, n_sub=100)
    assert res.ci_low <= res.value <= res.ci_high
    assert res.value > 4.0  # mean shift of 1 in each of 8 dims
    assert any("small set" in w for w in res.warnings)
    tiny = fvdlib.fvd_with_ci(gen[:5], ref[:5], n_sub=20)
    assert any("rank-deficient" in w for w in tiny.warnings)
    none = fvdlib.fvd_with_ci(gen[:1], ref, n_sub=10)
    assert math.isnan(none.value) and any("not computed" in w for w in none.warnings)


def test_fvd_interval_contains_its_estimate_in_30_seeded_draws():
    # The bootstrap (with replacement) interval missed its own estimate in 32 of 32 such runs: duplicated
    # clips shrink the covariance. Half-sampling without replacement, centred, always holds it.
    for draw in range(30):
        rng = np.random.default_rng(100 + draw)
        n = int(rng.integers(9, 80))
        gen, ref = rng.normal(size=(n, 16)), rng.normal(0.3, 1.0, size=(n + 5, 16))
        res = fvdlib.fvd_with_ci(gen, ref, n_sub=60, seed=draw)
        assert res.ci_low <= res.value <= res.ci_high, (draw, res)
        assert res.ci_high > res.ci_low


def test_fvd_delta_sign_and_interval():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(60, 6))
    far = rng.normal(3.0, 1.0, size=(60, 6))
    near = rng.normal(0.2, 1.0, size=(60, 6))
    d, lo, hi = fvdlib.fvd_delta_ci(far, near, ref, n_sub=100)
    assert d < 0 and lo <= d <= hi < 0  # moving from far to near lowers FVD, clearly


def test_archive_overall_is_the_legacy_formula():
    assert fvdlib.archive_overall(55.8) == pytest.approx(94.42)
    assert math.isnan(fvdlib.archive_overall(float("nan")))


# ---------------------------------------------------------------- I3D loading and preprocessing
def test_i3d_torchscript_loads_from_object_store_and_gives_features(tiny_i3d_path, storage, bucket):
    uri = f"{bucket}/models/i3d_torchscript.pt"
    storage.upload(tiny_i3d_path, uri)
    model = fvdlib.load_i3d(uri, storage)
    assert fvdlib.is_test_model(model)
    clip = fvdlib.preprocess_clip(textured_clip(t=17), size=32)
    assert clip.shape == (3, 16, 32, 32)
    assert float(clip.min()) >= -1.0 and float(clip.max()) <= 1.0
    feats = fvdlib.i3d_features(model, torch.stack([clip, clip]))
    assert feats.shape == (2, 32) and np.allclose(feats[0], feats[1])
    with pytest.raises(InvalidArgument, match="16 consecutive frames, the video has 9"):
        fvdlib.preprocess_clip(textured_clip(t=9), size=32)  # protocol: short clips are discarded, not padded


def test_i3d_missing_or_broken_is_a_clear_error(tmp_path):
    with pytest.raises(FailedPrecondition, match="I3D"):
        fvdlib.load_i3d(None)
    bad = tmp_path / "i3d.pt"
    bad.write_bytes(b"not a torchscript")
    with pytest.raises(InvalidArgument, match="i3d.pt"):
        fvdlib.load_i3d(str(bad))


# ---------------------------------------------------------------- CLIP
def test_clip_cosine_equals_direct_computation_with_open_clip(tiny_clip, tiny_clip_dir):
    import open_clip
    from PIL import Image

    prompt = "서울 도심의 야경을 비추는 드론 영상"
    for frames, tol in ((textured_clip(t=6, h=32, w=32), 1e-5), (textured_clip(t=6, h=48, w=64, seed=3), 1e-5)):
        ours = text_video_cosine(tiny_clip.encode_frames(frames), tiny_clip.encode_texts([prompt])[0])
        # Independent path: open_clip's own PIL transform, tokenizer and encoders, one frame at a time.
        transform = open_clip.image_transform(tiny_clip.image_size, is_train=False, mean=tiny_clip.mean,
                                              std=tiny_clip.std)
        with torch.no_grad():
            txt = tiny_clip.model.encode_text(tiny_clip.tokenizer([prompt]))[0]
            cos = [torch.nn.functional.cosine_similarity(
                tiny_clip.model.encode_image(transform(Image.fromarray(f))[None])[0], txt, dim=0).item()
                for f in frames]
        assert ours == pytest.approx(float(np.mean(cos)), abs=tol)


@pytest.mark.parametrize("h,w", [(32, 32), (48, 64), (64, 48), (37, 91), (91, 37), (20, 25)])
def test_clip_preprocessing_is_open_clips_transform_exactly(tiny_clip, h, w):
    import open_clip
    from PIL import Image

    frames = noise_clip(t=3, h=h, w=w, seed=h * w)
    transform = open_clip.image_transform(tiny_clip.image_size, is_train=False, mean=tiny_clip.mean,
                                          std=tiny_clip.std)
    want = torch.stack([transform(Image.fromarray(f)) for f in frames])
    assert torch.equal(tiny_clip.preprocess(frames), want)


def test_onednn_image_tower_computes_what_the_plain_tower_does(tiny_clip):
    from vidtune.evaluate.onednn import PackedLinear, PackedSelfAttention, packed_copy

    tower = tiny_clip.image_tower()
    kinds = {type(m) for m in tower.modules()}
    assert PackedSelfAttention in kinds and PackedLinear in kinds and torch.nn.MultiheadAttention not in kinds
    assert torch.nn.MultiheadAttention in {type(m) for m in tiny_clip.model.visual.modules()}  # original kept
    x = tiny_clip.preprocess(noise_clip(t=5, h=48, w=64))
    with torch.inference_mode():
        assert torch.allclose(tower(x), tiny_clip.model.visual(x), atol=1e-5)
    # Nothing to put on oneDNN, or a copy that computes something else: the caller keeps the original.
    assert packed_copy(torch.nn.Sequential(torch.nn.ReLU()), torch.zeros(1, 4)) is None

    class Twice(torch.nn.Module):  # calls its attention with key != query, which the packed layer refuses
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x + 1, x + 1, need_weights=False)[0]

    assert packed_copy(Twice().eval(), torch.randn(1, 3, 8)) is None


def test_clip_reads_korean_with_the_multilingual_tokenizer(tiny_clip):
    tokens = tiny_clip.tokenizer(["고양이가 소파 위에서 잠을 자고 있다"])[0]
    unk = 3  # XLM-R's <unk>
    content = tokens[(tokens != 1)]  # drop padding
    assert len(content) > 4 and (content == unk).sum() == 0
    assert tiny_clip.token_count("고양이") > 0


def test_clip_loads_bundle_from_object_store(tiny_clip_dir, storage, bucket):
    for f in tiny_clip_dir.iterdir():
        storage.upload(f, f"{bucket}/clip/{f.name}")
    model = load_clip(weights=f"{bucket}/clip", storage=storage)
    frames = textured_clip(t=2, h=32, w=32)
    assert model.encode_frames(frames).shape == (2, 32)


def test_clip_without_weights_or_tokenizer_files_fails_clearly(tmp_path, tiny_clip_dir):
    with pytest.raises(FailedPrecondition, match="real scores need real trained weights"):
        load_clip(weights=None)
    only_weights = tmp_path / "w.safetensors"
    only_weights.write_bytes((tiny_clip_dir / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(FailedPrecondition, match="tokenizer"):
        load_clip("xlm-roberta-base-ViT-B-32", weights=str(only_weights))


def test_long_korean_caption_is_embedded_as_sentence_chunks(tiny_clip_dir):
    clip = load_clip(weights=str(tiny_clip_dir))
    short = "고양이가 소파 위에서 잠을 자고 있다."
    assert clip.caption_plan(short) == {"chunks": [short], "tokens": clip.token_count(short), "kept_share": 1.0}
    sentences = [f"{i}번째 장면에서 바닷가의 바위 위로 파도가 부서지고 갈매기가 난다." for i in range(40)]
    long = " ".join(sentences)
    plan = clip.caption_plan(long)
    assert plan["tokens"] > 4 * clip.context_length and plan["kept_share"] == 1.0
    assert 4 < len(plan["chunks"]) < 40 and " ".join(plan["chunks"]) == long  # in order, nothing lost
    assert all(clip.token_count(c) <= clip.context_length for c in plan["chunks"])
    emb = clip.encode_texts([long])[0]
    each = load_clip(weights=str(tiny_clip_dir)).encode_texts(plan["chunks"])
    expected = torch.nn.functional.normalize(each.mean(0), dim=-1)
    assert torch.allclose(emb, expected, atol=1e-5)
    # A single sentence longer than the context is cut there, and the record says how much was seen.
    run_on = "그리고 " * 200 + "끝."
    cut = clip.caption_plan(run_on + " " + short)
    n_run, n_short = clip.token_count(run_on) - 2, clip.token_count(short) - 2
    assert len(cut["chunks"]) == 2
    assert cut["kept_share"] == pytest.approx((clip.context_length - 2 + n_short) / (n_run + n_short))


def test_temporal_consistency_of_still_clip_above_noise(tiny_clip):
    still = np.repeat(textured_clip(t=1, h=32, w=32), 8, axis=0)
    noise = noise_clip(t=8, h=32, w=32)
    tc_still = temporal_consistency(tiny_clip.encode_frames(still))
    tc_noise = temporal_consistency(tiny_clip.encode_frames(noise))
    assert tc_still == pytest.approx(1.0, abs=1e-5)
    assert tc_still > tc_noise


# ---------------------------------------------------------------- pixel statistics
def test_laplacian_variance_equals_opencv():
    frames = textured_clip(t=3)
    ref = [cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in frames]
    assert np.allclose(laplacian_variance(frames), ref, rtol=1e-9)


def test_sharpness_falls_as_clip_is_blurred():
    frames = textured_clip(t=4)
    values = [float(laplacian_variance(frames).mean())]
    for sigma in (0.8, 1.5, 3.0, 6.0):
        blurred = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])
        values.append(float(laplacian_variance(blurred).mean()))
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_colour_entropy_single_hue_vs_noise():
    red = np.zeros((4, 16, 16, 3), np.uint8)
    red[..., 0] = 200
    hue_red, sat_red = colour_entropies(red)
    hue_noise, sat_noise = colour_entropies(noise_clip(t=4))
    assert hue_red == 0.0 and sat_red == 0.0
    assert hue_noise > 0.95 and sat_noise > 0.8
    grey = np.full((2, 8, 8, 3), 128, np.uint8)
    assert colour_entropies(grey)[0] == 0.0  # grey has no hue


def test_grades_and_acceptance_follow_the_config(tmp_path):
    cfg = load_config()
    good = {"clip_cosine": 0.36, "quality": 85.0, "flicker": 2.0, "frozen": 0.0}
    assert grade(good, cfg)[0] == "S"
    assert grade({**good, "clip_cosine": 0.26}, cfg)[0] == "B"
    assert grade({**good, "flicker": 9.0}, cfg)[0] == "C"      # visible flicker: never above C
    assert grade({**good, "frozen": 1.0}, cfg)[0] == "C"       # a frozen picture: never above C
    assert grade({**good, "quality": 10.0}, cfg)[0] == "D"
    # Any graded metric unmeasured: no letter at all.
    assert grade({k: v for k, v in good.items() if k != "clip_cosine"}, cfg)[0] == "incomplete"
    assert grade({**good, "quality": float("nan")}, cfg)[0] == "incomplete"
    ok = {"clip_cosine": 0.3, "flicker": 3.0, "fvd": 1140.0}
    assert acceptance(ok, cfg, fvd_set_size=256)["passed"] is True
    assert acceptance({**ok, "clip_cosine": 0.2}, cfg, fvd_set_size=256)["passed"] is False
    small = acceptance(ok, cfg, fvd_set_size=9)   # the FVD limit holds for 256-clip sets only
    assert small["passed"] is None and any("not comparable" in r["status"] for r in small["criteria"])
    assert acceptance({"clip_cosine": 0.5, "flicker": 1.0}, cfg, 256)["passed"] is None  # fvd not measured

    custom = tmp_path / "grades.yaml"
    custom.write_text("""
quality: {weights: {clip: 1.0}, clip_floor: 0.0, clip_full: 1.0}
grades:
  - {grade: A, rules: {clip_cosine: {min: 0.5}}}
  - {grade: Z, rules: {}}
acceptance: {clip_cosine: {min: 0.5}}
""")
    cfg2 = load_config(str(custom))
    assert grade({"clip_cosine": 0.3, "quality": 30.0}, cfg2)[0] == "Z"
    assert grade({"clip_cosine": 0.6, "quality": 60.0}, cfg2)[0] == "A"
    assert quality_score({"clip_cosine": 0.25, "sharpness_lapvar": 1e9}, cfg2) == pytest.approx(25.0)
    # The default weights need every component: one missing means no overall score, not a renormalised one.
    assert math.isnan(quality_score({"clip_cosine": 0.5}, cfg))


def test_quality_is_a_weighted_geometric_mean_with_a_floor():
    cfg = load_config()
    m = {"clip_cosine": 0.35, "temporal_consistency": 1.0, "sharpness_lapvar": 1e12, "colour_diversity": 1.0,
         "flicker": 0.0, "motion": 10.0}
    assert quality_score(m, cfg) == pytest.approx(100.0)
    w = cfg["quality"]["weights"]
    frozen = quality_score({**m, "motion": 0.0}, cfg)   # dynamics 0 -> floor 0.01
    assert frozen == pytest.approx(100 * 0.01 ** (w["dynamics"] / sum(w.values())))


def test_bad_grade_config_is_rejected_with_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("quality: {weights: {clip: 1}}\ngrades: [{grade: A, rules: {clip_cosine: {atleast: 1}}}]\n"
                   "acceptance: {}\n")
    with pytest.raises(InvalidArgument, match="min/max"):
        load_config(str(bad))


def test_reading_a_playlist_disguised_as_video_is_refused(tmp_path):
    from vidtune.evaluate.videoio import read_frames
    from vidtune.platform.errors import InvalidArgument

    sneaky = tmp_path / "clip.mp4"
    sneaky.write_text("ffconcat version 1.0\nfile '/etc/hostname'\n")
    with pytest.raises(InvalidArgument, match="clip.mp4: cannot decode video"):
        read_frames(sneaky)


def test_reference_manifests_read_every_listed_format(tmp_path):
    import json as _json

    from vidtune.evaluate.scoring import list_reference
    from vidtune.platform.storage import Storage

    rows = [{"video": "a.mp4", "category": "nature"}, {"video": "s3://bk/b.mp4"}]
    (tmp_path / "ref.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ref.json").write_text(_json.dumps({"videos": rows}))
    (tmp_path / "ref.csv").write_text("video,category\na.mp4,nature\ns3://bk/b.mp4,\n")
    expected = [(str(tmp_path / "a.mp4"), "nature"), ("s3://bk/b.mp4", "general")]
    for name in ("ref.jsonl", "ref.json", "ref.csv"):
        assert list_reference(str(tmp_path / name), Storage()) == expected, name
