"""TrainService over gRPC: SubmitTrain comes from the job kind's declaration (tasks.KINDS); ListPresets is
answered here; following a job is the JobService."""
from __future__ import annotations

from vidtune.platform.server import ServiceDefinition, job_service, rpc
from vidtune.platform.storage import Storage
from vidtune.v1 import train_pb2, train_pb2_grpc

from .presets import describe_presets
from .tasks import KINDS


class TrainServicer(train_pb2_grpc.TrainServiceServicer):
    @rpc
    def ListPresets(self, request, context):
        return train_pb2.ListPresetsResponse(presets=[
            train_pb2.Preset(name=p["name"], model=p["model"], size=p["size"], precision=p["precision"],
                             deepspeed_stage=p["deepspeed_stage"], gpus=p["gpus"],
                             memory_per_gpu_gb=p["memory_per_gpu_gb"], notes=p["notes"])
            for p in describe_presets()])


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    return job_service("train", KINDS, TrainServicer, train_pb2_grpc.add_TrainServiceServicer_to_server,
                       train_pb2.DESCRIPTOR.services_by_name["TrainService"], storage, job_workers)
