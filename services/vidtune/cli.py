"""`vidtune`: run stages in-process, submit them as jobs, follow jobs, serve, and run the local stack."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vidtune.platform.errors import InvalidArgument, NotFound, VidtuneError

# Services start subprocesses (ffmpeg, workers) next to gRPC's threads; gRPC's fork handlers are not
# wanted for that and are read once, when grpc is first imported, so this must come before any import of it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


def build_parser() -> argparse.ArgumentParser:
    from vidtune.registry import available, module

    parser = argparse.ArgumentParser(prog="vidtune", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("VIDTUNE_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    for svc in available("cli"):
        module(svc, "cli").register(sub)
    from vidtune.pipeline.cli import register as register_pipeline

    register_pipeline(sub)

    serve = sub.add_parser("serve", help="run one service's gRPC server (SIGTERM stops it gracefully)")
    serve.add_argument("service", choices=available("service"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("VIDTUNE_PORT", "0")),
                       help="default: $VIDTUNE_PORT, else the service's default port")
    serve.add_argument("--host", default=os.environ.get("VIDTUNE_HOST", "127.0.0.1"))
    serve.add_argument("--job-workers", type=int, default=int(os.environ.get("VIDTUNE_JOB_WORKERS", "1")),
                       help="jobs run at once by this server")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run one job record to its end (a Kubernetes Job or a subprocess)")
    worker.add_argument("--service", required=True, choices=available("tasks"))
    worker.add_argument("--job-id", required=True)
    worker.add_argument("--spec", help="YAML/JSON spec file or URI: creates the job record when it does not exist "
                                       "yet (a Job submitted with kubectl alone); needs --kind")
    worker.add_argument("--kind", help="job kind for --spec, e.g. train.run")
    worker.set_defaults(func=cmd_worker)

    jobs = sub.add_parser("jobs", help="list, get, watch or cancel jobs of a service")
    jsub = jobs.add_subparsers(dest="action", required=True)
    for action in ("list", "get", "watch", "cancel"):
        q = jsub.add_parser(action)
        if action == "list":
            q.add_argument("--service", choices=available("service"), help="default: every service")
            q.add_argument("--state", default="", help="QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED")
            q.add_argument("--kind", default="")
            q.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
            q.add_argument("--limit", type=int, default=50, help="jobs per service, newest first")
        else:
            q.add_argument("job_id")
            q.add_argument("--service", help="default: from the job id's prefix")
        q.add_argument("--endpoint")
        q.add_argument("--token")
        q.set_defaults(func=cmd_jobs)

    up = sub.add_parser("up", help="start the local stack: object store + services on loopback")
    up.add_argument("--base-port", type=int, default=None, help="ports base, base+1, ... instead of the defaults")
    up.add_argument("--services", default="", help="comma-separated subset (default: all)")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop what `vidtune up` started")
    down.set_defaults(func=cmd_down)
    from vidtune.console.app import register as register_console

    register_console(sub)

    store = sub.add_parser("store", help="list and copy objects (s3:// URIs or local paths), as the services see them")
    ssub = store.add_subparsers(dest="action", required=True)
    ls = ssub.add_parser("ls", help="every object below a prefix, with its size")
    ls.add_argument("prefix")
    ls.set_defaults(func=cmd_store)
    cp = ssub.add_parser("cp", help="copy a file or a whole directory/prefix (recursively) to another place")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_store)

    health = sub.add_parser("health", help="check a service's grpc.health.v1 status (exit 0 when SERVING)")
    health.add_argument("--port", type=int, required=True)
    health.add_argument("--host", default="127.0.0.1")
    health.add_argument("--service-name", default="")
    health.set_defaults(func=cmd_health)
    return parser


def cmd_serve(args) -> int:
    from vidtune.platform.server import DEFAULT_PORTS, Server, load_token, setup_logging
    from vidtune.registry import module

    setup_logging(os.environ.get("VIDTUNE_LOG_LEVEL", "INFO"))
    definition = module(args.service, "service").definition(job_workers=args.job_workers)
    server = Server(definition, args.port or DEFAULT_PORTS[args.service], host=args.host, token=load_token())
    server.serve_until_signal(grace=float(os.environ.get("VIDTUNE_STOP_GRACE", "10")))
    return 0


def worker_rank() -> int:
    """This process's rank under torchrun (RANK), 0 when run alone."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        raise InvalidArgument(f"RANK={os.environ['RANK']!r} is not a number") from None


