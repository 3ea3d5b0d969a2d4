"""QualityService over gRPC: its Submit RPCs come from the job kinds' declarations (tasks.KINDS); everything
else is the JobService."""
from __future__ import annotations

from vidtune.platform.server import ServiceDefinition, job_service
from vidtune.platform.storage import Storage
from vidtune.v1 import quality_pb2, quality_pb2_grpc

from .tasks import KINDS


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("quality", KINDS, quality_pb2_grpc.QualityServiceServicer,
                       quality_pb2_grpc.add_QualityServiceServicer_to_server,
                       quality_pb2.DESCRIPTOR.services_by_name["QualityService"], storage, job_workers)
