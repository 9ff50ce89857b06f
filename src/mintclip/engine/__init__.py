"""The stream loop, per-sample records, resume, and the results tables."""

from .run import RunConfig, RunError, run

__all__ = ["RunConfig", "RunError", "run"]
