"""TrainService over gRPC: validate the request, submit a training job; following it is the JobService."""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobManager
from vidtune.platform.launchers import choose_backend
from vidtune.platform.server import ServiceDefinition, job_service, record_to_proto, rpc
from vidtune.models.loading import weight_locations
from vidtune.platform.storage import Storage, require_object_uris
from vidtune.v1 import train_pb2, train_pb2_grpc

from .presets import describe_presets
from .tasks import HANDLERS, config_of, spec_errors


def request_spec(request) -> dict:
    """The job spec of a TrainRequest (typed numbers, empty fields left out)."""
    spec = {"preset": request.preset, "config": request.config_yaml, "dataset": request.dataset,
            "output": request.output, "max_steps": int(request.max_steps), "timeout_s": int(request.timeout_s)}
    return {k: v for k, v in spec.items() if v not in ("", 0)}


class TrainServicer(train_pb2_grpc.TrainServiceServicer):
    def __init__(self, manager: JobManager):
        self.manager = manager

    @rpc
    def SubmitTrain(self, request, context):
        spec = request_spec(request)
        errors = spec_errors(spec)
        if errors:
            raise InvalidArgument("; ".join(errors))
        require_object_uris([spec["dataset"], spec["output"]], "dataset/output")
        cfg = config_of(spec)  # a bad config fails here, not in the job
        require_object_uris(weight_locations(cfg.weights), "config weights")
        backend = choose_backend(request.backend, self.manager.launchers)
        return record_to_proto(self.manager.submit("train.run", spec, backend=backend))

    @rpc
    def ListPresets(self, request, context):
        return train_pb2.ListPresetsResponse(presets=[
            train_pb2.Preset(name=p["name"], model=p["model"], size=p["size"], precision=p["precision"],
                             deepspeed_stage=p["deepspeed_stage"], gpus=p["gpus"],
                             memory_per_gpu_gb=p["memory_per_gpu_gb"], notes=p["notes"])
            for p in describe_presets()])


def definition(storage: Storage | None = None, job_workers: int = 1) -> ServiceDefinition:
    from .placement import training_placement

    return job_service("train", HANDLERS, TrainServicer, train_pb2_grpc.add_TrainServiceServicer_to_server,
                       train_pb2.DESCRIPTOR.services_by_name["TrainService"], storage, job_workers,
                       placement=training_placement)
