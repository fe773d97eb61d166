"""The HTTP front door: `create_app` builds the FastAPI application, `serve` runs it."""

from spillway.api.app import SpillwayAPI, create_app
from spillway.api.serve import serve

__all__ = ["SpillwayAPI", "create_app", "serve"]
