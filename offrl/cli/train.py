"""`offrl train` (placeholder until its issue lands: registers nothing)."""

from __future__ import annotations


def register(subparsers) -> None:  # noqa: ANN001
    return None
