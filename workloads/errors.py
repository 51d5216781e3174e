"""Errors raised by the workloads package."""

from __future__ import annotations

from os import PathLike

__all__ = ["WorkloadError", "TraceError"]


class WorkloadError(ValueError):
    """A workload cannot be built as asked (e.g. a footprint larger than the guest memory)."""


class TraceError(WorkloadError):
    """A trace file is missing, unreadable or not in the expected format.

    Attributes:
        path: the offending file or directory, as a string.
        message: what is wrong with it, without the path.

    ``str(err)`` is ``"{path}: {message}"``. Instances pickle (for process pools).
    """

    def __init__(self, path: str | PathLike[str], message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")

    def __reduce__(self):  # keep (path, message) through pickling
        return (type(self), (self.path, self.message))
