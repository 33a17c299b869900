"""The error every layer raises for a problem the user can fix: printed as one line, no traceback."""


class UserError(RuntimeError):
    """A failure the user can fix (a bad input, a missing file, an impossible request); one line."""


class FormatError(UserError):
    """A model file is missing, corrupt or cannot run here; the message names the file."""
