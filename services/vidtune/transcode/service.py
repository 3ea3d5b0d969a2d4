"""TranscodeService over gRPC: validate the request, submit a job; everything else is the JobService."""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobManager
from vidtune.platform.server import ServiceDefinition, job_service, proto_to_dict, record_to_proto, rpc
from vidtune.platform.storage import Storage, require_object_uris
from vidtune.v1 import transcode_pb2, transcode_pb2_grpc

from .profiles import get_profile
from .tasks import HANDLERS, batch_spec_errors


class TranscodeServicer(transcode_pb2_grpc.TranscodeServiceServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    @rpc
    def SubmitTranscode(self, request, context):
        spec = proto_to_dict(request)
        errors = batch_spec_errors(spec)
        if errors:
            raise InvalidArgument("; ".join(errors))
        require_object_uris(spec["inputs"], "inputs")
        require_object_uris([spec["output"], spec.get("report", "")], "output")
        get_profile(spec["profile"] or "wan-720p", spec["fps"] or None, spec["max_duration"] or None)
        return record_to_proto(self.manager.submit("transcode.batch", spec))


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("transcode", HANDLERS, TranscodeServicer,
                       transcode_pb2_grpc.add_TranscodeServiceServicer_to_server,
                       transcode_pb2.DESCRIPTOR.services_by_name["TranscodeService"], storage, job_workers)
