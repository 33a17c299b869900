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


def run_script(main: Callable[[], None]) -> None:
    """Run a script's main(): a user's error is one line on stderr and exit code 1, Ctrl-C exit code 130."""
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
