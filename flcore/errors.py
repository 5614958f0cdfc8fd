"""Errors shown to the user as one line, before any training."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Invalid configuration or missing input. The message names the field and allowed values."""
