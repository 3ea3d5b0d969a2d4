"""Transcoding: archive media to model-ready clips on a fixed canvas (aspect kept, black padding)."""
