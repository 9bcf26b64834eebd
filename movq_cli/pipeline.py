"""The decode pipeline: codes (lazy) -> chunk -> device -> decoder -> uint8 -> host -> writer.

Decoding runs on the calling thread; a writer thread encodes what it is handed through a
bounded queue, so encoding overlaps decoding and memory stays flat however long the clip.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from movq_cli.device import auto_chunk
from movq_cli.errors import InputError, OutOfMemory, RunError, first_line
from movq_cli.io import codes as codes_io
from movq_cli.io.codes import Codes
from movq_cli.io.writers import WriteOptions, Writer, get_writer, reason
from movq_cli.memory import check_frame_fits
from movq_cli.models.movq import Movq

QUEUE_CHUNKS = 2  # decoded chunks that may wait for the writer
UNBLOCK_AFTER = 1.0  # seconds an abandoned writer may take to finish its write before it is aborted
_END = object()  # the end of the frames, in the writer's queue


@dataclass(frozen=True)
class DecodeResult:
    output: Path
    frames: int
    frame_size: tuple[int, int]  # (height, width)
    seconds: float


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Decoder output (B, 3, H, W) -> (B, H, W, 3) uint8: round(clamp((x + 1) / 2, 0, 1) * 255)."""
    pixels = (images.float() + 1).div_(2).clamp_(0, 1).mul_(255).round_()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1)


