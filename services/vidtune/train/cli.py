"""`vidtune train run|submit|presets`."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import yaml

from vidtune.platform.client import CliProgress, add_client_args, submit_and_follow

from .presets import PRESETS, describe_presets


def _overrides(pairs: list[str] | None) -> dict:
    """`--set key=value` pairs, values parsed as YAML scalars (numbers, booleans, strings)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _config_dict(args) -> dict:
    from vidtune.platform.storage import Storage

    data = {}
    if args.config and args.config.lstrip().startswith("{"):
        data = yaml.safe_load(args.config)  # an inline mapping (what a dry-run Job passes)
    elif args.config:
        data = yaml.safe_load(Storage().read_text(args.config)) or {}
    if args.preset:
        data = {"preset": args.preset, **data}
    data.update(_overrides(args.set))
    return data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="LoRA training of Wan2.x models (DiffSynth, DeepSpeed, Kubernetes Jobs)")
    s = p.add_subparsers(dest="action", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--preset", choices=sorted(PRESETS), help="named preset the config starts from")
        q.add_argument("--config", help="YAML config file or URI (fields of the training config)")
        q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field (repeatable)")
        q.add_argument("--dataset", required=True, help="directory or s3:// prefix with metadata.csv")
        q.add_argument("--out", required=True, help="output directory or s3:// prefix of the run")
        q.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all epochs)")

    run = s.add_parser("run", help="train in this process")
    common(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    submit = s.add_parser("submit", help="train as a job of the train service (or print its Kubernetes Job)")
    common(submit)
    submit.add_argument("--backend", default="inprocess", choices=["inprocess", "local", "kubernetes"],
                        help="where the service runs it: its own process, a child process, or a Kubernetes Job "
                             "(default: inprocess)")
    submit.add_argument("--timeout", type=int, default=0, help="seconds the run may take (0: a week)")
    submit.add_argument("--dry-run", action="store_true",
                        help="with --backend kubernetes: print the Job manifest for `kubectl apply -f -`")
    submit.add_argument("--nodes", type=int, default=0,
                        help="nodes of num_gpus GPUs each (sets num_nodes); more than 1 renders a Kubeflow TrainJob")
    submit.add_argument("--image", help="container image of the Job (default: $VIDTUNE_K8S_IMAGE)")
    submit.add_argument("--namespace", help="namespace of the Job (default: $VIDTUNE_K8S_NAMESPACE or vidtune)")
    add_client_args(submit)
    submit.set_defaults(func=cmd_submit)

    launch = s.add_parser("launch", help="run a command under torchrun on this node of a multi-node job "
                          "(from Kubeflow Trainer's PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_*)")
    launch.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. vidtune train run ...")
    launch.set_defaults(func=cmd_launch)

    presets = s.add_parser("presets", help="list the named presets with their expected memory per GPU")
    presets.set_defaults(func=cmd_presets)

    config = s.add_parser("config", help="every config key (for --set and --config) with its type, default and meaning")
    config.set_defaults(func=cmd_config)


@contextlib.contextmanager
def stdout_to_stderr():
    """Everything written to stdout (Python or native code, e.g. library banners) goes to stderr
    meanwhile, so the command's stdout holds only its JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_run(args) -> int:
    with stdout_to_stderr():
        from vidtune.platform.kinds import run_job

        from .tasks import KINDS

        config = _config_dict(args)
        spec = {"preset": config.pop("preset", ""), "config": config, "dataset": args.dataset, "output": args.out,
                "max_steps": args.max_steps}
        with CliProgress("train", "step", enabled=not args.quiet) as bar:
            result = run_job(KINDS[0], spec, bar)
        final = "n/a" if result["final_loss"] is None else f"{result['final_loss']:.4f}"
        print(f"{result['steps']}/{result['total_steps']} steps, final loss {final}; "
              f"LoRA: {result['lora']}; report: {result['report']}", file=sys.stderr)
    print(json.dumps(result, ensure_ascii=False, default=str))
    return 0


def cmd_submit(args) -> int:
    from .tasks import config_of

    config = _config_dict(args)
    if args.nodes:
        config["num_nodes"] = args.nodes
    preset = config.pop("preset", "")
    spec = {"preset": preset, "config": config, "dataset": args.dataset, "output": args.out,
            "max_steps": args.max_steps, "timeout_s": args.timeout}
    multi_node = config_of(spec).num_nodes > 1  # fails here on a bad config, before anything is submitted
    if multi_node and not (args.dry_run and args.backend == "kubernetes"):
        print("error: a multi-node run is a Kubeflow TrainJob: print it with --backend kubernetes --dry-run "
              "and apply it with kubectl (the train service starts single-node Jobs only)", file=sys.stderr)
        return 2
    if args.dry_run:
        if args.backend != "kubernetes":
            print("error: --dry-run prints a Kubernetes Job; use it with --backend kubernetes", file=sys.stderr)
            return 2
        from vidtune.platform.storage import is_s3

        from .locations import config_locations

        named = [("--dataset", args.dataset), ("--out", args.out)] + [
            (key, v) for key, values in config_locations(config).items() for v in values]
        local = [f"{key} {value!r}" for key, value in named if not is_s3(value)]
        if local:
            print(f"error: the Job's pod reads only s3:// URIs; these are local: {', '.join(local)} "
                  f"(upload with `vidtune store cp`)", file=sys.stderr)
            return 2
        from vidtune.platform.jobs import new_record
        from vidtune.platform.kube import ClusterSettings, manifest_yaml

        from .placement import training_job, training_trainjob

        # No service holds a record for a printed Job, so its pod runs the training itself;
        # a restarted pod resumes from the state below --out.
        record = new_record("train", "train.run", spec, backend="kubernetes")
        full = {"preset": preset, **config} if preset else config
        command = ["vidtune", "train", "run", "--quiet", "--config", json.dumps(full, ensure_ascii=False),
                   "--dataset", args.dataset, "--out", args.out]
        if args.max_steps:
            command += ["--max-steps", str(args.max_steps)]
        settings = ClusterSettings.from_env().replace(image=args.image, namespace=args.namespace)
        job = (training_trainjob if multi_node else training_job)(record, settings, command=command)
        print(manifest_yaml(job), end="")
        return 0
    from vidtune.v1 import train_pb2, train_pb2_grpc

    from vidtune.platform.storage import absolute, absolute_locations

    from .locations import PATH_KEYS

    # The service may run in another directory: local paths are sent absolute, the config's own too.
    weights = config.get("weights")
    config = absolute_locations(config, PATH_KEYS + (() if isinstance(weights, dict) else ("weights",)))
    if isinstance(weights, dict):  # per role: a location or a list of them
        config["weights"] = absolute_locations(weights, weights)
    request = train_pb2.TrainRequest(preset=preset, config_yaml=yaml.safe_dump(config) if config else "",
                                     dataset=absolute(args.dataset), output=absolute(args.out), max_steps=args.max_steps,
                                     backend=args.backend, timeout_s=args.timeout)
    return submit_and_follow("train", args, lambda c: c.stub(train_pb2_grpc.TrainServiceStub)
                             .SubmitTrain(request, metadata=c.metadata, timeout=c.timeout))


def cmd_launch(args) -> int:
    from .launch import torchrun_command

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("error: give the command to launch after --", file=sys.stderr)
        return 2
    argv = torchrun_command(command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # torchrun's exit code is the command's


def cmd_presets(args) -> int:
    with stdout_to_stderr():  # the memory model's imports print DeepSpeed's accelerator banner
        rows = describe_presets()
    for row in rows:
        est, cache = row["estimate"], row["caching"]
        turns = "in turns" if cache["offload"] else "together"
        print(f"{row['name']:<38} {row['model']:<16} {row['size']:<12} {row['precision']:<5} "
              f"ZeRO-{row['deepspeed_stage']} gpus={row['gpus']} nodes={row['nodes']}\n"
              f"    training: estimated {est['total_gb']:.1f} GB/GPU (weights {est['weights_gb']:.1f} + "
              f"LoRA/optimizer {est['lora_gb']:.1f} + activations {est['activations_gb']:.1f} at {est['tokens']} "
              f"tokens + runtime {est['runtime_gb']:.1f})\n"
              f"    caching:  estimated {cache['total_gb']:.1f} GB/GPU (umT5 {cache['text_encoder_gb']:.1f} + "
              f"{cache['text_activations_gb']:.1f} activations, VAE {cache['vae_gb']:.1f} + "
              f"{cache['vae_activations_gb']:.1f} activations{' on tiles' if row['vae_tiled'] else ''}, {turns})")
    return 0


def cmd_config(args) -> int:
    import dataclasses

    from .config import TrainConfig, field_notes

    defaults = TrainConfig()
    notes, groups = field_notes()
    print(f"{'key':<30} {'type':<6} {'default':<22} meaning")
    heading = None
    for f in dataclasses.fields(TrainConfig):
        if groups.get(f.name) != heading:
            heading = groups.get(f.name)
            print(f"\n# {heading}")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        default = json.dumps(getattr(defaults, f.name), ensure_ascii=False)
        print(f"{f.name:<30} {kind:<6} {default:<22} {notes.get(f.name, '')}".rstrip())
    return 0
