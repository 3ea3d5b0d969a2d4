"""The services vidtune is made of. Each is a package with the same shape: tasks.KINDS (one declaration per
job kind, see platform/kinds.py), service.definition() (the gRPC servicers, generic over the kinds) and
cli.register() (its `vidtune <name> ...` commands).
Imports are lazy so a command pays only for the service it uses (training pulls in torch)."""
from __future__ import annotations

import importlib
import importlib.util

SERVICES = ("transcode", "quality", "train", "evaluate")


def module(service: str, part: str):
    if service not in SERVICES:
        from vidtune.platform.errors import InvalidArgument

        raise InvalidArgument(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return importlib.import_module(f"vidtune.{service}.{part}")


def available(part: str) -> list[str]:
    """Services whose `part` module exists in this installation."""
    return [s for s in SERVICES if importlib.util.find_spec(f"vidtune.{s}") is not None
            and importlib.util.find_spec(f"vidtune.{s}.{part}") is not None]
