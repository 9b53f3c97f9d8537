"""Converters between the ecosystem's checkpoints (diffusers, transformers, CompVis) and our params."""
