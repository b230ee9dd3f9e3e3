"""flyaway: move GPU inference services off Fly.io as one durable Temporal workflow."""

__version__ = "0.1.0"
