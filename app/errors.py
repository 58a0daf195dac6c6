"""Errors split by whether a retry can help."""

from __future__ import annotations


class AsrqError(Exception):
    """Base of every error asrq raises on purpose; the message is safe to show a user."""


class TransientError(AsrqError):
    """A retry can help: a service is down or busy. Retried with capped exponential backoff."""


class PermanentError(AsrqError):
    """A retry cannot help: bad input or a bad request. The job fails at once with this reason."""


class BadAudio(PermanentError):
    """The input cannot be decoded as audio."""


class BadSource(PermanentError):
    """The source URI is malformed, forbidden or unreachable for good."""


class ModelUnavailable(PermanentError):
    """The model a job names cannot be loaded on this worker (not installed, unknown or corrupt)."""


class ModelNotInstalled(BadSource):
    """At submission: the job names a model this deployment does not have. A BadSource, so the API answers
    422 like any other request naming something that cannot be processed; the message lists what is
    installed (app.catalog.models.missing_model_reason)."""


class TooManyQueued(AsrqError):
    """At submission: the tenant already has ASRQ_MAX_QUEUED_JOBS_PER_TENANT jobs unfinished. The API
    answers 429 with Retry-After; nothing was stored."""
