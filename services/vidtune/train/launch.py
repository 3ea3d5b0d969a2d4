"""The accelerate setup for a run: plain accelerate on the CPU, DeepSpeed ZeRO-2 on GPUs.

The DeepSpeed config is built from the training config here (not kept as a separate file), so a V100
run always gets fp16 with dynamic loss scaling and an A100 run bf16, whatever launched it.
"""
from __future__ import annotations

import os
import socket
import sys

from .config import TrainConfig


def deepspeed_config(cfg: TrainConfig) -> dict:
    """DeepSpeed ZeRO-2 settings for a config (fp16 `loss_scale: 0` means dynamic loss scaling)."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {
            "stage": 2,
            "offload_optimizer": {"device": "cpu" if cfg.deepspeed_offload_optimizer else "none"},
            "overlap_comm": cfg.device == "cuda",
            "contiguous_gradients": True,
            "reduce_bucket_size": 5e7,
            "allgather_bucket_size": 5e7,
        },
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env(cpu: bool) -> None:
    """The torch.distributed variables a lone process needs (torchrun sets them for real launches)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_accelerator(cfg: TrainConfig):
    """An Accelerator for the config; DeepSpeed ZeRO-2 when `deepspeed_stage` is 2."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = cfg.device == "cpu"
    handlers = []
    if cfg.hang_timeout_s > 0:
        # A collective waiting this long raises instead of hanging; twice the watchdog's window, so the
        # watchdog (which logs the stacks) acts first and this only catches what it cannot.
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=2 * cfg.hang_timeout_s)))
    # A previous run in this process leaves accelerate's singleton state behind.
    AcceleratorState._reset_state(reset_partial_state=True)
    if cfg.deepspeed_stage == 2:
        from accelerate.utils import DeepSpeedPlugin

        single_process_env(cpu)
        if cpu:
            os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg))
        mixed = cfg.precision if cfg.precision in ("fp16", "bf16") else "no"
        # `cpu=True` would make accelerate drop DeepSpeed; DS_ACCELERATOR=cpu already puts it on the CPU.
        return Accelerator(deepspeed_plugin=plugin, mixed_precision=mixed, kwargs_handlers=handlers,
                           gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    # Weights already live in the training dtype, so no autocast on top.
    return Accelerator(cpu=cpu, mixed_precision="no", kwargs_handlers=handlers,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps)


# Kubeflow Trainer's torch runtime sets these on every node's container (its constants.TorchEnv*).
PET_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def torchrun_command(command: list[str], env: dict | None = None) -> list[str]:
    """`command` under torchrun, one process per GPU of this node, with the nodes, this node's rank and the
    rendezvous taken from the PET_* variables. The static rendezvous keeps node ranks as the JobSet's
    completion indexes give them, so node 0 holds global rank 0 (which writes the run's results)."""
    from ..platform.errors import InvalidArgument

    env = os.environ if env is None else env
    missing = [k for k in PET_ENV if not str(env.get(k, "")).strip()]
    if missing:
        raise InvalidArgument(f"torchrun launch needs {', '.join(missing)} (set by Kubeflow Trainer's torch runtime)")
    try:
        nnodes, nproc, rank, port = (int(env[k]) for k in (*PET_ENV[:3], "PET_MASTER_PORT"))
    except ValueError:
        raise InvalidArgument(f"PET_* variables must be whole numbers: {[env[k] for k in PET_ENV]}") from None
    if not 0 <= rank < nnodes or nproc < 1:
        raise InvalidArgument(f"PET_NODE_RANK={rank} with PET_NNODES={nnodes}, PET_NPROC_PER_NODE={nproc}: "
                              "need 0 <= rank < nodes and at least one process per node")
    addr = env["PET_MASTER_ADDR"]
    # torchrun as this interpreter's module: the launcher and the ranks share one environment.
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
            f"--node-rank={rank}", "--rdzv-backend=static", f"--rdzv-endpoint={addr}:{port}", f"--master-addr={addr}",
            f"--master-port={port}", "--no-python", *command]
