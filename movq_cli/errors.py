"""The errors movq reports to users: one line each, with the exit code they deserve."""


class MovqError(Exception):
    """A failure the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(MovqError):
    """Bad input: a file, option or weight that cannot be used as given (exit 2)."""

    exit_code = 2


class RunError(MovqError):
    """A failure while running: writing, encoding, the device (exit 1)."""

    exit_code = 1
