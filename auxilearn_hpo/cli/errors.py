"""What every ``auxilearn-hpo`` command shares: the one-line error and the exit statuses."""
from __future__ import annotations

__all__ = ["UsageError", "INTERRUPTED", "USAGE", "one_line"]

#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130
#: Exit status for bad input: a flag, a run folder, a missing extra.
USAGE = 2


class UsageError(Exception):
    """Bad command-line input or an unusable run folder; printed as one line without a traceback."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at ``limit`` characters."""
    return " ".join(str(err).split())[:limit]
