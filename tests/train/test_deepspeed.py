"""DeepSpeed ZeRO-2 through accelerate on the CPU (gloo): train, save, and resume in a new process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RUN = """
import json, sys
from vidtune.train.runner import run_training
cfg = {"preset": "cpu-tiny", "deepspeed_stage": 2, "save_every_steps": 2, "epochs": 1}
max_steps = int(sys.argv[3]) or None
print("RESULT " + json.dumps(run_training(cfg, sys.argv[1], sys.argv[2], max_steps=max_steps)))
"""


def _run(dataset, out, max_steps, env):
    proc = subprocess.run([sys.executable, "-c", RUN, str(dataset), str(out), str(max_steps)], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_zero2_trains_saves_and_resumes_on_the_cpu(tiny_dataset, tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "NO_PROXY": "127.0.0.1,localhost",
           "VIDTUNE_CACHE_DIR": os.environ["VIDTUNE_CACHE_DIR"]}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = tmp_path / "ds"
    first = _run(tiny_dataset, out, 3, env)
    assert first["steps"] == 3
    state = out / "state" / "step-00000003"
    # a DeepSpeed checkpoint: ZeRO optimizer partition + module states (LoRA only)
    assert (state / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()
    second = _run(tiny_dataset, out, 0, env)
    assert second["resumed_from"] == 3 and second["steps"] == 4
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["loss"] == m["loss"] for m in metrics)
    assert (out / "checkpoints" / "epoch-0.safetensors").exists()
