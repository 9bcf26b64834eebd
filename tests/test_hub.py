"""Weights named by Hugging Face Hub id, read from a Hub cache the tests build (never the network),
and `movq info` counting every tensor of a file and what the decoder and the encoder use."""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import subprocess
import sys

import huggingface_hub
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, make_vqmodel, movq, write_lightning_ckpt
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors
from safetensors import safe_open
from safetensors.torch import save_file

from movq_cli.checkpoints import hub, reading, weights
from movq_cli.checkpoints.bundled import default_weights
from movq_cli.errors import InputError

MAIN = "0123456789abcdef0123456789abcdef01234567"
SECOND = "89abcdef0123456789abcdef0123456789abcdef"
KANDINSKY = "kandinsky-community/kandinsky-2-2-decoder"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection a test attempts fails it, even one that huggingface_hub would forgive."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert not attempts, f"tried to connect to {attempts}"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, the one huggingface_hub uses, offline.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, and some of its requests (2.x looks up a
    registry of agents when it builds its headers) heed only that: the test sets both.
    """
    folder = tmp_path / "hub-cache"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return folder


@pytest.fixture
def hub_answers(cache, monkeypatch):
    """Online, with every download answered by the error that the test sets (`hub_answers.error`)."""

    class Answers:
        error: Exception

    def download(*args, **kwargs):
        raise Answers.error

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "reachable", lambda: True)  # online: the Hub takes connections
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return Answers


def cache_repo(cache, repo: str, files: dict, commit: str = MAIN, refs: tuple[str, ...] = ("main",)):
    """Put `files` (path in the repository -> local file) in the cache as `repo` at `commit`; returns the snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    snapshot = root / "snapshots" / commit
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, snapshot / name)
    return snapshot


