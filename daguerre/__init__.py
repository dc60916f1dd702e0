"""Daguerre: self-hosted photorealistic image generation for the FLUX.1 model family."""

__version__ = "0.1.0"
