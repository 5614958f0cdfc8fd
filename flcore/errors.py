"""Errors shown to the user as one line, before any training."""

__all__ = ["ConfigError", "ClientFailureError", "DivergedError", "RunInterrupted", "first_line"]


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``err``'s message (at most ``limit`` characters), or its type
    name when the message is empty: how a library's multi-line error enters a one-line message."""
    text = str(err).strip().splitlines()
    return text[0][:limit] if text else type(err).__name__


class ConfigError(ValueError):
    """Invalid configuration or missing input. The message names the field and allowed values."""


class ClientFailureError(RuntimeError):
    """Clients of a round failed and the policy (or all clients failing) ends the run.

    Raised after the last good state was checkpointed; the message names the round, the clients
    and the checkpoint.
    """


class DivergedError(ClientFailureError):
    """The global model turned non-finite (a NaN or infinity in the server state, or a non-finite
    test loss): the run stops with the last good round checkpointed, as for a failed round."""


class RunInterrupted(BaseException):
    """SIGINT / SIGTERM during ``fit``; the last completed round was checkpointed first.

    A ``BaseException`` so that it passes through Lightning's and user code's ``except
    Exception`` handlers. ``signum`` holds the signal number.
    """

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by signal {signum}")
        self.signum = signum
