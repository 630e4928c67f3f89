"""The exceptions edgec raises, each with its exit code: 2 the input (model, data, flags) can't be compiled as
asked, 3 a backend or device is missing or can't build it, 4 the build fails its accuracy check. Exit 1 is
left for bugs (anything else)."""
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
    """A graph pass can't handle this model (its message names the node and what to try). Exit code 2."""

    exit_code = 2


class BuildError(EdgecError):
    """A backend could not build or run this model (its message names the node or op and a target or option
    that can). Exit code 3."""

    exit_code = 3


class AccuracyCheckFailed(EdgecError):
    """A build's outputs disagree with the fp32 reference beyond its criterion: the compile (or the on-device
    check of `edgec profile`) failed. Exit code 4. `profile` holds the on-device profile when there is one."""

    exit_code = 4

    def __init__(self, message: str, profile: object = None):
        super().__init__(message)
        self.profile = profile


def brief(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters, for wrapping in an EdgecError."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
