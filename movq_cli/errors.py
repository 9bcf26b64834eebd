"""The errors movq reports to users: one line each, with the exit code they deserve."""

from __future__ import annotations

import errno
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager

# what a failed file operation means, in the user's words (EROFS and EACCES are not the same)
REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


class MovqError(Exception):
    """A failure the user can act on, in the library's words: a message names the keyword at fault
    (`overwrite=True`, `tile=256`), which the CLI renders as its flag (`as_flags`). `exit_code` is
    what the CLI exits with; `hint`, when there is one, says what to try, and ends the error's text."""

    exit_code = 1
    hint: str | None = None

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}; {self.hint}" if self.hint else message


class InputError(MovqError):
    """Bad input: a file, option or weight that cannot be used as given (exit 2)."""

    exit_code = 2


class RunError(MovqError):
    """A failure while running: writing, encoding, the device (exit 1)."""

    exit_code = 1


class OutOfMemory(RunError):
    hint = "try a smaller chunk=..."


# How the library names a keyword in a message, and how the command line spells it: the library
# speaks to Python callers (overwrite=True), the CLI renders the same message with its flags.
# keywords with a value
_VALUED = "key|grid|tile|chunk|frames|fps|crf|encoder|device|format|weights|config|workers|tokens|image"
KEYWORD_FLAGS = [
    (re.compile(r"\b(overwrite|snap|unscaled|latents|ray)=True\b"), r"--\1"),
    (re.compile(r"\b(source_numbers|per_clip)=True\b"), lambda m: "--" + m.group(1).replace("_", "-")),
    (re.compile(r"\btoken_offset=\.\.\."), r"--token-offset"),
    (re.compile(r"\btoken_offset=(?=\S)"), r"--token-offset "),
    (re.compile(rf"\b({_VALUED})=\.\.\."), r"--\1"),
    (re.compile(r"\b(grid|tile)=\((\w+), (\w+)\)"), r"--\1 \2x\3"),
    (re.compile(rf"\b({_VALUED})=(?=\S)"), r"--\1 "),
]


def as_flags(message: str) -> str:
    """A library message as the command line says it: `overwrite=True` -> `--overwrite`, `key=NAME` -> `--key NAME`."""
    for pattern, flag in KEYWORD_FLAGS:
        message = pattern.sub(flag, message)
    return message


RETRY_SECONDS = 0.02  # how soon an interruption put off by `interrupt` comes again


def interrupt(signum, frame) -> None:
    """A handler for SIGINT and SIGTERM: KeyboardInterrupt where the program is, so that writers
    remove their partial output. Inside a finalizer (a `__del__`, such as a finished ffmpeg
    process's) Python would print the exception and drop it, and the program would go on as if
    never interrupted: there it asks again shortly, by SIGALRM, which must have this handler too."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def reason(error: OSError) -> str:
    """Why a file operation failed: "read-only file system", "permission denied", "No space left on device", ..."""
    return REASONS.get(error.errno, error.strerror or first_line(error))


@contextmanager
def run_errors(what: str, device: object) -> Iterator[None]:
    """Failures of the device, the file system or torch while doing `what` on `device`, as one-line RunErrors."""
    try:
        yield
    except MovqError:
        raise
    except RuntimeError as error:
        import torch  # only here: callers of this module must not pay for importing torch

        if isinstance(error, torch.OutOfMemoryError):
            raise OutOfMemory(f"out of memory on {device} while {what}") from None
        raise RunError(f"{what} failed on {device}: {first_line(error)}") from None
    except OSError as error:
        raise RunError(f"{what} failed: {reason(error)}") from None
