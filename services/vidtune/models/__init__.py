"""Wan2.x model specs, tiny random stand-ins and pipeline loading shared by training and evaluation."""
from __future__ import annotations

from .specs import ModelSpec, ComponentSpec, SPECS, get_spec  # noqa: F401
