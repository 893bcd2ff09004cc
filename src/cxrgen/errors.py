"""Errors a user sees as one clear line (the stage scripts print them without a traceback)."""

from __future__ import annotations

from pathlib import Path


class CxrgenError(Exception):
    """Base class: the message is meant for the user, as is."""


class BadInput(CxrgenError):
    """A file the user (or a server) gave us is unusable; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SourceUnavailable(CxrgenError):
    """A download source could not deliver (no network, no peer, missing path); try the next one."""


class ScoringInputError(CxrgenError, ValueError):
    """Texts or label matrices that cannot be scored (the message says which and why)."""


class Unusable(ValueError):
    """One input (a report file, an image) that is skipped, not fatal: `reason` is short and fixed,
    because inputs are counted by it; `detail` says what exactly was wrong with this one."""

    def __init__(self, reason: str, detail: str | None = None):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason} ({detail})" if detail else reason)
