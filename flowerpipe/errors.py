"""The error every layer raises for a problem the user can fix: printed as one line, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(RuntimeError):
    """A failure the user can fix (a bad input, a missing file, an impossible request); one line."""


class FormatError(UserError):
    """A model file is missing, corrupt or cannot run here; the message names the file."""


def is_user_error(exc: BaseException) -> bool:
    """A failure to print as one line: ours (any flowerpipe error), or the system's own words naming a file."""
    return isinstance(exc, (UserError, OSError)) or exc.__class__.__module__.startswith("flowerpipe")


def exit_code(main: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """main()'s exit code (0 for None): a user's error is one line on stderr and 1, Ctrl-C `error: <interrupted>`
    and 130; a bug propagates."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's main() and exit with exit_code's code."""
    sys.exit(exit_code(main))
