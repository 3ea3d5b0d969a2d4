"""TranscodeService over gRPC: its Submit RPC comes from the job kind's declaration (tasks.KINDS); everything
else is the JobService."""
from __future__ import annotations

from vidtune.platform.server import ServiceDefinition, job_service
from vidtune.platform.storage import Storage
from vidtune.v1 import transcode_pb2, transcode_pb2_grpc

from .tasks import KINDS


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("transcode", KINDS, transcode_pb2_grpc.TranscodeServiceServicer,
                       transcode_pb2_grpc.add_TranscodeServiceServicer_to_server,
                       transcode_pb2.DESCRIPTOR.services_by_name["TranscodeService"], storage, job_workers)
