"""The training service: Wan2.x LoRA training with DiffSynth, locally and as Kubernetes Jobs."""
