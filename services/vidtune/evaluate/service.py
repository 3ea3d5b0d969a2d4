"""EvaluateService over gRPC: its Submit RPCs come from the job kinds' declarations (tasks.KINDS); everything
else is the JobService.

A request's `backend` picks where the job runs: the service's own threads (default), a local
`vidtune worker` subprocess, or a Kubernetes Job (generation on a GPU node, scoring and comparison on any).
"""
from __future__ import annotations

from vidtune.platform.server import ServiceDefinition, job_service
from vidtune.platform.storage import Storage
from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

from .tasks import KINDS


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("evaluate", KINDS, evaluate_pb2_grpc.EvaluateServiceServicer,
                       evaluate_pb2_grpc.add_EvaluateServiceServicer_to_server,
                       evaluate_pb2.DESCRIPTOR.services_by_name["EvaluateService"], storage, job_workers)
