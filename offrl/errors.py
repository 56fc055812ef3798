"""Errors that are the user's to fix.

A :class:`UserError` carries one line that names the file or option at fault and what to do about it.
The CLI prints it to stderr and exits with status 2, without a traceback. Internal bugs raise anything
else and keep their traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["UserError", "did_you_mean", "root_cause_line"]


class UserError(Exception):
    """A mistake in the user's input (a file, an option, a config value): one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line: the CLI promises a single line per error.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


def did_you_mean(word: str, choices: Iterable[str], n: int = 2) -> str:
    """``" (did you mean 'cql.min_q_weight'?)"`` for the closest valid names (empty when none is close).
    A dotted key is also matched on its last part, so ``cql.min_q_weigth`` finds ``cql.min_q_weight`` and
    ``min_q_weight`` finds it under its section."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    if not close:
        tail = word.rsplit(".", 1)[-1]
        close = [c for c in choices if c.rsplit(".", 1)[-1] in difflib.get_close_matches(
            tail, [c.rsplit(".", 1)[-1] for c in choices], n=n, cutoff=0.8)][:n]
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def root_cause_line(err: BaseException) -> str:
    """The first line of the innermost cause of ``err``: what a one-line error should quote (tensordict
    wraps a parameter size mismatch in one ValueError per nesting level, each printing whole dicts)."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    return (str(root).splitlines() or [type(root).__name__])[0]
