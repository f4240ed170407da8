"""Wyoming protocol server for the Bark text-to-audio model."""

__version__ = "0.1.0"
