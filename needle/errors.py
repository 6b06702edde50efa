"""Errors that name the op, the shapes involved and the user's source line."""
from __future__ import annotations

import os
import sys
from typing import Optional

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_frame(skip_internal: bool = True) -> Optional[tuple[str, int, str]]:
    """Return (file, line, function) of the innermost frame outside the needle package."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not skip_internal or not (
            os.path.abspath(filename).startswith(_PACKAGE_DIR)
            or filename.startswith("<frozen")
            or "/functools.py" in filename
            or "/contextlib.py" in filename
        ):
            return filename, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back
    return None


def user_location() -> str:
    """`file:line` of the user's code that called into needle, or '' when unknown."""
    loc = user_frame()
    return f"{loc[0]}:{loc[1]}" if loc else ""


class NeedleError(Exception):
    """Base class of needle's own errors."""


class IdError(NeedleError, IndexError, ValueError):
    """Ids or indices out of range (or not integers) in a compiled step: both an IndexError
    (eager gather's error) and a ValueError (eager one_hot's)."""


class OpError(NeedleError, ValueError):
    """An op was applied to inputs it cannot take (shapes, axes, dtypes)."""

    def __init__(self, op: str, message: str, location: Optional[str] = None):
        self.op = op
        self.detail = message
        self.location = user_location() if location is None else location
        where = f" (at {self.location})" if self.location else ""
        super().__init__(f"{op}: {message}{where}")