def model_files(folder, under: str = "") -> dict:
    """A diffusers model folder's files, placed `under` a folder of the repository."""
    prefix = f"{under}/" if under else ""
    return {f"{prefix}{path.name}": path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def other_folder(tmp_path_factory):
    """A second small model, different weights: tells which of two was read."""
    folder = tmp_path_factory.mktemp("other") / "movq"
    make_vqmodel(widths=(32, 64), layers=1, attn=(True, False), latent=4, n_e=64, seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, small_folder):
    path = tmp_path_factory.mktemp("ckpt") / "movqgan_67M.ckpt"
    write_lightning_ckpt(small_folder[1], path)
    return path


# Names


@pytest.mark.parametrize(
    "name, expected",
    [
        (KANDINSKY, hub.HubId(KANDINSKY)),
        ("owner/name/movq", hub.HubId("owner/name", "movq")),
        ("owner/name/a/b", hub.HubId("owner/name", "a/b")),
        ("owner/name@v2.1", hub.HubId("owner/name", revision="v2.1")),
        ("owner/name/movq@refs/pr/3", hub.HubId("owner/name", "movq", "refs/pr/3")),
        ("ai-forever/MoVQGAN:movqgan_67M.ckpt", hub.HubId("ai-forever/MoVQGAN", filename="movqgan_67M.ckpt")),
        (f"owner/name@{MAIN}:w/m.ckpt", hub.HubId("owner/name", revision=MAIN, filename="w/m.ckpt")),
        ("owner/name/movq:model.safetensors", hub.HubId("owner/name", filename="movq/model.safetensors")),
        ("models/movq.ckpt", None),  # a missing file, not a repository named movq.ckpt
        ("checkpoints/run/last.safetensors", None),
        ("movq", None),
        ("./owner/name", None),
        ("/owner/name", None),
        ("owner/name/../x", None),
        ("owner/name:", None),
        ("owner/name:/etc/passwd", None),
        ("owner/name:a/../b.ckpt", None),
    ],
)
def test_hub_ids_are_told_from_paths(name, expected):
    assert hub.parse(name) == expected
    if expected is not None:
        assert hub.parse(str(expected)) == expected


def test_the_fetch_command_fits_the_installed_huggingface_hub(monkeypatch):
    folders, files = reading.PIPELINE_FOLDERS, reading.WEIGHTS_FILES
    assert hub.fetch_command(hub.parse(KANDINSKY), folders, files) == (
        f"hf download {KANDINSKY} --include 'movq/*' --include 'vae/*' "
        "--include config.json --include 'diffusion_pytorch_model.*' --include 'model.*'"
    )
    assert (
        hub.fetch_command(hub.parse("o/n/movq@v2"), folders, files)
        == "hf download o/n --revision v2 --include 'movq/*'"
    )
    assert hub.fetch_command(hub.parse("o/n:a b.ckpt"), folders, files) == "hf download o/n 'a b.ckpt'"
    monkeypatch.setattr(huggingface_hub, "__version__", "0.23.4")
    assert hub.fetch_command(hub.parse("o/n/movq"), folders, files) == "huggingface-cli download o/n --include 'movq/*'"
    assert hub.fetch_command(hub.parse("o/n"), folders, files).endswith(
        "--include 'movq/*' 'vae/*' config.json 'diffusion_pytorch_model.*' 'model.*'"
    )


# Resolution from the cache


def test_a_pipeline_repository_id_finds_its_movq_folder(cache, small_folder):
    snapshot = cache_repo(cache, KANDINSKY, model_files(small_folder[0], "movq"))
    (snapshot / "model_index.json").write_text("{}")
    located = reading.locate(KANDINSKY)
    assert located.path == snapshot / "movq" / "diffusion_pytorch_model.safetensors"
    assert located.config_source == "config.json"


def test_a_pipeline_repository_id_finds_its_vae_folder(cache, small_folder):
    snapshot = cache_repo(cache, "THUDM/CogVideoX-2b", model_files(small_folder[0], "vae"))
    assert reading.locate("THUDM/CogVideoX-2b").path.parent == snapshot / "vae"


def test_a_subfolder_id_and_a_model_at_the_root(cache, small_folder, other_folder):
    snapshot = cache_repo(
        cache, "owner/name", {**model_files(small_folder[0], "movq"), **model_files(other_folder, "b")}
    )
    assert reading.locate("owner/name/b").path.parent == snapshot / "b"
    assert reading.locate("owner/name/movq").path.parent == snapshot / "movq"
    root = cache_repo(cache, "owner/root-model", model_files(small_folder[0]))
    assert reading.locate("owner/root-model").path == root / "diffusion_pytorch_model.safetensors"


def test_a_revision_picks_that_commit(cache, small_folder, other_folder):
    main = cache_repo(cache, "owner/name", model_files(small_folder[0], "movq"))
    second = cache_repo(cache, "owner/name", model_files(other_folder, "movq"), commit=SECOND, refs=("v2",))
    assert reading.locate("owner/name").path.parent == main / "movq"
    for name in ("owner/name@v2", f"owner/name@{SECOND}", "owner/name/movq@v2", f"owner/name@{MAIN}"):
        expected = main if MAIN in name else second
        assert reading.locate(name).path.parent == expected / "movq", name


def test_one_file_of_a_repository(cache, ckpt, small_folder):
    snapshot = cache_repo(cache, "ai-forever/MoVQGAN", {"movqgan_67M.ckpt": ckpt}, refs=("main", "v1"))
    located = reading.locate("ai-forever/MoVQGAN:movqgan_67M.ckpt")
    assert located.path == snapshot / "movqgan_67M.ckpt" and located.config_source == "inferred"
    assert reading.locate("ai-forever/MoVQGAN@v1:movqgan_67M.ckpt").path == located.path
    cache_repo(cache, "owner/name", model_files(small_folder[0], "movq"))
    file = reading.locate("owner/name/movq:diffusion_pytorch_model.safetensors")
    assert file.path.name == "diffusion_pytorch_model.safetensors" and file.config_source == "config.json"


def test_a_local_path_wins_over_a_hub_id(cache, small_folder, other_folder, tmp_path, monkeypatch):
    cache_repo(cache, "owner/name", model_files(other_folder, "movq"))
    shutil.copytree(small_folder[0], tmp_path / "work" / "owner" / "name" / "movq")
    monkeypatch.chdir(tmp_path / "work")
    assert reading.locate("owner/name").path.resolve() == (
        tmp_path / "work" / "owner" / "name" / "movq" / "diffusion_pytorch_model.safetensors"
    )


def test_weights_default_names_the_bundled_model(cache):
    assert reading.locate("default").path == default_weights()
    result = movq("info", "default", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(default_weights())


def test_decoding_through_a_hub_id_equals_decoding_the_folder(cache, small_folder, tmp_path):
    cache_repo(cache, KANDINSKY, model_files(small_folder[0], "movq"))
    np.save(tmp_path / "codes.npy", np.random.default_rng(0).integers(0, 64, (3, 4, 5)))
    for weights_name, out in ((small_folder[0], "folder"), (KANDINSKY, "hub")):
        result = movq("decode", tmp_path / "codes.npy", tmp_path / out, "--weights", weights_name, "-q")
        assert result.exit_code == 0, result.output
    for i in range(3):
        folder, by_id = (iio.imread(tmp_path / out / f"{i:05d}.png") for out in ("folder", "hub"))
        assert np.array_equal(folder, by_id)


def test_huggingface_hub_is_imported_only_for_a_hub_id():
    check = (
        "import sys; from movq_cli.cli import app; from movq_cli.checkpoints import reading; "
        "reading.read_checkpoint('default'); assert 'huggingface_hub' not in sys.modules, 'imported'"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


# Errors, one line each


@pytest.mark.parametrize(
    "name, needle",
    [
        (KANDINSKY, f"hf download {KANDINSKY} --include 'movq/*'"),
        ("owner/name/movq@v2", "hf download owner/name --revision v2 --include 'movq/*'"),
        ("ai-forever/MoVQGAN:movqgan_67M.ckpt", "hf download ai-forever/MoVQGAN movqgan_67M.ckpt"),
    ],
)
def test_offline_and_not_cached_is_one_line_with_the_command_that_fetches_it(cache, tmp_path, name, needle):
    np.save(tmp_path / "codes.npy", np.zeros((1, 2, 2), np.int64))
    result = movq("decode", tmp_path / "codes.npy", tmp_path / "out.png", "--weights", name)
    assert_one_line_error(result, 2, needle)
    assert "not in the cache" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_repository_cached_without_its_weights_is_not_cached(cache, small_folder):
    cache_repo(cache, KANDINSKY, {"movq/config.json": small_folder[0] / "config.json"})
    with pytest.raises(InputError, match="not in the cache"):
        reading.locate(KANDINSKY)


def test_a_name_that_is_neither_a_path_nor_an_id_is_not_found(cache):
    for name in ("models/movq.ckpt", "movq", "./owner/name"):
        assert_one_line_error(movq("info", name), 2, f"weights not found: {name}")


def _hub_error(kind: type) -> Exception:
    """An error as huggingface_hub raises it: one about HTTP carries the response."""
    if not issubclass(kind, hub_errors.HfHubHTTPError):
        return kind("no connection")
    # the HTTP library whose responses huggingface_hub's errors carry: httpx2 from its 2.0, httpx in 1.x
    http = importlib.import_module("httpx2" if int(huggingface_hub.__version__.split(".")[0]) >= 2 else "httpx")
    request = http.Request("HEAD", "https://huggingface.co/owner/name/resolve/main/movq/config.json")
    return kind("the Hub's message\nand its details", response=http.Response(404, request=request))


@pytest.mark.parametrize(
    "kind, needle",
    [
        (hub_errors.RepositoryNotFoundError, "nor a repository owner/name on the Hugging Face Hub"),
        (hub_errors.GatedRepoError, "owner/name is gated"),
        (hub_errors.RevisionNotFoundError, "has no revision v9"),
        (hub_errors.RemoteEntryNotFoundError, "has no config.json in movq/"),
        (hub_errors.HfHubHTTPError, "answered: the Hub's message"),
        (hub_errors.OfflineModeIsEnabled, "hf download owner/name --revision v9 --include 'movq/*'"),
        (hub_errors.LocalEntryNotFoundError, "the Hub cannot be reached"),
    ],
)
def test_hub_errors_become_one_line(hub_answers, kind, needle):
    hub_answers.error = _hub_error(kind)
    assert_one_line_error(movq("info", "owner/name@v9"), 2, needle)


def test_a_cache_that_cannot_be_written_is_a_run_error(hub_answers):
    hub_answers.error = PermissionError(13, "Permission denied")
    assert_one_line_error(movq("info", "owner/name"), 1, "cannot fetch owner/name into")


def test_a_repository_without_a_config_says_where_it_was_looked_for(hub_answers):
    hub_answers.error = _hub_error(hub_errors.RemoteEntryNotFoundError)
    assert_one_line_error(movq("info", "owner/name"), 2, "no config.json in movq/, vae/ or its root")


def test_once_the_hub_does_not_answer_only_the_cache_is_asked(cache, small_folder, monkeypatch):
    snapshot = cache_repo(cache, "THUDM/CogVideoX-2b", model_files(small_folder[0], "vae"))
    asked = []

    def unreachable(repo, filename, **kwargs):
        asked.append((filename, kwargs["local_files_only"]))
        if not kwargs["local_files_only"] or not (snapshot / filename).exists():
            raise hub_errors.LocalEntryNotFoundError("no connection, and not in the cache")
        return str(snapshot / filename)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "reachable", lambda: True)  # it takes the connection, then does not answer
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    assert reading.locate("THUDM/CogVideoX-2b").path.parent.name == "vae"
    assert asked[:2] == [("movq/config.json", False), ("vae/config.json", True)]
    assert all(cache_only for _, cache_only in asked[1:])


# movq info: the whole file, and what each part uses


def test_info_counts_every_tensor_of_the_bundled_file_and_what_each_part_uses():
    result = movq("info", default_weights(), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["file"] == {"tensors": 229, "parameters": 2_718_159}  # the README's 2.72 M
    assert report["decoder"] == {"tensors": 163, "parameters": 1_702_039}
    assert report["encoder"] == {"present": True, "tensors": 66, "parameters": 1_016_120, "problem": None}
    assert report["config"]["encoder"] is True and report["parameters"] == report["decoder"]["parameters"]
    table = movq("info", default_weights())
    assert table.exit_code == 0, table.output
    assert "229 tensors, 2,718,159 parameters" in table.stdout
    assert "1,702,039 parameters (163 tensors)" in table.stdout and "1,016,120 parameters (66 tensors)" in table.stdout


@pytest.fixture(scope="module")
def bundled_tensors():
    """The bundled file's tensors and metadata, to write variants of it."""
    with safe_open(default_weights(), framework="pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}, file.metadata()


def test_info_counts_tensors_that_neither_part_uses(bundled_tensors, tmp_path):
    tensors, metadata = bundled_tensors
    extra = {"loss.logvar": torch.zeros(()), "loss.discriminator.weight": torch.ones(8, 3, 4, 4)}
    save_file({**tensors, **extra}, tmp_path / "trained.safetensors", metadata=metadata)
    report = json.loads(movq("info", tmp_path / "trained.safetensors", "--json").stdout)
    assert report["file"] == {"tensors": 229 + 2, "parameters": 2_718_159 + 1 + 384}
    assert report["decoder"] == {"tensors": 163, "parameters": 1_702_039}
    assert report["encoder"] == {"present": True, "tensors": 66, "parameters": 1_016_120, "problem": None}


def test_an_encoder_that_does_not_fit_is_reported_and_the_decoder_still_described(bundled_tensors, tmp_path):
    tensors, metadata = bundled_tensors
    damaged = {name: tensor for name, tensor in tensors.items() if name != "encoder.conv_out.bias"}
    save_file(damaged, tmp_path / "damaged.safetensors", metadata=metadata)
    result = movq("info", tmp_path / "damaged.safetensors", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["decoder"] == {"tensors": 163, "parameters": 1_702_039}
    assert report["encoder"]["present"] is True and report["encoder"]["tensors"] == 65
    assert "missing: encoder.conv_out.bias" in report["encoder"]["problem"]
    assert "cannot encode" in movq("info", tmp_path / "damaged.safetensors").stdout


def test_info_on_a_decoder_only_file_says_there_is_no_encoder(ckpt, tmp_path):
    weights.save(weights.load(ckpt), tmp_path / "decoder.safetensors")
    report = json.loads(movq("info", tmp_path / "decoder.safetensors", "--json").stdout)
    assert report["encoder"] == {"present": False, "tensors": 0, "parameters": 0, "problem": None}
    assert report["file"] == {"tensors": report["decoder"]["tensors"], "parameters": report["decoder"]["parameters"]}
    assert "none (decoding only)" in movq("info", tmp_path / "decoder.safetensors").stdout
