"""The package version, importable without the rest of chexcut."""

__version__ = "0.1.0"
