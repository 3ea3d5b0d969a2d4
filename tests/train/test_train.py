"""LoRA training on the tiny Wan models: real DiffSynth classes, loader, loss and LoRA format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from makedata import Crash, crash_at
from vidtune.models.loading import load_pipeline
from vidtune.platform.errors import FailedPrecondition, InvalidArgument
from vidtune.train.config import load_config
from vidtune.train.presets import PRESETS, describe_presets
from vidtune.train.runner import run_training


def _frames(pipe, seed=3):
    video = pipe(prompt="a red square moves right 빨간 사각형", height=64, width=64, num_frames=9,
                 num_inference_steps=2, seed=seed, tiled=False, cfg_scale=1.0, progress_bar_cmd=lambda x: x,
                 output_type="floatpoint")
    return video.float().numpy()


def _metrics(path):
    return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]


def test_every_preset_validates_and_documents_memory():
    for name in PRESETS:
        cfg = load_config({"preset": name, "weights": "/models/any"})
        assert cfg.num_frames % 4 == 1 and cfg.height % 16 == 0 and cfg.width % 16 == 0
        assert cfg.notes
    rows = {r["name"]: r for r in describe_presets()}
    v100 = load_config({"preset": "v100-2gpu-ti2v-5b-480x832x49", "weights": "/m"})
    assert (v100.precision, v100.deepspeed_stage, v100.num_gpus) == ("fp16", 2, 2)
    assert rows["v100-2gpu-ti2v-5b-480x832x49"]["memory_per_gpu_gb"] <= 32
    assert load_config({"preset": "a100-ti2v-5b-704x1280x121", "weights": "/m"}).precision == "bf16"
    assert load_config("cpu-tiny").lora_targets == "q,k,v,o,ffn.0,ffn.2"


@pytest.mark.parametrize("override, words", [
    ({"num_frames": 10}, r"4n\+1"),
    ({"height": 72}, "multiple"),
    ({"precision": "fp8"}, "precision"),
    ({"learnig_rate": 1.0}, "unknown"),
    ({"model": "wan9"}, "unknown model"),
    ({"model": "wan2.2-ti2v-5b"}, "needs weights"),
    ({"model": "tiny-t2v-a14b"}, "expert"),
    ({"lora_targets": ""}, "lora_targets"),
])
def test_bad_config_names_the_field(override, words):
    with pytest.raises(InvalidArgument, match=words):
        load_config({"preset": "cpu-tiny", **override})


def test_ti2v_trains_writes_checkpoints_and_the_lora_changes_the_output(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    seen = []
    result = run_training("cpu-tiny", str(tiny_dataset), str(out), progress=lambda d, t, m: seen.append((d, t, m)))
    # 4 good clips, the broken one rejected with its reason; 2 epochs of 4 steps
    assert result["samples"] == 4 and result["rejected"] == 1
    assert result["steps"] == result["total_steps"] == 8
    rejected = (out / "cache" / "tiny-ti2v-64x64x9-fp32" / "rejected-0.jsonl").read_text()
    assert "broken0.mp4" in rejected and "cannot decode" in rejected
    metrics = _metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert all(np.isfinite(m["loss"]) and m["lr"] > 0 and m["samples_per_s"] > 0 for m in metrics)
    assert any("loss=" in msg and "lr=" in msg for _, _, msg in seen)
    for name in ("checkpoints/epoch-0.safetensors", "checkpoints/epoch-1.safetensors", "lora.safetensors",
                 "lora.comfyui.safetensors", "loss.png", "report.html", "report.md", "state/latest.json"):
        assert (out / name).exists(), name
    # DiffSynth keys (upstream format) and ComfyUI keys with alpha
    with safe_open(str(out / "checkpoints/epoch-1.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["model"] == "tiny-ti2v"
    assert keys and all(k.startswith("blocks.") and ".default.weight" in k for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"lora_A", "lora_B"}
    assert {k.split(".")[3] for k in keys} >= {"q", "k", "v", "o"}
    with safe_open(str(out / "checkpoints/epoch-1.comfyui.safetensors"), "pt") as f:
        ckeys = list(f.keys())
        alpha = f.get_tensor([k for k in ckeys if k.endswith(".alpha")][0])
    assert all(k.startswith("diffusion_model.blocks.") for k in ckeys)
    assert any(k.endswith(".lora_A.weight") for k in ckeys) and float(alpha) == 4.0

    base = _frames(load_pipeline("tiny-ti2v"))
    tuned = _frames(load_pipeline("tiny-ti2v", lora=[str(out / "checkpoints/epoch-1.safetensors")]))
    with pytest.warns(UserWarning, match="Alpha"):  # DiffSynth applies the ComfyUI file's alpha/rank
        comfy = _frames(load_pipeline("tiny-ti2v", lora=[str(out / "checkpoints/epoch-1.comfyui.safetensors")]))
    assert np.isfinite(tuned).all()
    assert np.abs(tuned - base).max() > 1e-4
    # both files describe the same adapted model
    assert np.abs(tuned - comfy).max() < 1e-4


def test_a14b_high_noise_expert_trains_from_the_object_store(tiny_dataset, storage, bucket, tmp_path):
    for path in tiny_dataset.rglob("*"):
        if path.is_file():
            storage.upload(path, f"{bucket}/ds/{path.relative_to(tiny_dataset)}")
    out = f"{bucket}/runs/a14b-high"
    result = run_training({"preset": "cpu-tiny-a14b", "epochs": 1}, f"{bucket}/ds", out, storage=storage,
                          scratch=tmp_path)
    assert result["steps"] == 4 and np.isfinite(result["final_loss"])
    assert storage.exists(f"{out}/checkpoints/epoch-0.safetensors")
    metrics = [json.loads(x) for x in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    assert len(metrics) == 4 and all(np.isfinite(m["loss"]) for m in metrics)
    with storage.local_copy(f"{out}/checkpoints/epoch-0.safetensors", tmp_path) as local:
        with safe_open(str(local), "pt") as f:
            assert f.metadata()["role"] == "dit"  # the high-noise expert is the pipeline's `dit`
    # the low-noise expert is a second run (upstream's A14B recipe); its LoRA targets `dit2`
    low = run_training({"preset": "cpu-tiny-a14b", "expert": "low", "epochs": 1}, str(tiny_dataset),
                       str(tmp_path / "low"), max_steps=2)
    assert low["steps"] == 2 and np.isfinite(low["final_loss"])
    with safe_open(str(tmp_path / "low" / "lora.safetensors"), "pt") as f:
        assert f.metadata()["role"] == "dit2"
    base = load_pipeline("tiny-t2v-a14b")
    high_only = load_pipeline("tiny-t2v-a14b", lora=[{"path": f"{out}/checkpoints/epoch-0.safetensors", "role": "dit"}],
                              storage=storage)
    assert high_only.dit2 is not None
    # only the high-noise expert changed
    assert any(not torch.equal(a, b) for a, b in zip(base.dit.parameters(), high_only.dit.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(base.dit2.parameters(), high_only.dit2.parameters()))
    both = load_pipeline("tiny-t2v-a14b", storage=storage, lora=[
        {"path": f"{out}/checkpoints/epoch-0.safetensors", "role": "dit"},
        {"path": str(tmp_path / "low" / "lora.safetensors"), "role": "dit2"}])
    assert any(not torch.equal(a, b) for a, b in zip(base.dit2.parameters(), both.dit2.parameters()))
    assert np.abs(_frames(both) - _frames(base)).max() > 1e-4


def test_low_noise_expert_uses_the_low_noise_timesteps():
    high = load_config({"preset": "cpu-tiny-a14b", "expert": "high"})
    low = load_config({"preset": "cpu-tiny-a14b", "expert": "low"})
    assert (high.expert_role, high.timestep_range) == ("dit", (0.0, 0.417))
    assert (low.expert_role, low.timestep_range) == ("dit2", (0.417, 1.0))


def test_killed_run_resumes_at_the_same_step_without_repeating_samples(tiny_dataset, tmp_path):
    cfg = {"preset": "cpu-tiny", "save_every_steps": 2, "epochs": 2}
    full = run_training(cfg, str(tiny_dataset), str(tmp_path / "full"))
    expected = [(m["step"], m["samples"]) for m in _metrics(tmp_path / "full" / "metrics.jsonl")]

    with pytest.raises(Crash):
        run_training(cfg, str(tiny_dataset), str(tmp_path / "cut"), on_step=crash_at(5))
    assert json.loads((tmp_path / "cut" / "state" / "latest.json").read_text())["step"] == 4
    resumed = run_training(cfg, str(tiny_dataset), str(tmp_path / "cut"))
    assert resumed["resumed_from"] == 4
    assert resumed["steps"] == full["steps"] == 8
    got = [(m["step"], m["samples"]) for m in _metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert got == expected  # same steps, same samples, none repeated or lost
    # the resumed state (LoRA, optimizer, RNG) continues the same numbers
    full_loss = [m["loss"] for m in _metrics(tmp_path / "full" / "metrics.jsonl")]
    cut_loss = [m["loss"] for m in _metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert np.allclose(full_loss, cut_loss, rtol=1e-4, atol=1e-6)


def test_a_changed_config_refuses_to_resume(tiny_dataset, tmp_path):
    run_training("cpu-tiny", str(tiny_dataset), str(tmp_path / "r"), max_steps=4)
    with pytest.raises(FailedPrecondition, match="another config"):
        run_training({"preset": "cpu-tiny", "lora_rank": 8, "lora_alpha": 8}, str(tiny_dataset), str(tmp_path / "r"))


def test_uncached_training_substitutes_an_undecodable_sample_and_resumes_the_same(tiny_dataset, tmp_path):
    cfg = {"preset": "cpu-tiny", "use_cache": False, "save_every_steps": 2, "epochs": 1}
    full = run_training(cfg, str(tiny_dataset), str(tmp_path / "full"))
    assert full["steps"] == full["total_steps"] == 5 and full["rejected"] == 1
    trained = [sid for m in _metrics(tmp_path / "full" / "metrics.jsonl") for sid in m["samples"]]
    assert len(trained) == 5 and not any("broken" in sid for sid in trained)
    rejected = (tmp_path / "full" / "cache" / "tiny-ti2v-64x64x9-fp32" / "rejected-0.jsonl").read_text()
    assert "broken0.mp4" in rejected and "cannot decode" in rejected

    with pytest.raises(Crash):
        run_training(cfg, str(tiny_dataset), str(tmp_path / "cut"), on_step=crash_at(3))
    resumed = run_training(cfg, str(tiny_dataset), str(tmp_path / "cut"))
    assert resumed["resumed_from"] == 2 and resumed["rejected"] == 1
    full_loss = [m["loss"] for m in _metrics(tmp_path / "full" / "metrics.jsonl")]
    cut_loss = [m["loss"] for m in _metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert np.allclose(full_loss, cut_loss, rtol=1e-4, atol=1e-6)  # the same substitutions after resuming
