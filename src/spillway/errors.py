"""Every error Spillway raises derives from :class:`SpillwayError`."""

__all__ = ["EmbeddedRedisError", "SpillwayError"]


class SpillwayError(Exception):
    """Base of every Spillway error."""


class EmbeddedRedisError(SpillwayError):
    """The embedded redis-server could not be found or started."""
