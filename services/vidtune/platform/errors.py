"""Errors that carry a gRPC status code, so cores can say what went wrong without knowing gRPC."""
from __future__ import annotations


class VidtuneError(Exception):
    """Base class; `code` is the name of a grpc.StatusCode."""

    code = "INTERNAL"


class InvalidArgument(VidtuneError, ValueError):
    code = "INVALID_ARGUMENT"


class NotFound(VidtuneError, LookupError):
    code = "NOT_FOUND"


class FailedPrecondition(VidtuneError):
    code = "FAILED_PRECONDITION"


class Unavailable(VidtuneError):
    code = "UNAVAILABLE"


class ResourceExhausted(VidtuneError):
    code = "RESOURCE_EXHAUSTED"


class Conflict(VidtuneError):
    """A conditional write lost: the object changed since it was read (another writer got there first)."""

    code = "ABORTED"


class JobCancelled(VidtuneError):
    code = "CANCELLED"


class JobInterrupted(JobCancelled):
    """The job must stop without ending: the process is draining (SIGTERM) or lost the job's lease.
    Its record goes back to QUEUED (or to the new lease holder), never to FAILED or CANCELLED."""


def status_code_name(exc: BaseException) -> str:
    return exc.code if isinstance(exc, VidtuneError) else "INTERNAL"
