"""The exceptions edgec raises. The CLI maps them to exit codes in one place (cli.EXIT_CODES)."""
from __future__ import annotations


class EdgecError(Exception):
    """Base class: every error edgec raises on purpose. Its message says what to do next."""

    exit_code = 1


class ConfigError(EdgecError):
    """Bad user input: a model file, a target name, a shape, a flag. Exit code 2."""

    exit_code = 2


class BackendUnavailable(EdgecError):
    """A backend SDK or a device is missing or unreachable. Exit code 3."""

    exit_code = 3


class PassError(EdgecError):
    """A graph pass failed on this model. Exit code 1."""


class BuildError(EdgecError):
    """A backend failed to build or run the model. Exit code 1."""


def brief(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters, for wrapping in an EdgecError."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
