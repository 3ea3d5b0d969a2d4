"""The console's view of the services: their JobService (list, get, watch, cancel) and their Submit RPCs,
over grpc.aio so a live stream holds no thread. The Submit forms are built from the request messages'
descriptors, so a field added to a .proto appears in the console without a change here."""
from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from vidtune.platform.client import TERMINAL_STATES, endpoint_for, token
from vidtune.registry import SERVICES


def job_record(job) -> dict:
    """A Job message as the plain dict the pages and the event stream use (state names, ETA, error)."""
    rec = json_format.MessageToDict(job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    p = rec.get("progress") or {}
    rec["progress"] = {"done": int(p.get("done", 0)), "total": int(p.get("total", 0)),
                       "percent": float(p.get("percent", 0.0)), "eta_seconds": float(p.get("eta_seconds", -1)),
                       "message": p.get("message", "")}
    rec["terminal"] = rec.get("state") in TERMINAL_STATES
    return rec


@dataclass
class SubmitMethod:
    service: str
    name: str            # e.g. SubmitTranscode
    path: str            # the gRPC method path
    request_cls: type

    def fields(self) -> list[dict]:
        """Form fields: name, kind (text | block | lines | int | float | bool | map), item (a list's values)."""
        out = []
        for f in self.request_cls.DESCRIPTOR.fields:
            item = _scalar_kind(f)
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                kind = "map"
            elif _is_repeated(f):
                kind = "lines"
            elif f.name.endswith("_yaml"):
                kind = "block"     # a YAML document: several lines, kept as typed
            else:
                kind = item
            out.append({"name": f.name, "kind": kind, "item": item})
        return out

    def request(self, form: dict[str, str]):
        """The request message from form values; a value that does not parse names its field."""
        msg = self.request_cls()
        for field in self.fields():
            name, kind = field["name"], field["kind"]
            raw = (form.get(name) or "").replace("\r\n", "\n")  # browsers send textarea lines with CRLF
            raw = raw if kind == "block" else raw.strip()
            if kind == "bool":
                setattr(msg, name, raw in ("on", "1", "true", "yes"))
            elif not raw:
                continue
            elif kind == "lines":
                values = [x.strip() for x in raw.replace(",", "\n").splitlines() if x.strip()]
                getattr(msg, name).extend(_parse(name, field["item"], v) for v in values)
            elif kind == "map":
                target = getattr(msg, name)
                for line in raw.splitlines():
                    key, sep, value = line.partition("=")
                    if not sep:
                        raise ValueError(f"{name}: '{line}' is not key=value")
                    target[key.strip()] = _parse(name, "float", value.strip())
            else:
                setattr(msg, name, _parse(name, kind, raw))
        return msg


def _scalar_kind(f) -> str:
    if f.type == FieldDescriptor.TYPE_BOOL:
        return "bool"
    if f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        return "int"
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return "float"
    return "text"


def _parse(name: str, kind: str, raw: str):
    try:
        return int(raw) if kind == "int" else float(raw) if kind == "float" else raw
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a{'n integer' if kind == 'int' else ' number'}") from None


def _is_repeated(f) -> bool:
    try:
        return bool(f.is_repeated)
    except AttributeError:  # protobuf before 5.x
        return f.label == FieldDescriptor.LABEL_REPEATED


def submit_methods(service: str) -> list[SubmitMethod]:
    module = importlib.import_module(f"vidtune.v1.{service}_pb2")
    out = []
    for svc in module.DESCRIPTOR.services_by_name.values():
        for m in svc.methods:
            if m.name.startswith("Submit"):
                out.append(SubmitMethod(service, m.name, f"/{svc.full_name}/{m.name}",
                                        getattr(module, m.input_type.name)))
    return out


class Gateway:
    """One grpc.aio channel per service, the bearer token every call carries."""

    def __init__(self, services: list[str] | None = None, endpoints: dict[str, str] | None = None,
                 bearer: str | None = None, timeout: float = 10.0):
        self.services = list(services or SERVICES)
        self.endpoints = {s: (endpoints or {}).get(s) or endpoint_for(s) for s in self.services}
        t = bearer or token()
        self.metadata = (("authorization", f"Bearer {t}"),) if t else ()
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self.endpoints:
            raise KeyError(f"unknown service {service!r}")
        if service not in self._channels:
            self._channels[service] = grpc.aio.insecure_channel(self.endpoints[service])
        return self._channels[service]

    def _jobs(self, service: str):
        from vidtune.v1 import jobs_pb2_grpc

        return jobs_pb2_grpc.JobServiceStub(self.channel(service))

    async def list_jobs(self, service: str, limit: int = 200) -> list[dict]:
        from vidtune.v1 import jobs_pb2

        out, page = [], ""
        while len(out) < limit:
            resp = await self._jobs(service).ListJobs(jobs_pb2.ListJobsRequest(page_size=min(100, limit - len(out)),
                                                                               page_token=page),
                                                      metadata=self.metadata, timeout=self.timeout)
            out += [job_record(j) for j in resp.jobs]
            page = resp.next_page_token
            if not page:
                break
        return out

    async def all_jobs(self, limit: int = 200) -> tuple[list[dict], dict[str, str]]:
        """Every service's jobs, newest first, and the services that did not answer (with the reason)."""
        results = await asyncio.gather(*(self.list_jobs(s, limit) for s in self.services), return_exceptions=True)
        jobs, down = [], {}
        for svc, res in zip(self.services, results):
            if isinstance(res, BaseException):
                down[svc] = _error_text(res)
            else:
                jobs += res
        jobs.sort(key=lambda j: j.get("created", ""), reverse=True)
        return jobs, down

    async def get_job(self, service: str, job_id: str) -> dict:
        from vidtune.v1 import jobs_pb2

        job = await self._jobs(service).GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=self.metadata,
                                               timeout=self.timeout)
        return job_record(job)

    async def watch(self, service: str, job_id: str):
        """Each change of the job until it ends (the WatchJob stream)."""
        from vidtune.v1 import jobs_pb2

        call = self._jobs(service).WatchJob(jobs_pb2.WatchJobRequest(id=job_id), metadata=self.metadata)
        try:
            async for job in call:
                yield job_record(job)
        finally:
            call.cancel()

    async def cancel(self, service: str, job_id: str) -> dict:
        from vidtune.v1 import jobs_pb2

        job = await self._jobs(service).CancelJob(jobs_pb2.CancelJobRequest(id=job_id), metadata=self.metadata,
                                                  timeout=self.timeout)
        return job_record(job)

    async def submit(self, method: SubmitMethod, form: dict[str, str]) -> dict:
        from vidtune.v1 import jobs_pb2

        call = self.channel(method.service).unary_unary(method.path,
                                                        request_serializer=lambda m: m.SerializeToString(),
                                                        response_deserializer=jobs_pb2.Job.FromString)
        job = await call(method.request(form), metadata=self.metadata, timeout=self.timeout)
        return job_record(job)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


def _error_text(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"
