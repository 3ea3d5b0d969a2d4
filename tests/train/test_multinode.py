"""Multi-node training for real on one machine: two "nodes" (two `vidtune train launch` processes, each torchrun
with one process, gloo on 127.0.0.1, the PET_* variables Kubeflow Trainer's torch runtime sets) train the tiny
model with DeepSpeed ZeRO-2 on the CPU, and their run equals one node with two processes: same losses per step,
same LoRA tensors. What a real cluster adds (NCCL between hosts, the JobSet's headless service) stays untested."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vidtune.platform.errors import InvalidArgument
from vidtune.train.launch import torchrun_command

CONFIG = {"preset": "cpu-tiny", "deepspeed_stage": 2, "epochs": 1, "save_every_steps": 100}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_takes_nodes_rank_and_rendezvous_from_the_runtime_env():
    env = {"PET_NNODES": "4", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "3", "PET_MASTER_ADDR": "job-node-0-0.job",
           "PET_MASTER_PORT": "29500"}
    argv = torchrun_command(["vidtune", "train", "run"], env)
    assert argv[1:3] == ["-m", "torch.distributed.run"] and argv[-3:] == ["vidtune", "train", "run"]
    for flag in ("--nnodes=4", "--nproc-per-node=8", "--node-rank=3", "--rdzv-backend=static",
                 "--rdzv-endpoint=job-node-0-0.job:29500", "--no-python"):
        assert flag in argv
    with pytest.raises(InvalidArgument, match="PET_NODE_RANK"):
        torchrun_command(["x"], {k: v for k, v in env.items() if k != "PET_NODE_RANK"})
    with pytest.raises(InvalidArgument, match="rank"):
        torchrun_command(["x"], {**env, "PET_NODE_RANK": "4"})


def _launch(dataset, out, nodes: int, procs: int, port: int) -> list[subprocess.Popen]:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    base.update(DS_ACCELERATOR="cpu", NO_PROXY="127.0.0.1,localhost", OMP_NUM_THREADS="1",
                PET_NNODES=str(nodes), PET_NPROC_PER_NODE=str(procs), PET_MASTER_ADDR="127.0.0.1",
                PET_MASTER_PORT=str(port))
    command = [sys.executable, "-m", "vidtune.cli", "train", "launch", "--", sys.executable, "-m", "vidtune.cli",
               "train", "run", "--quiet", "--config", json.dumps(CONFIG), "--dataset", str(dataset), "--out", str(out),
               "--max-steps", "3"]
    return [subprocess.Popen(command, env={**base, "PET_NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for rank in range(nodes)]


def _wait(procs: list[subprocess.Popen]) -> None:
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]


def _losses(out) -> list[tuple[int, float, list]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(m["step"], m["loss"], m["samples"]) for m in rows]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_node_of_two(tiny_dataset, tmp_path):
    nodes, node = tmp_path / "two-nodes", tmp_path / "one-node"
    _wait(_launch(tiny_dataset, nodes, nodes=2, procs=1, port=_port()))
    _wait(_launch(tiny_dataset, node, nodes=1, procs=2, port=_port()))
    two, one = _losses(nodes), _losses(node)
    assert [s for s, _, _ in two] == [1, 2, 3] and len({tuple(x) for _, _, x in two}) == 3
    assert [(s, ids) for s, _, ids in two] == [(s, ids) for s, _, ids in one]   # both ranks' samples, same order
    assert [l for _, l, _ in two] == pytest.approx([l for _, l, _ in one], rel=1e-5, abs=1e-7)
    a, b = load_file(str(nodes / "lora.safetensors")), load_file(str(node / "lora.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
