"""Outputs that appear whole or not at all: a temporary beside the target, renamed when complete."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import suppress
from pathlib import Path

from movq_cli.errors import InputError, reason

FRAME_NAME = re.compile(r"\d{5,}\.png")  # how a folder of frames names them
PARTIAL_SUFFIX = ".partial"
PARTIAL = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX))  # AtomicTarget's temporaries


class AtomicTarget:
    """A temporary file (or folder) beside `target`, moved onto it when the output is complete.

    The temporary is created here, so that an unwritable place is reported before any work.
    A folder is replaced only when it holds nothing but frames movq numbered (00000.png, ...),
    and never when it is or holds the current folder or the home folder.
    """

    def __init__(self, target: str | Path, overwrite: bool, folder: bool = False) -> None:
        self.target = Path(target)
        self.path = Path(os.path.abspath(target))  # "." and ".." have no name to put beside
        self.folder = folder
        if os.path.lexists(self.path):
            self._check_replaceable(overwrite)
        parent = self.path.parent
        if not parent.is_dir():
            try:
                parent.mkdir(parents=True, exist_ok=True)  # another worker may make it meanwhile
            except OSError as error:
                raise InputError(f"cannot create the folder {parent}: {reason(error)}") from None
        self.temp = parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
        try:
            if folder:
                os.mkdir(self.temp)
            else:
                os.close(os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as error:
            raise InputError(f"cannot write to {parent}: {reason(error)}") from None

    def _check_replaceable(self, overwrite: bool) -> None:
        if not self.folder:
            if self.path.is_dir():
                raise InputError(f"{self.target} is a folder; name the output file otherwise")
        elif self.path.is_symlink() or not self.path.is_dir():
            raise InputError(f"{self.target} is a file or a link; name the folder of frames otherwise")
        else:
            self._check_not_protected()
            self._check_only_frames()
        if not overwrite:
            raise InputError(f"{self.target} exists; pass overwrite=True to replace it")

    def _check_not_protected(self) -> None:
        resolved = self.path.resolve()
        places = {"the current folder": Path.cwd()}
        home = os.path.expanduser("~")
        if home != "~":  # no HOME and no password entry
            places["your home folder"] = Path(home)
        for name, place in places.items():
            place = place.resolve()
            if place.is_relative_to(resolved):
                relation = "is" if place == resolved else "holds"
                raise InputError(f"movq never replaces {self.target}: it {relation} {name}; name a new folder")

    def _check_only_frames(self) -> None:
        try:
            foreign = next((entry.name for entry in os.scandir(self.path) if not _is_frame(entry)), None)
        except OSError as error:
            raise InputError(f"cannot read the folder {self.target}: {reason(error)}") from None
        if foreign is not None:
            raise InputError(
                f"{self.target} holds {foreign}, which movq did not write; even with --overwrite, movq replaces "
                "a folder only when it holds nothing but its own frames (00000.png, 00001.png, ...)"
            )

    def commit(self) -> None:
        """Move the finished temporary output onto the target, replacing what was there."""
        if not (self.folder and self.path.is_dir()):
            os.replace(self.temp, self.path)
            return
        self._check_only_frames()  # again: something may have been put there while decoding
        old = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(self.path, old)
        try:
            os.replace(self.temp, self.path)
        except OSError:
            os.replace(old, self.path)
            raise
        for entry in os.scandir(old):
            if _is_frame(entry):
                os.unlink(entry.path)
        with suppress(OSError):  # not empty only if a file appeared since the check: leave it be
            os.rmdir(old)

    def remove(self) -> None:
        """Remove the temporary output (again, if need be)."""
        if self.temp.is_dir():
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)


def _is_frame(entry: os.DirEntry) -> bool:
    return FRAME_NAME.fullmatch(entry.name) is not None and entry.is_file(follow_symlinks=False)


def remove_partial_output(output: str | Path) -> None:
    """Remove what a writer that was killed left of `output`: its temporary beside the target."""
    target = Path(os.path.abspath(output))
    with suppress(OSError):
        for entry in os.scandir(target.parent):
            match = PARTIAL.fullmatch(entry.name)
            if match and match.group("name") == target.name:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
