"""The root of every error adasde raises for something the user can fix (docs/ARCHITECTURE.md, "Errors").

``adasde.cli.main`` catches :class:`AdasdeError` once, prints its message as one line and exits with status 2; any
other exception is a bug and keeps its traceback.  Subclasses also derive from the built-in type callers already
expect (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class AdasdeError(Exception):
    """A mistake in the user's input, files or settings; the message names the value or file and the fix."""


class UsageError(AdasdeError, ValueError):
    """A bad argument value (a flag, a setting, a seed list)."""


class InputFileError(AdasdeError, ValueError):
    """A file or folder the user named is missing, unreadable, of the wrong kind or unwritable."""