def cmd_worker(args) -> int:
    """Run one job record to its end in this process (a Kubernetes Job's pod, or a local subprocess).

    Rank 0 takes the record's lease (waiting for a dead predecessor's to expire) and is its only writer;
    under torchrun the other ranks run the same handler on a private copy. SIGTERM hands the job back
    (exit 75, so a Job's retry picks it up) instead of failing it.
    """
    import signal
    import tempfile
    import time
    from pathlib import Path

    from vidtune.platform.jobs import (HANDED_BACK_EXIT_CODE, QUEUED, SUCCEEDED, TERMINAL, JobContext, JobStore,
                                       StopSignal, acquire, execute, lease_alive)
    from vidtune.platform.access import service_policy
    from vidtune.platform.server import setup_logging
    from vidtune.platform.settings import jobs_root
    from vidtune.platform.storage import Storage
    from vidtune.registry import module

    setup_logging(os.environ.get("VIDTUNE_LOG_LEVEL", "INFO"))
    rank = worker_rank()
    storage = Storage(policy=service_policy())
    store = JobStore(storage, jobs_root(), args.service)
    try:
        record = store.load(args.job_id)
    except NotFound:
        if not args.spec:
            raise
        record = _record_from_spec(storage, store, args, create=rank == 0)
    handlers = module(args.service, "tasks").HANDLERS
    stop = StopSignal()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set("drain"))
    if rank != 0:  # state and progress are rank 0's to report
        with tempfile.TemporaryDirectory(prefix=f"vt-{args.job_id}-") as scratch:
            ctx = JobContext(dict(record, result=dict(record["result"])), storage, store, Path(scratch), stop=stop)
            result = handlers[record["kind"]](ctx) or {}
        print(json.dumps({"id": record["id"], "state": SUCCEEDED, "result": result, "rank": rank},
                         ensure_ascii=False))
        return 0
    lease = None
    while lease is None:
        record = store.load(args.job_id)
        if record["state"] in TERMINAL:
            print(f"job {args.job_id} is already {record['state']}", file=sys.stderr)
            return 0 if record["state"] == SUCCEEDED else 1
        lease = acquire(store, args.job_id)
        if lease is None and lease_alive(store.load(args.job_id)):
            print(f"job {args.job_id} is held by {record['lease']['holder']}; waiting for its lease",
                  file=sys.stderr)
            time.sleep(min(5.0, max(0.5, float(os.environ.get("VIDTUNE_LEASE_SECONDS", "30")) / 3)))
        if stop.reason:
            return HANDED_BACK_EXIT_CODE
    record = execute(lease, handlers[record["kind"]], storage, stop=stop)
    print(json.dumps({"id": record["id"], "state": record["state"], "result": record["result"],
                      "error": record["error"]}, ensure_ascii=False))
    if record["state"] == QUEUED:
        return HANDED_BACK_EXIT_CODE  # handed back: a retry continues it
    return 0 if record["state"] == SUCCEEDED else 1


def _record_from_spec(storage, store, args, create: bool) -> dict:
    """A job record for a Job submitted with kubectl alone: the spec comes from a file or URI. Rank 0
    stores it; the other ranks work from the same record without storing it."""
    import yaml

    from vidtune.platform.errors import Conflict
    from vidtune.platform.jobs import new_record
    from vidtune.platform.storage import Storage
    from vidtune.registry import module

    from vidtune.platform.kinds import by_name

    kinds = by_name(module(args.service, "tasks").KINDS)
    if args.kind not in kinds:
        raise InvalidArgument(f"--kind {args.kind!r} is not a {args.service} job kind; known: {sorted(kinds)}")
    # --spec is the operator's (a mounted ConfigMap or a URI), so it is read outside the job's access policy.
    spec = yaml.safe_load(Storage(storage.config).read_text(args.spec))
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{args.spec}: the spec must be a mapping")
    kinds[args.kind].validate(spec)  # a spec file enters here: validated as a Submit would be
    record = new_record(args.service, args.kind, spec, backend="kubernetes")
    record["id"] = args.job_id
    if not create:
        return record
    try:
        store.create(record)
    except Conflict:  # every rank (or a retried pod) creates it; the first one wins
        return store.load(args.job_id)
    return record


