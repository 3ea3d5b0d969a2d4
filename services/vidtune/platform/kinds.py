"""One declaration per kind of job.

A service's tasks.py lists its `KINDS`: for each, the name, the handler (the pure core call), the Submit RPC
that starts it, the spec fields it requires and the ones that name storage locations, further checks, and
where a worker of that kind runs on a cluster. Everything else is generic over these declarations: the gRPC
servicer (`submit_servicer`), the job manager and `vidtune worker` (`handlers`), the CLI's in-process `run`
(`run_job`), and the launchers (`placement_of`). A spec is validated once, where it enters: a Submit RPC, a
CLI `run`, or a Job started from a spec file.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InvalidArgument
from .jobs import Handler, new_record, run_in_process
from .limits import limits
from .storage import Storage, require_object_uris


@dataclass(frozen=True)
class JobKind:
    name: str                                          # "<service>.<verb>", e.g. "transcode.batch"
    handler: Handler                                   # ctx -> result dict; the spec it sees is validated
    rpc: str = ""                                      # the Submit RPC of the service's proto that starts it
    required: tuple[str, ...] = ()                     # spec fields that must be given (non-empty)
    locations: tuple[str, ...] = ()                    # spec fields naming storage (URIs or paths) it reads/writes
    check: Callable[[dict], list[str]] | None = None   # further problems with a spec, each naming its field
    to_spec: Callable[[object], dict] | None = None    # request message -> spec (default: its fields as a dict)
    placement: Callable[[dict], dict] | None = None    # record -> Kubernetes Job overrides (GPUs, memory, deadline)
    nested_locations: Callable[[dict], dict[str, list[str]]] | None = None  # spec -> locations named inside it

    @property
    def service(self) -> str:
        return self.name.split(".", 1)[0]

    def problems(self, spec: dict) -> list[str]:
        problems = [f"{n}: required" for n in self.required if not spec.get(n)] + limits().spec_problems(spec)
        if not problems and self.check is not None:
            problems += self.check(spec)
        return problems

    def validate(self, spec: dict) -> dict:
        """The spec, or InvalidArgument listing every problem at once."""
        problems = self.problems(spec)
        if problems:
            raise InvalidArgument(f"{self.name}: " + "; ".join(problems))
        return spec

    def check_locations(self, spec: dict) -> None:
        """A remote caller may point location fields only at the object store (unless local paths are allowed)."""
        for name in self.locations:
            value = spec.get(name)
            if value:
                require_object_uris(value if isinstance(value, (list, tuple)) else [value], name)
        for name, values in (self.nested_locations(spec) if self.nested_locations else {}).items():
            require_object_uris(values, name)


def handlers(kinds: list[JobKind]) -> dict[str, Handler]:
    return {k.name: k.handler for k in kinds}


def by_name(kinds: list[JobKind]) -> dict[str, JobKind]:
    return {k.name: k for k in kinds}


def placement_of(kinds: list[JobKind]) -> Callable[[dict], dict]:
    """The launchers' placement: each record placed by its own kind's declaration (no GPU by default)."""
    table = by_name(kinds)

    def place(record: dict) -> dict:
        kind = table.get(record["kind"])
        if kind is None:
            raise InvalidArgument(f"no job kind {record['kind']!r}")
        return kind.placement(record) if kind.placement else {"gpus": 0}

    return place


def submit_servicer(base: type, kinds: list[JobKind]) -> type:
    """A servicer class over `base` (the generated gRPC servicer, or a subclass adding other RPCs) with one
    method per kind's Submit RPC: request -> spec -> validated -> locations checked -> submitted."""
    from .launchers import choose_backend
    from .server import proto_to_dict, record_to_proto, rpc

    def method_for(kind: JobKind):
        def submit(self, request, context):
            spec = (kind.to_spec or proto_to_dict)(request)
            backend = choose_backend(spec.pop("backend", "") or "", self.manager.launchers)
            kind.validate(spec)
            kind.check_locations(spec)
            return record_to_proto(self.manager.submit(kind.name, spec, backend=backend))

        submit.__name__ = kind.rpc
        submit.__doc__ = f"Submit a {kind.name} job."
        return rpc(submit)

    def __init__(self, manager):
        self.manager = manager

    namespace = {"__init__": __init__, **{k.rpc: method_for(k) for k in kinds if k.rpc}}
    return type(f"{base.__name__}Jobs", (base,), namespace)


def run_job(kind: JobKind, spec: dict, progress: Callable[[int, int, str], None] = lambda d, t, m: None,
            storage: Storage | None = None) -> dict:
    """A CLI `run`: the same validation and handler as a service job, in this process, without a record."""
    kind.validate(spec)
    with tempfile.TemporaryDirectory(prefix=f"vt-{kind.service}-") as scratch:
        return run_in_process(new_record(kind.service, kind.name, spec), kind.handler, storage or Storage(),
                              Path(scratch), progress)
