"""LoRA files and resumable training state in the object store.

Layout below a run's output prefix:

    checkpoints/epoch-N.safetensors          DiffSynth format: `pipe.load_lora(pipe.dit, path)` loads it
    checkpoints/epoch-N.comfyui.safetensors  ComfyUI keys: diffusion_model.<layer>.lora_A/B.weight + .alpha
    lora.safetensors / lora.comfyui.safetensors   the last saved LoRA (end of run)
    state/step-00000040/...                  accelerate/DeepSpeed state (LoRA, optimizer, scheduler, RNG)
                                             + trainer_state.json (step, data order, config fingerprint)
    state/latest.json                        pointer to the newest complete state, written last
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..platform.storage import Storage, is_s3, join

STATE_DIR = "state"
LATEST = "latest.json"


def diffsynth_lora(lora: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """Upstream's key format (`<layer>.lora_A.default.weight`), with PEFT's alpha/rank scale folded
    into lora_B so DiffSynth's loader (which applies no scale) reproduces the trained model."""
    scale = float(alpha) / float(rank)
    out = {}
    for key, value in lora.items():
        value = value.detach().float().cpu().contiguous()
        out[key] = value * scale if ".lora_B." in key and scale != 1.0 else value
    return out


def comfyui_lora(lora: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """ComfyUI's Wan LoRA keys: `diffusion_model.<layer>.lora_A.weight`, `.lora_B.weight`, `.alpha`."""
    out = {}
    for key, value in lora.items():
        name = "diffusion_model." + key.replace(".default.weight", ".weight")
        out[name] = value.detach().float().cpu().contiguous()
        if ".lora_A." in key:
            out[name.split(".lora_A.")[0] + ".alpha"] = torch.tensor(float(alpha))
    return out


def write_lora(lora: dict, uri: str, storage: Storage, scratch: Path, rank: int, alpha: float,
               metadata: dict) -> dict[str, str]:
    """Write the DiffSynth and ComfyUI files for one LoRA; returns both URIs."""
    meta = {k: str(v) for k, v in metadata.items()}
    comfy_uri = uri.replace(".safetensors", ".comfyui.safetensors")
    for target, tensors in ((uri, diffsynth_lora(lora, rank, alpha)), (comfy_uri, comfyui_lora(lora, alpha))):
        local = scratch / Path(target).name
        save_file(tensors, str(local), metadata=meta)
        storage.upload(local, target)
        local.unlink()
    return {"diffsynth": uri, "comfyui": comfy_uri}


def state_uri(out: str, step: int) -> str:
    return join(out, STATE_DIR, f"step-{step:08d}")


def publish_state(local_dir: Path, out: str, step: int, storage: Storage, keep: int, trainer_state: dict) -> str:
    """Upload a saved state directory, then move the `latest` pointer to it and prune old states."""
    (local_dir / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    target = state_uri(out, step)
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        storage.upload(path, join(target, str(path.relative_to(local_dir))))
    storage.write_text(join(out, STATE_DIR, LATEST), json.dumps({"step": step, "uri": target}))
    steps = sorted({int(u.split("/step-")[1].split("/")[0]) for u in storage.list(join(out, STATE_DIR))
                    if "/step-" in u})
    for old in steps[:-keep] if keep > 0 else []:
        prune_state(out, old, storage)
    return target


def prune_state(out: str, step: int, storage: Storage) -> None:
    """Delete one saved state, its directory included when it is on a local disk."""
    target = state_uri(out, step)
    for uri in list(storage.list(target)):
        storage.delete(uri)
    if not is_s3(target):
        shutil.rmtree(target, ignore_errors=True)


def latest_state(out: str, storage: Storage) -> dict | None:
    """The newest complete state ({step, uri}) of a run, or None for a fresh run."""
    pointer = join(out, STATE_DIR, LATEST)
    if not storage.exists(pointer):
        return None
    return json.loads(storage.read_text(pointer))


def fetch_state(state: dict, storage: Storage, local_dir: Path) -> tuple[Path, dict]:
    """Download a state directory; returns it and its trainer_state.json."""
    prefix = state["uri"].rstrip("/") + "/"
    for uri in storage.list(prefix):
        storage.download(uri, local_dir / uri[len(prefix):])
    return local_dir, json.loads((local_dir / "trainer_state.json").read_text())