def cmd_jobs(args) -> int:
    """Exit 0 when the call worked (for watch/get: when the job SUCCEEDED or is still under way), 1 when
    the job FAILED or was CANCELLED, 2 when the call itself failed."""
    import grpc

    from vidtune.platform.client import ServiceClient, job_dict, rpc_error_text, watch
    from vidtune.platform.jobs import service_of
    from vidtune.v1 import jobs_pb2

    if args.action == "list":
        return _list_jobs(args)
    service = args.service or service_of(args.job_id)
    if not service:
        print(f"error: cannot tell the service of job {args.job_id!r}; pass --service", file=sys.stderr)
        return 2
    with ServiceClient(service, args.endpoint, args.token) as c:
        try:
            if args.action == "watch":
                job = watch(c, args.job_id)
            elif args.action == "cancel":
                job = c.jobs().CancelJob(jobs_pb2.CancelJobRequest(id=args.job_id), metadata=c.metadata,
                                         timeout=c.timeout)
            else:
                job = c.jobs().GetJob(jobs_pb2.GetJobRequest(id=args.job_id), metadata=c.metadata, timeout=c.timeout)
        except grpc.RpcError as e:
            print(f"error: {rpc_error_text(e)}", file=sys.stderr)
            return 2
    print(json.dumps(job_dict(job), ensure_ascii=False, indent=2))
    state = jobs_pb2.JobState.Name(job.state)
    if args.action == "cancel":
        return 0 if state in ("CANCELLED", "QUEUED", "RUNNING") else 1
    return 1 if state in ("FAILED", "CANCELLED") else 0


def _list_jobs(args) -> int:
    """One table over every service (or the one named): id, kind, state, progress, the message or error."""
    import grpc

    from vidtune.platform.client import ServiceClient, rpc_error_text
    from vidtune.registry import available
    from vidtune.v1 import jobs_pb2

    try:
        state = jobs_pb2.JobState.Value(args.state.upper()) if args.state else 0
    except ValueError:
        print(f"error: --state {args.state!r} is not one of {', '.join(jobs_pb2.JobState.keys()[1:])}", file=sys.stderr)
        return 2
    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    code = 0
    for service in [args.service] if args.service else available("service"):
        with ServiceClient(service, args.endpoint if args.service else None, args.token) as c:
            try:
                resp = c.jobs().ListJobs(jobs_pb2.ListJobsRequest(kind=args.kind, state=state, labels=labels,
                                                                  page_size=args.limit),
                                         metadata=c.metadata, timeout=c.timeout)
            except grpc.RpcError as e:
                print(f"{service}: {rpc_error_text(e)} ({c.endpoint})", file=sys.stderr)
                code = 2
                continue
        for j in resp.jobs:
            message = j.error.message if j.error.message else j.progress.message
            print(f"{j.id}\t{j.kind}\t{jobs_pb2.JobState.Name(j.state)}\t{j.progress.percent:5.1f}%\t{message}")
    return code


def cmd_up(args) -> int:
    from vidtune.platform import stack

    services = [s for s in args.services.split(",") if s] or None
    state = stack.up(services=services, base_port=args.base_port)
    print(f"object store: {state['s3']['VIDTUNE_S3_ENDPOINT']}")
    for svc, port in state["ports"].items():
        print(f"{svc}: 127.0.0.1:{port}")
    if state.get("console"):
        print(f"console: {state['console']} (log in with the token in {stack.stack_state_path()})")
    print("stop with: vidtune down")
    return 0


def cmd_down(args) -> int:
    from vidtune.platform import stack

    stopped = stack.down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_store(args) -> int:
    from pathlib import Path

    from vidtune.platform.storage import Storage, basename, is_s3, join, normalise

    storage = Storage()
    if args.action == "ls":
        for uri in storage.list(args.prefix):
            print(f"{storage.size(uri):>12,}  {uri}")
        return 0
    # A trailing "/" always means a prefix (some stores answer a stat of "dir/" as if it were an object).
    single = not args.source.endswith("/") and (
        Path(args.source).is_file() if not is_s3(args.source) else storage.exists(args.source))
    base = normalise(args.source).rstrip("/")  # the spelling listings use ("./a/" is listed as "a/...")
    sources = [args.source] if single else list(storage.list(base + "/"))
    if not sources:
        raise NotFound(f"nothing at {args.source}")
    for src in sources:
        dst = (join(args.destination, basename(src)) if args.destination.endswith("/") else args.destination) \
            if single else join(args.destination, src[len(base) + 1:])
        with storage.local_copy(src) as local:
            storage.upload(local, dst)
        print(f"{src} -> {dst}", file=sys.stderr)
    return 0


def cmd_health(args) -> int:
    import grpc

    from vidtune.platform.stack import check_health

    try:
        status = check_health(f"{args.host}:{args.port}", args.service_name)
    except grpc.RpcError as e:
        print(f"{args.host}:{args.port}: {e.code().name}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def _use_local_stack_store() -> None:
    """Commands run in-process reach the local stack's object store when no other is configured."""
    if os.environ.get("VIDTUNE_S3_ENDPOINT"):
        return
    from vidtune.platform.client import stack_state

    for k, v in stack_state().get("s3", {}).items():
        os.environ.setdefault(k, v)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    _use_local_stack_store()
    try:
        return args.func(args)
    except VidtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
