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
