"""Weights named by a Hugging Face Hub id: taken from the Hub's cache, downloaded into it when missing.

Besides a file or folder, `--weights` takes an id as the Hub spells it:

    owner/name                     a diffusers repository: its movq/ folder (Kandinsky pipelines), its
                                   vae/ folder (CogVideoX pipelines), or else the model at its root
    owner/name/subfolder           that folder of the repository
    owner/name@revision            a branch, tag or commit; also owner/name/subfolder@revision
    owner/name:path/in/repo.ckpt   one file of the repository; also owner/name@revision:path/in/repo.ckpt

A file or folder that exists always wins over an id spelled the same, and a name whose last part
ends like a weights file (`models/movq.ckpt`) is taken for a missing path, not an id. Only what
the model needs is downloaded: config.json and the first weights file the folder has, or the one
file named. huggingface_hub does the work with its usual settings (HF_HUB_OFFLINE=1: the cache
only; HF_HUB_CACHE or HF_HOME: where the cache is; HF_TOKEN or a login: private and gated
repositories). It is imported only when an id is resolved, so that other commands start quickly.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from movq_cli.checkpoints.layouts import find_prefix, model_name
from movq_cli.checkpoints.pickled import SUFFIXES as PICKLE_SUFFIXES
from movq_cli.errors import InputError, RunError

HUB_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
    r"(?P<subfolder>(?:/[\w.-]+)*)"
    r"(?:@(?P<revision>[\w./-]+))?"
    r"(?::(?P<filename>.+))?",
    re.ASCII,
)
WEIGHTS_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
HF_CLI_SINCE = (0, 34)  # huggingface_hub's command is `hf` from 0.34 on, `huggingface-cli` before
TRUE = ("1", "ON", "YES", "TRUE")  # the values huggingface_hub takes for true
PROBE_SECONDS = 2.0  # how long the Hub may take to accept a connection before it counts as unreachable
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class HubId:
    """A repository on the Hugging Face Hub, at a revision, and the folder or file wanted from it."""

    repo: str
    subfolder: str = ""
    revision: str | None = None
    filename: str | None = None  # a path in the repository, subfolder included

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        if self.filename is not None:
            return f"{self.repo}{at}:{self.filename}"
        return f"{self.repo}{'/' if self.subfolder else ''}{self.subfolder}{at}"


def parse(name: str) -> HubId | None:
    """The Hub id that `name` spells, or None when it is no id or reads as a path to a weights file."""
    match = HUB_ID.fullmatch(name)
    if match is None:
        return None
    subfolder = match["subfolder"].strip("/")
    filename = match["filename"]
    if filename is not None:
        filename = posixpath.join(subfolder, filename)
        subfolder = ""
    parts = [*subfolder.split("/"), *(filename or "").split("/")]
    if any(part in (".", "..") for part in parts) or (filename is not None and "" in filename.split("/")):
        return None
    if filename is None and name.endswith(WEIGHTS_SUFFIXES):
        return None
    return HubId(match["repo"], subfolder, match["revision"], filename)


def fetch(hub_id: HubId, folders: Sequence[str], weights_files: Sequence[str]) -> Path:
    """The local copy of what `hub_id` names, downloaded into the Hub cache when missing.

    For a file: that file. For a model: the folder holding its config.json and the first of
    `weights_files` that the repository has, looked for in `hub_id.subfolder` or, without one,
    in each of `folders` and then at the root. Raises InputError, in one line, when the
    repository, revision or file does not exist, or when it is not cached and the Hub cannot
    be asked (offline), naming the command that would fetch it.
    """
    files = _Files(hub_id)
    why = "HF_HUB_OFFLINE is set" if is_offline() else "the Hub cannot be reached"
    not_cached = (
        f"weights not found: {hub_id} (no such file or folder; as a Hub id, it is not in the cache "
        f"{cache_dir()} and {why}); fetch it with: {fetch_command(hub_id, folders, weights_files)}"
    )
    with _hub_errors(hub_id, not_cached):
        if hub_id.filename is not None:
            found, missing = files.get(hub_id.filename), f"no file {hub_id.filename}"
        else:
            found, missing = _model_folder(files, _searched(hub_id, folders), weights_files)
    if found is not None:
        return found
    if files.uncached:
        raise InputError(not_cached)
    at = f" at {hub_id.revision}" if hub_id.revision else ""
    raise InputError(f"{hub_id.repo}{at} on the Hugging Face Hub has {missing}")


def _searched(hub_id: HubId, folders: Sequence[str]) -> list[str]:
    """The folders of the repository where the model may be, in order ("": the root)."""
    return [hub_id.subfolder] if hub_id.subfolder else [*folders, ""]


def _model_folder(files: _Files, folders: Sequence[str], weights_files: Sequence[str]) -> tuple[Path | None, str]:
    """The first of `folders` with a config.json, once one of `weights_files` is there too; else what is missing."""
    for folder in folders:
        config = files.get(posixpath.join(folder, "config.json"))
        if config is None:
            continue
        for name in weights_files:
            weights = files.get(posixpath.join(folder, name))
            if weights is not None and all(files.get(posixpath.join(folder, shard)) for shard in _shards(weights)):
                return config.parent, ""
        return None, f"config.json but no {' or '.join(weights_files)} in {folder or 'its root'}"
    places = [f"{folder}/" if folder else "its root" for folder in folders]
    where = f"{', '.join(places[:-1])} or {places[-1]}" if len(places) > 1 else places[0]
    return None, f"no config.json in {where}: name a weights file in it with {files.hub_id.repo}:PATH"


def _shards(weights: Path) -> list[str]:
    """The shard files of a sharded checkpoint's index (NAME.safetensors.index.json) that hold
    model tensors (of an Emu3 language model, the vision tokenizer's: not the language model's
    gigabytes); none for a plain file."""
    if not weights.name.endswith(".index.json"):
        return []
    try:
        weight_map = json.loads(weights.read_text())["weight_map"]
        prefix = find_prefix(list(weight_map))
        return sorted({shard for name, shard in weight_map.items() if model_name(name, prefix, encoder=True)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # reading the checkpoint reports the damaged index


class _Files:
    """Files of one repository at one revision, each taken from the cache or downloaded into it."""

    def __init__(self, hub_id: HubId) -> None:
        self.hub_id = hub_id
        self.uncached: list[str] = []  # asked for, but neither in the cache nor to be had from the Hub
        # without a network huggingface_hub retries for half a minute, printing each try: look first
        self.cache_only = is_offline() or not reachable()

    def get(self, filename: str) -> Path | None:
        """The cached copy of `filename`; None when the repository has no such file or it cannot be had."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(
                hf_hub_download(
                    self.hub_id.repo,
                    filename,
                    revision=self.hub_id.revision,
                    cache_dir=cache_dir(),
                    local_files_only=self.cache_only,
                )
            )
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: caught first
            self.uncached.append(filename)
            # online, the Hub did not answer (after retries that take half a minute): ask only the cache from now on
            self.cache_only = True
        except EntryNotFoundError:
            pass
        return None