def decode_chunk(model: Movq, block: np.ndarray, device: torch.device, snap: bool = False) -> torch.Tensor:
    """One chunk of codes (n, H, W) or latents (n, e, H, W) -> uint8 pixels (n, H', W', 3) on `device`."""
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        if block.dtype.kind == "f":
            zq = _to_device(torch.from_numpy(block), device).to(dtype)
            if snap:
                zq = model.quantize.snap(zq)
            images = model(zq)
        else:
            indices = _to_device(torch.from_numpy(block.astype(np.int64, copy=False)), device)
            images = model.decode_codes(indices)
        return to_pixels(images)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device; on CUDA from pinned memory, so that the copy does not hold up the host."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class HostCopy:
    """A chunk of device pixels on its way to host memory.

    On CUDA the copy runs on a side stream into pinned memory and is only waited for in
    result(), so the decoder can be handed the next chunk first; elsewhere it is done at once.
    """

    _streams: dict[torch.device, torch.cuda.Stream] = {}

    def __init__(self, pixels: torch.Tensor) -> None:
        self.done = None
        if pixels.device.type != "cuda":
            self.host = pixels.cpu()
            return
        stream = self._streams.setdefault(pixels.device, torch.cuda.Stream(pixels.device))
        stream.wait_stream(torch.cuda.current_stream(pixels.device))  # after the decode that made pixels
        self.host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
        with torch.cuda.stream(stream):
            self.host.copy_(pixels, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(stream)
        pixels.record_stream(stream)  # the allocator keeps pixels until the copy has read them

    def result(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()


def decode_frames(
    model: Movq, clip: Codes, device: torch.device, chunk: int, snap: bool = False, ahead: int | None = None
) -> Iterator[np.ndarray]:
    """Decode a clip `chunk` frames at a time, yielding host uint8 arrays (n, H, W, 3) in order.

    `ahead` chunks are queued on the device before the oldest copy to the host is waited for
    (1 on CUDA, so the GPU is never idle while the host waits; 0 elsewhere).
    """
    ahead = (1 if device.type == "cuda" else 0) if ahead is None else ahead
    in_flight: deque[HostCopy] = deque()
    for _, block in clip.chunks(chunk):
        in_flight.append(HostCopy(decode_chunk(model, block, device, snap)))
        if len(in_flight) > ahead:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a loaded model's weights are on."""
    return next(model.parameters()).device


def frame_chunks(
    model: Movq, clip: Codes, device: torch.device, chunk: int | None = None, snap: bool = False
) -> Iterator[np.ndarray]:
    """`decode_frames` with the chunk size chosen from the device's memory when `chunk` is None."""
    dtype = next(model.parameters()).dtype
    yield from decode_frames(model, clip, device, chunk or auto_chunk(model.config, clip.grid, device, dtype), snap)


class BackgroundWriter:
    """A writer fed from a thread of its own through a bounded queue, so that encoding overlaps decoding.

    Used as a context manager, it owns the writer's life: leaving the block normally waits for
    every frame to be written, raises what the writer raised, and finishes the output; leaving it
    with an exception stops the thread without writing what is still queued and aborts the writer.
    """

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="movq-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        try:
            self._thread.start()
        except BaseException:
            self.writer.abort()
            raise
        return self

    def put(self, frames: np.ndarray) -> None:
        """Hand frames (n, H, W, 3) to the writer; waits while QUEUE_CHUNKS chunks are queued."""
        if self._error is not None:
            raise self._error
        self._queue.put(frames)

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self._abandon()
            return
        try:
            self._queue.put(_END)
            self._thread.join()
        except BaseException:  # Ctrl-C while the last chunks are written
            self._abandon()
            raise
        with self.writer:  # finishes the output, or aborts it if writing failed
            if self._error is not None:
                raise self._error

    def _run(self) -> None:
        while (frames := self._queue.get()) is not _END:
            if self._error is None and not self._abandoned.is_set():
                try:
                    self.writer.write(frames)
                except BaseException as error:  # raised on the decoding thread
                    self._error = error

    def _abandon(self) -> None:
        self._abandoned.set()
        with suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._queue.put_nowait(_END)
        self._thread.join(timeout=UNBLOCK_AFTER)
        if self._thread.is_alive():  # stuck in a write: aborting kills ffmpeg, which ends it
            self.writer.abort()
            self._thread.join()
        self.writer.abort()  # after the thread, so that nothing it writes outlives the abort


def check_decodable(model: Movq, clip: Codes, device: torch.device, snap: bool = False) -> None:
    """Raise InputError unless `model` can decode every frame of `clip` on `device`.

    The memory estimate comes first, so that an absurd frame size is refused before its codes are scanned."""
    check_frame_fits(model.config, clip.grid, device, next(model.parameters()).dtype)
    codes_io.check_fits(clip, model.config)
    if snap and not model.has_codebook:
        raise InputError("--snap needs a codebook, and this model has none")


def _check_not_input(output: Path, codes: Path) -> None:
    output, codes = output.resolve(), codes.resolve()
    if codes == output or codes.is_relative_to(output):
        raise InputError(f"writing {output} would replace the input {codes}")


def decode_to_file(
    model: Movq,
    clip: Codes,
    output: str | Path,
    device: torch.device,
    chunk: int | None = None,
    fps: float | None = None,
    crf: int | None = None,
    snap: bool = False,
    overwrite: bool = False,
    on_frames: Callable[[int], None] | None = None,
    encoder: str | None = None,
) -> DecodeResult:
    """Decode `clip` into `output`: a video or animation, one picture, or a folder of PNG frames,
    as its suffix says (a str keeps the trailing slash that names a folder). `fps`, `crf` and
    `encoder` (an MP4's, from writers.ENCODERS) are for the formats that use them (None: the
    format's default); given for another, InputError.

    Everything is checked before decoding starts; on any failure or interruption the
    partial output is removed and the target is left as it was.
    """
    check_decodable(model, clip, device, snap)
    _check_not_input(Path(output), clip.path)
    config = model.config
    frame_size = (clip.grid[0] * config.factor, clip.grid[1] * config.factor)
    dtype = next(model.parameters()).dtype
    chunk = chunk or auto_chunk(config, clip.grid, device, dtype)
    started = time.perf_counter()
    writer = get_writer(output, frame_size, clip.n_frames, WriteOptions(fps, crf, encoder), overwrite)
    try:
        with BackgroundWriter(writer) as background:
            for frames in decode_frames(model, clip, device, chunk, snap):
                background.put(frames)
                if on_frames:
                    on_frames(len(frames))
    except torch.OutOfMemoryError:
        raise OutOfMemory(f"out of memory on {device} with --chunk {chunk}") from None
    except RuntimeError as error:
        raise RunError(f"decoding failed on {device}: {first_line(error)}") from None
    except OSError as error:
        raise RunError(f"cannot write {output}: {reason(error)}") from None
    return DecodeResult(Path(output), clip.n_frames, frame_size, time.perf_counter() - started)
