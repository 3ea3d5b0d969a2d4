"""EvaluateService over gRPC: validate the request, submit a job; everything else is the JobService.

A request's `backend` picks where the job runs: the service's own threads (default), a local
`vidtune worker` subprocess, or a Kubernetes Job (generation on a GPU node, scoring and comparison on any).
"""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobManager
from vidtune.platform.launchers import choose_backend, timeout_of
from vidtune.platform.server import ServiceDefinition, job_service, proto_to_dict, record_to_proto, rpc
from vidtune.platform.storage import Storage, require_object_uris
from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

from .tasks import HANDLERS, spec_errors

GPU_KINDS = ("evaluate.generate",)


def evaluate_placement(record: dict) -> dict:
    """JobSpec overrides of an evaluation record: one GPU for generation (one pipeline on one device),
    none for scoring and comparison."""
    return {"gpus": 1 if record["kind"] in GPU_KINDS else 0,
            "active_deadline_seconds": int(timeout_of(record["spec"]))}


class EvaluateServicer(evaluate_pb2_grpc.EvaluateServiceServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    def _submit(self, kind: str, request, uri_fields: list[str]):
        spec = proto_to_dict(request)
        backend = choose_backend(spec.pop("backend", ""), self.manager.launchers)
        errors = spec_errors(kind, spec)
        if errors:
            raise InvalidArgument("; ".join(errors))
        for name in uri_fields:
            value = spec.get(name)
            require_object_uris(value if isinstance(value, list) else [value or ""], name)
        if backend == "kubernetes" and kind in GPU_KINDS:
            spec.setdefault("device", "cuda")  # the pod sits on a GPU node: use it
        return record_to_proto(self.manager.submit(kind, spec, backend=backend))

    @rpc
    def SubmitGenerate(self, request, context):
        # Checkpoints may be the word "base"; every other entry must be an object URI.
        require_object_uris([c.split("=", 1)[-1] for c in request.checkpoints if c != "base"], "checkpoints")
        return self._submit("evaluate.generate", request, ["prompts", "output", "weights"])

    @rpc
    def SubmitScore(self, request, context):
        return self._submit("evaluate.score", request,
                            ["videos", "output", "prompts", "clip_weights", "i3d", "reference", "grades"])

    @rpc
    def SubmitCompare(self, request, context):
        return self._submit("evaluate.compare", request, ["scores", "output", "grades"])


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("evaluate", HANDLERS, EvaluateServicer, evaluate_pb2_grpc.add_EvaluateServiceServicer_to_server,
                       evaluate_pb2.DESCRIPTOR.services_by_name["EvaluateService"], storage, job_workers,
                       placement=evaluate_placement)
