"""Documented errors of the training side."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of the errors raised by ``training``."""


class DatasetError(TrainingError):
    """A dataset directory or metadata file that cannot be used (the message says why)."""


class CacheError(TrainingError):
    """A feature cache that is missing, incomplete or built with other features."""


class MetricError(TrainingError, ValueError):
    """Inputs a metric cannot be computed on (shapes, no positives at all, NaN scores)."""
