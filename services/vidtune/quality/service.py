"""QualityService over gRPC: validate each request, submit its job; everything else is the JobService."""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobManager
from vidtune.platform.server import ServiceDefinition, job_service, proto_to_dict, record_to_proto, rpc
from vidtune.platform.storage import Storage, require_object_uris
from vidtune.v1 import quality_pb2, quality_pb2_grpc

from .tasks import HANDLERS, spec_errors

# Spec fields that name storage locations: a remote caller may only point them at the object store.
LOCATIONS = ("source", "store", "root", "mapping", "rules", "output", "report", "cache", "tokenizer", "transcoded")


class QualityServicer(quality_pb2_grpc.QualityServiceServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    def _submit(self, kind: str, request):
        spec = proto_to_dict(request)
        errors = spec_errors(kind, spec)
        if errors:
            raise InvalidArgument("; ".join(errors))
        for name in LOCATIONS:
            if spec.get(name):
                require_object_uris(spec[name], name)
        return record_to_proto(self.manager.submit(kind, spec))

    @rpc
    def SubmitIngest(self, request, context):
        return self._submit("quality.ingest", request)

    @rpc
    def SubmitProbe(self, request, context):
        return self._submit("quality.probe", request)

    @rpc
    def SubmitFilter(self, request, context):
        if request.rules_yaml:
            from .rules import parse_rules

            parse_rules(request.rules_yaml, "rules_yaml")  # a bad rules file fails the call, not the job
        return self._submit("quality.filter", request)

    @rpc
    def SubmitStats(self, request, context):
        return self._submit("quality.stats", request)

    @rpc
    def SubmitSplit(self, request, context):
        return self._submit("quality.split", request)

    @rpc
    def SubmitSubset(self, request, context):
        if request.proportions and sum(request.proportions.values()) > 1.0 + 1e-6:
            raise InvalidArgument("proportions: must sum to at most 1")
        return self._submit("quality.subset", request)

    @rpc
    def SubmitExport(self, request, context):
        return self._submit("quality.export", request)

    @rpc
    def SubmitRun(self, request, context):
        return self._submit("quality.run", request)


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("quality", HANDLERS, QualityServicer, quality_pb2_grpc.add_QualityServiceServicer_to_server,
                       quality_pb2.DESCRIPTOR.services_by_name["QualityService"], storage, job_workers)
