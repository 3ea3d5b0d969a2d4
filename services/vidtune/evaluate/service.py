"""EvaluateService over gRPC: validate the request, submit a job; everything else is the JobService."""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobManager
from vidtune.platform.server import ServiceDefinition, proto_to_dict, record_to_proto, rpc
from vidtune.platform.settings import jobs_root
from vidtune.platform.storage import Storage, require_object_uris
from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

from .tasks import HANDLERS, spec_errors


class EvaluateServicer(evaluate_pb2_grpc.EvaluateServiceServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    def _submit(self, kind: str, request, uri_fields: list[str]):
        spec = proto_to_dict(request)
        errors = spec_errors(kind, spec)
        if errors:
            raise InvalidArgument("; ".join(errors))
        for name in uri_fields:
            value = spec.get(name)
            require_object_uris(value if isinstance(value, list) else [value or ""], name)
        return record_to_proto(self.manager.submit(kind, spec))

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
    manager = JobManager("evaluate", storage or Storage(), jobs_root(), HANDLERS, workers=job_workers)
    return ServiceDefinition(
        name="evaluate",
        servicers=[(evaluate_pb2_grpc.add_EvaluateServiceServicer_to_server, EvaluateServicer(manager))],
        proto_services=[evaluate_pb2.DESCRIPTOR.services_by_name["EvaluateService"].full_name],
        manager=manager)
