"""Outputs that appear whole or not at all: a temporary beside the target, moved there when complete.

A temporary is `.NAME.XXXXXXXX.partial`, locked (flock) for as long as its run is alive, so
that a later run onto the same place can tell the leftovers of a killed run from the work of a
live one. Without --overwrite nothing is ever replaced, even what appears while decoding.
A folder of frames holds MANIFEST, the frames movq wrote in it, so that --overwrite replaces
only folders whose every file movq can tell it wrote.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from movq_cli.errors import InputError, RunError, reason

FRAME_NAME = re.compile(r"\d{5,}\.png")  # how a folder of frames names them
PARTIAL_SUFFIX = ".partial"
CREATING = ".new"  # a temporary not locked yet, which no cleaner takes for a dead run's
MANIFEST = ".movq-frames"  # in a folder of frames: "NAME SIZE" for each frame movq wrote there
MANIFEST_HEADER = "movq frames\n"
NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
TAG = 8  # hexadecimal digits that tell temporaries apart
TEMP_EXTRA = len(f"..{'0' * TAG}{CREATING}{PARTIAL_SUFFIX}")  # what a temporary adds to the target's name


class AtomicTarget:
    """A temporary file (or folder) beside `target`, moved onto it when the output is complete.

    The temporary is created here, so that an unwritable place is reported before any work, and
    so are the parent folders that do not exist yet (and removed again if the output fails).
    Without `overwrite` an existing target is refused, and one that appears meanwhile is kept:
    the output then goes beside it under another name and `commit` raises RunError.
    A folder is replaced only when movq can tell it wrote everything in it (MANIFEST), and never
    when it is or holds the current folder or the home folder.
    """

    def __init__(self, target: str | Path, overwrite: bool, folder: bool = False) -> None:
        self.target = Path(target)
        self.path = Path(os.path.abspath(target))  # "." and ".." have no name to put beside
        self.folder = folder
        self.overwrite = overwrite
        if len(os.fsencode(self.path.name)) > NAME_MAX:
            raise InputError(f"{self.target.name[:40]}... is a name of over {NAME_MAX} bytes, too long for a file")
        if os.path.lexists(self.path):
            self._check_replaceable(overwrite)
        self.made: list[Path] = []
        for attempt in range(3):  # a folder another run found empty and removed is made again
            self.made += _make_folders(self.path.parent)
            remove_dead_partials(self.path)
            try:
                self.temp, self._lock = _create_temporary(self.path, folder)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise InputError(f"cannot write to {self.path.parent}: it keeps disappearing") from None
            except OSError as error:
                self._remove_made()
                raise InputError(f"cannot write to {self.path.parent}: {reason(error)}") from None

    def _check_replaceable(self, overwrite: bool) -> None:
        if not self.folder:
            if self.path.is_dir():
                raise InputError(f"{self.target} is a folder; name the output file otherwise")
        elif self.path.is_symlink() or not self.path.is_dir():
            raise InputError(f"{self.target} is a file or a link; name the folder of frames otherwise")
        else:
            self._check_not_protected()
            self._check_only_frames(self.path)
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

    def _check_only_frames(self, folder: Path) -> list[str]:
        """The frames movq wrote in `folder` (its MANIFEST); InputError if anything else is there."""
        try:
            foreign = _foreign_entries(folder)
        except OSError as error:
            raise InputError(f"cannot read the folder {self.target}: {reason(error)}") from None
        if foreign:
            raise InputError(
                f"{self.target} holds {foreign[0]}, which movq did not write; even with overwrite=True, movq "
                "replaces a folder only when it holds nothing but the frames it wrote there itself"
            )
        return list(_manifest(folder))

    def commit(self) -> None:
        """Move the finished temporary output onto the target: without `overwrite` only where
        nothing is (RunError, the output kept beside, if something appeared meanwhile)."""
        try:
            if self.folder:
                _write_manifest(self.temp, self._lock)
            if not self.overwrite:
                self._publish()
            elif self.folder and os.path.lexists(self.path):
                self._replace_folder()
            else:
                os.replace(self.temp, self.path)
        finally:
            self._unlock()

    def _publish(self) -> None:
        try:
            move_without_replacing(self.temp, self.path)
        except FileExistsError:
            kept = self._keep_beside()
            raise RunError(
                f"{self.target} appeared while this output was written and is left as it is; this output is {kept}"
            ) from None

    def _keep_beside(self) -> Path:
        """Move the temporary to a free name beside the target; returns it."""
        stem, suffix = (self.path.name, "") if self.folder else (self.path.stem, self.path.suffix)
        room = NAME_MAX - len(os.fsencode(f".{'0' * TAG}{suffix}"))
        while True:
            kept = self.path.with_name(f"{_shortened(stem, room)}.{uuid.uuid4().hex[:TAG]}{suffix}")
            with suppress(FileExistsError):
                move_without_replacing(self.temp, kept)
                return kept

    def _replace_folder(self) -> None:
        frames = self._check_only_frames(self.path)  # again: something may have been put there while decoding
        old = self.path.with_name(f"{_temp_prefix(self.path.name)}{uuid.uuid4().hex[:TAG]}.old")
        os.replace(self.path, old)
        try:
            move_without_replacing(self.temp, self.path)
        except OSError:
            os.replace(old, self.path)
            raise
        for name in [*frames, MANIFEST]:
            with suppress(FileNotFoundError):
                os.unlink(old / name)
        with suppress(OSError):  # not empty only if a file appeared since the check: leave it be
            os.rmdir(old)

    def remove(self) -> None:
        """Remove the temporary output (again, if need be), and the folders made for it."""
        if self.temp.is_dir():
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)
        self._unlock()
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in reversed(self.made):  # the deepest first; one another output uses stays
            with suppress(OSError):
                os.rmdir(folder)

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; returns the ones made here, the highest first."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    made = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
            made.append(folder)
        except FileExistsError:  # another worker made it meanwhile
            if not folder.is_dir():
                raise InputError(f"cannot create the folder {folder}: a file is there") from None
        except OSError as error:
            for made_here in reversed(made):
                with suppress(OSError):
                    os.rmdir(made_here)
            raise InputError(f"cannot create the folder {folder}: {reason(error)}") from None
    return made


def missing_folders(outputs: list[str | Path]) -> list[Path]:
    """The folders that outputs at `outputs` would need and that do not exist yet."""
    missing = set()
    for output in outputs:
        folder = Path(os.path.abspath(output)).parent
        while folder not in missing and not folder.is_dir() and folder.parent != folder:
            missing.add(folder)
            folder = folder.parent
    return sorted(missing)


@contextmanager
def removing_empty(folders: list[Path]) -> Iterator[None]:
    """On leaving, remove those of `folders` that are empty, the deepest first: what a batch made
    and no output of it went into (those its outputs made are removed by them, unless another
    output of the batch was being written there at the time)."""
    try:
        yield
    finally:
        for folder in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
            with suppress(OSError):
                os.rmdir(folder)


def _shortened(name: str, room: int) -> str:
    """`name`, cut to at most `room` bytes (whole characters)."""
    return os.fsencode(name)[:room].decode(errors="ignore") if len(os.fsencode(name)) > room else name


def _temp_prefix(name: str) -> str:
    """How the temporaries of the output `name` begin: ".NAME." (NAME cut so that they fit NAME_MAX)."""
    return f".{_shortened(name, NAME_MAX - TEMP_EXTRA)}."


def _create_temporary(path: Path, folder: bool) -> tuple[Path, int]:
    """A new temporary beside `path` and a descriptor holding its lock: created under a name no
    cleaner takes, locked, then renamed, so that a cleaner never finds it unlocked."""
    name = f"{_temp_prefix(path.name)}{uuid.uuid4().hex[:TAG]}"
    creating, temp = path.with_name(f"{name}{CREATING}{PARTIAL_SUFFIX}"), path.with_name(f"{name}{PARTIAL_SUFFIX}")
    if folder:
        os.mkdir(creating)
        lock = os.open(creating / MANIFEST, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    else:
        lock = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        move_without_replacing(creating, temp)
    except BaseException:
        os.close(lock)
        shutil.rmtree(creating, ignore_errors=True) if folder else os.unlink(creating)
        raise
    return temp, lock


def _write_manifest(folder: Path, descriptor: int) -> None:
    """List every frame in the temporary `folder` in its MANIFEST (open as `descriptor`)."""
    lines = [MANIFEST_HEADER]
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.name != MANIFEST:
            lines.append(f"{entry.name} {entry.stat(follow_symlinks=False).st_size}\n")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, "".join(lines).encode(), 0)


def _manifest(folder: Path) -> dict[str, int]:
    """The frames (name -> size) that the MANIFEST in `folder` says movq wrote; none if it has none."""
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    if not text.startswith(MANIFEST_HEADER):
        return {}
    frames = {}
    for line in text[len(MANIFEST_HEADER) :].splitlines():
        name, _, size = line.rpartition(" ")
        if FRAME_NAME.fullmatch(name) and size.isdigit():
            frames[name] = int(size)
    return frames


def _foreign_entries(folder: Path) -> list[str]:
    """What in `folder` movq cannot tell it wrote: not in its MANIFEST, or changed since (another
    size, a link). Names that do not look like frames come first, then by name."""
    frames = _manifest(folder)
    foreign = []
    for entry in os.scandir(folder):
        if entry.name == MANIFEST and entry.is_file(follow_symlinks=False):
            continue
        size = frames.get(entry.name)
        if size is None or not entry.is_file(follow_symlinks=False) or entry.stat().st_size != size:
            foreign.append(entry.name)
    return sorted(foreign, key=lambda name: (FRAME_NAME.fullmatch(name) is not None, name))


# renameat2(2)'s flag: fail with EEXIST rather than replace (Linux 3.15; glibc 2.28)
RENAME_NOREPLACE = 1
AT_FDCWD = -100


def _renameat2() -> ctypes._CFuncPtr | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


RENAMEAT2 = _renameat2()


def move_without_replacing(source: Path, destination: Path) -> None:
    """Rename `source` to `destination`; FileExistsError if anything is there, even something that
    appears at that moment: renameat2(RENAME_NOREPLACE), or else, for a file, link then unlink,
    and for a folder rename, which never replaces a folder that holds anything (nor a file)."""
    if RENAMEAT2 is not None:
        if RENAMEAT2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(destination), RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: a file system without the flag
            raise OSError(code, os.strerror(code), str(destination))
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(destination))
    if source.is_dir():
        try:
            os.rename(source, destination)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(destination)) from None
            raise
        return
    try:
        os.link(source, destination, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: the last look is as close as it gets
        os.rename(source, destination)
        return
    os.unlink(source)


def _alive(partial: Path) -> bool:
    """Whether the run that made this temporary still holds its lock (or whether that is unknown)."""
    lock = partial / MANIFEST if partial.is_dir() and not partial.is_symlink() else partial
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:  # gone meanwhile, or a folder made before manifests were locked
        return False
    except OSError:
        return True  # not ours to judge: another user's, or a link
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


_LISTINGS: dict[Path, set[str]] | None = None  # in a batch: folder -> the temporaries seen there


@contextmanager
def listing_once() -> Iterator[None]:
    """Within this block (a batch writing many outputs into a folder), each folder is listed for
    temporaries once, not once for each output."""
    global _LISTINGS
    previous, _LISTINGS = _LISTINGS, {}
    try:
        yield
    finally:
        _LISTINGS = previous


def remove_dead_partials(output: str | Path, look_again: bool = False) -> None:
    """Remove the temporaries of `output` left by runs that are no longer alive (killed, even by
    SIGKILL); those of live runs stay. The folder is listed afresh, or once in `listing_once`,
    unless `look_again`: a worker that died just now left one."""
    target = Path(os.path.abspath(output))
    folder = target.parent
    listings = {} if _LISTINGS is None or look_again else _LISTINGS
    if folder not in listings:
        with suppress(OSError):
            listings[folder] = {entry.name for entry in os.scandir(folder) if entry.name.endswith(PARTIAL_SUFFIX)}
    prefix, tail = _temp_prefix(target.name), re.compile(rf"[0-9a-f]{{{TAG}}}{re.escape(PARTIAL_SUFFIX)}")
    seen = listings.get(folder, set())
    for name in [name for name in seen if name.startswith(prefix) and tail.fullmatch(name[len(prefix) :])]:
        seen.discard(name)
        partial = folder / name
        if _alive(partial):
            continue
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                os.unlink(partial)