@contextmanager
def _hub_errors(hub_id: HubId, not_cached: str) -> Iterator[None]:
    """huggingface_hub's errors, one line each; `not_cached` is the line for offline mode."""
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise InputError(
            f"{hub_id.repo} is gated: accept its conditions on https://huggingface.co/{hub_id.repo}, "
            f"then log in ({_login_command()}) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"weights not found: {hub_id} (no such file or folder, nor a repository {hub_id.repo} on the "
            f"Hugging Face Hub; a private one needs {_login_command()} or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{hub_id.repo} on the Hugging Face Hub has no revision {hub_id.revision or 'main'}") from None
    except OfflineModeIsEnabled:
        raise InputError(not_cached) from None
    except HfHubHTTPError as error:
        raise InputError(f"{hub_id}: the Hugging Face Hub answered: {_first_line(error)}") from None
    except HFValidationError:
        raise InputError(f"weights not found: {hub_id}") from None
    except OSError as error:  # the cache: disk full, no permission
        raise RunError(f"cannot fetch {hub_id} into {cache_dir()}: {error.strerror or _first_line(error)}") from None


def _file_patterns(weights_files: Sequence[str]) -> list[str]:
    """Patterns for the weights files a model folder may hold: one per name before its first dot
    ("diffusion_pytorch_model.*", "model.*"; a language model's shards are fetched once its index says which)."""
    return [f"{stem}.*" for stem in dict.fromkeys(name.split(".")[0] for name in weights_files)]


def fetch_command(hub_id: HubId, folders: Sequence[str], weights_files: Sequence[str]) -> str:
    """The shell command that downloads what `hub_id` names into the Hub cache, for the huggingface_hub installed."""
    program = _cli()
    words = [program, "download", hub_id.repo]
    if hub_id.filename is not None:
        words.append(hub_id.filename)
    if hub_id.revision:
        words += ["--revision", hub_id.revision]
    if hub_id.filename is None:
        patterns = []
        for folder in _searched(hub_id, folders):
            patterns += [f"{folder}/*"] if folder else ["config.json", *_file_patterns(weights_files)]
        if program == "huggingface-cli":  # it takes every pattern after one --include
            words += ["--include", *patterns]
        else:
            words += [word for pattern in patterns for word in ("--include", pattern)]
    return shlex.join(words)


def cache_dir() -> Path:
    """The Hub cache, as huggingface_hub finds it, read from the environment now rather than when it was imported."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def reachable() -> bool:
    """Whether the Hub's endpoint (HF_ENDPOINT) takes a connection within PROBE_SECONDS, name lookup
    included. Behind a proxy (HTTPS_PROXY, ...) only the proxy can say, so the Hub counts as reachable."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    address = (endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80))
    connected = threading.Event()

    def connect() -> None:
        with suppress(OSError), socket.create_connection(address, timeout=PROBE_SECONDS):
            connected.set()

    threading.Thread(target=connect, name="movq-hub-probe", daemon=True).start()
    return connected.wait(PROBE_SECONDS)  # a name lookup that hangs is given up on too


def is_offline() -> bool:
    """Whether only the cache may be used: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now or as
    huggingface_hub read it at import."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in TRUE or constants.HF_HUB_OFFLINE


def _cli() -> str:
    from huggingface_hub import __version__

    return "hf" if tuple(int(n) for n in re.findall(r"\d+", __version__)[:2]) >= HF_CLI_SINCE else "huggingface-cli"


def _login_command() -> str:
    return "hf auth login" if _cli() == "hf" else "huggingface-cli login"


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
