"""Errors a user can fix: the ``farslip`` command prints them as one line and exits with status 2.

Raise a :class:`FarslipError` (or a subclass) for anything caused by the user's input or options -- a missing or
unreadable file, a bad value, a checkpoint that is not one -- with a message that names the file, record or option.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class FarslipError(Exception):
    """A problem with the user's input or options; the message says what and where, in one line."""

    exit_code = 2


class UsageError(FarslipError, ValueError):
    """An option or argument that cannot be used as given (also a ValueError, for API callers)."""


def user_error_message(exc: BaseException) -> str | None:
    """The one line to show for an exception caused by the user's input, or None for a bug (keep the traceback).

    farslip's own errors carry their message; a missing, unreadable or mistyped path (``OSError`` with a file
    name) and a YAML syntax error are named by file and position."""
    if isinstance(exc, FarslipError):
        return one_line(str(exc))
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
        return one_line(str(exc)) if exc.args else None
    yaml_error = _yaml_error_message(exc)
    if yaml_error:
        return yaml_error
    return None


def _yaml_error_message(exc: BaseException) -> str | None:
    try:
        import yaml
    except ImportError:  # pragma: no cover - yaml is a dependency
        return None
    if not isinstance(exc, yaml.YAMLError):
        return None
    mark = getattr(exc, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "YAML"
    problem = getattr(exc, "problem", None) or str(exc)
    return one_line(f"{where}: YAML syntax error: {problem}")


def one_line(text: str) -> str:
    """``text`` with its lines joined, so an error is always one line on the terminal."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
