"""The locations a training config names, without importing the trainer (the pipeline checks them when it
reads its file)."""
from __future__ import annotations

from ..models.specs import weight_locations

# Config keys holding one path or URI each (weights has its own shapes: see weight_locations).
PATH_KEYS = ("validation_dataset", "sample_prompts")


def config_locations(config: dict) -> dict[str, list[str]]:
    """Config key -> the paths or URIs it names, for every key that names one."""
    found = {"weights": weight_locations(config.get("weights"))}
    found.update({k: [str(config[k])] for k in PATH_KEYS if config.get(k)})
    return {k: v for k, v in found.items() if v}
