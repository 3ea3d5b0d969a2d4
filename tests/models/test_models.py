"""Model specs, tiny random Wan models and loading through DiffSynth's real loader."""
from __future__ import annotations

import pytest
import torch

from vidtune.models import loading, specs, tiny
from vidtune.platform.errors import InvalidArgument, NotFound


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VIDTUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "model-cache"))


@pytest.mark.parametrize("name", [n for n, s in specs.SPECS.items() if not s.tiny])
def test_real_specs_match_diffsynth_model_configs(name):
    """The published checkpoints' configs (classes + constructor args) are DiffSynth's own."""
    from diffsynth.configs import MODEL_CONFIGS

    spec = specs.get_spec(name)
    for c in spec.components:
        if not c.kwargs:
            continue
        matches = [m for m in MODEL_CONFIGS if m["model_class"] == c.model_class
                   and {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.get("extra_kwargs", {}).items()}
                   == c.kwargs]
        assert matches, f"{name}/{c.role} has no DiffSynth config with these kwargs"


def test_spec_facts():
    five_b = specs.get_spec("wan2.2-ti2v-5b")
    assert five_b.component("dit").kwargs["dim"] == 3072 and five_b.component("dit").kwargs["num_layers"] == 30
    assert five_b.z_dim == 48 and five_b.vae_stride == 16
    a14b = specs.get_spec("wan2.2-t2v-a14b")
    assert a14b.dit_roles == ("dit", "dit2") and a14b.switch_boundary == 0.875 and a14b.train_boundary == 0.417
    assert "high_noise_model" in a14b.component("dit").files and "low_noise_model" in a14b.component("dit2").files
    assert specs.get_spec("tiny").name == "tiny-ti2v"
    with pytest.raises(InvalidArgument, match="unknown model"):
        specs.get_spec("wan3")


@pytest.mark.parametrize("name", ["tiny-ti2v", "tiny-t2v-a14b"])
def test_tiny_models_load_with_the_real_loader_and_generate(name):
    spec = specs.get_spec(name)
    pipe = loading.load_pipeline(name)
    assert type(pipe.dit).__name__ == "WanModel" and pipe.dit.dim == 64 and len(pipe.dit.blocks) == 2
    assert (pipe.dit2 is not None) == (len(spec.dit_roles) == 2)
    assert pipe.vae.z_dim == spec.z_dim and pipe.text_encoder.dim == 32
    ids, mask = pipe.tokenizer("고양이가 걷는다 a cat walks", return_mask=True, add_special_tokens=True)
    assert ids.shape == (1, 512) and int(mask.sum()) > 3 and int(ids[0, 0]) not in (0, 2)
    video = pipe(prompt="고양이가 걷는다", height=64, width=64, num_frames=5, num_inference_steps=2, seed=0,
                 tiled=False, cfg_scale=1.0, progress_bar_cmd=lambda x: x)
    assert len(video) == 5 and video[0].size == (64, 64)


def test_tokenizer_special_ids(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny.build_tiny_tokenizer(tmp_path / "tok")))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("한국어 자막").input_ids[-1] == 1


def test_weights_from_the_object_store(storage, bucket, tmp_path):
    local = loading.tiny_weights_dir("tiny-t2v-a14b")
    for path in local.rglob("*"):
        if path.is_file():
            storage.upload(path, f"{bucket}/wan/{path.relative_to(local)}")
    pipe = loading.load_pipeline("tiny-t2v-a14b", weights=f"{bucket}/wan", storage=storage, cache_dir=tmp_path)
    ref = loading.load_pipeline("tiny-t2v-a14b")
    # dit (high noise) and dit2 (low noise) keep their roles
    for a, b in zip(pipe.dit2.parameters(), ref.dit2.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "objects").exists()


def test_missing_or_wrong_weights_are_named():
    with pytest.raises(InvalidArgument, match="needs weights"):
        loading.resolve_weights("wan2.2-ti2v-5b", None)
    with pytest.raises(NotFound, match="dit"):
        loading.resolve_weights("wan2.2-ti2v-5b", "/nonexistent/wan")
    with pytest.raises(InvalidArgument, match="unknown roles"):
        loading.resolve_weights("tiny-ti2v", {"unet": "/x"})


def test_loader_prints_go_to_the_debug_log_and_other_threads_still_print(capsys, caplog):
    import logging
    import threading

    caplog.set_level(logging.DEBUG, logger="vidtune.models.loading")
    release = threading.Event()

    def other_thread():
        release.wait(10)
        print("from another thread")

    t = threading.Thread(target=other_thread)
    t.start()
    with loading._loader_prints_to_debug_log():
        loading.load_pipeline("tiny-ti2v", roles=["vae"], tokenizer=False)
        release.set()
        t.join(10)
    print("after loading")
    assert capsys.readouterr().out == "from another thread\nafter loading\n"
    assert "Loading models from" in caplog.text
