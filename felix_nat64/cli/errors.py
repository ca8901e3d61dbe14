"""Expected errors: printed as one line with what to do, never a traceback."""

from __future__ import annotations

from felix_nat64.cli import exitcodes


class CliError(Exception):
    """An expected failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int = exitcodes.FAILURE) -> None:
        super().__init__(message)
        self.code = code
