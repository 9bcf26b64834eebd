"""The decode pipeline: codes (lazy) -> chunk -> device -> decoder -> uint8 -> host -> writer.

Decoding runs on the calling thread; a writer thread encodes what it is handed through a
bounded queue, so encoding overlaps decoding and memory stays flat however long the clip.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from movq_cli.errors import InputError, OutOfMemory, run_errors
from movq_cli.io.codes import Codes
from movq_cli.io.writers import PngFolderWriter, WriteOptions, Writer, get_writer, writer_class
from movq_cli.models.family import DecodeOptions, Family, family_of, selected_numbers

QUEUE_CHUNKS = 2  # decoded chunks that may wait for the writer
UNBLOCK_AFTER = 1.0  # seconds an abandoned writer may take to finish its write before it is aborted
_END = object()  # the end of the frames, in the writer's queue
POLL_SECONDS = 0.1  # how often an idle writer thread looks whether it was abandoned


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


@dataclass(frozen=True)
class Plan:
    """What a decode reads and what it keeps: the clip to read (only the frames selected, where
    frames decode independently), and which output frames to keep (None: every one)."""

    clip: Codes
    numbers: list[int]  # the output frames, numbered as in the whole output
    keep: list[int] | None = None

    @property
    def n_frames(self) -> int:
        return len(self.numbers)


def plan(family: Family, clip: Codes, frames: slice | Sequence[int] | None = None) -> Plan:
    """The plan for decoding `frames` (output frame numbers; None: all) of `clip` with `family`."""
    if family.independent_frames:
        chosen = clip if frames is None else clip.select(frames)
        return Plan(chosen, [chosen.frame_number(i) for i in range(chosen.n_frames)])
    every = family.output_frames(clip.n_frames)
    if frames is None:
        return Plan(clip, list(range(every)))
    numbers = selected_numbers(every, frames)
    return Plan(clip, numbers, sorted(set(numbers)))


def count_frames(model: torch.nn.Module, clip: Codes, frames: slice | Sequence[int] | None = None) -> int:
    """How many frames decoding `frames` (None: all) of `clip` with `model` writes."""
    family = family_of(model)
    return plan(family, family.conform(clip, DecodeOptions())[0], frames).n_frames


def decode_frames(
    model: torch.nn.Module,
    clip: Codes | Plan,
    device: torch.device | None = None,
    chunk: int | None = None,
    options: DecodeOptions | None = None,
    ahead: int | None = None,
) -> Iterator[np.ndarray]:
    """Decode a clip (or a plan's frames) a chunk at a time, yielding host uint8 arrays (n, H, W, 3) in order.

    `chunk` is a 2D model's frames per decoder call (None: from the device's memory). `ahead`
    chunks are queued on the device before the oldest copy to the host is waited for (1 on
    CUDA, so the GPU is never idle while the host waits; 0 elsewhere).
    """
    family = family_of(model)
    plan_ = clip if isinstance(clip, Plan) else plan(family, clip)
    device = device or family.device
    ahead = (1 if device.type == "cuda" else 0) if ahead is None else ahead
    in_flight: deque[HostCopy] = deque()
    for pixels in _pixel_chunks(family, plan_, chunk, options or DecodeOptions()):
        in_flight.append(HostCopy(pixels))
        if len(in_flight) > ahead:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _pixel_chunks(family: Family, plan_: Plan, chunk: int | None, options: DecodeOptions) -> Iterator[torch.Tensor]:
    """uint8 pixels (n, H, W, 3) on the device, chunk by chunk, of the plan's output frames only."""
    clip = plan_.clip
    sizes = family.chunk_sizes(clip, chunk)
    starts = np.cumsum([0, *sizes[:-1]])
    blocks = (family.to_device(clip.frames(start, start + size)) for start, size in zip(starts, sizes, strict=True))
    first = 0  # the output number of the next frame out of the decoder
    for images in family.stream(blocks, options):
        pixels = to_pixels(images)
        if plan_.keep is None:
            yield pixels
        else:
            numbers = range(first, first + len(pixels))
            wanted = [n - first for n in plan_.keep if n in numbers]
            if wanted:
                yield pixels[wanted]
            if plan_.keep[-1] < numbers.stop:
                break  # the rest of the video is not asked for
        first += len(images)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a loaded model's weights are on."""
    return next(model.parameters()).device


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
        while True:
            try:
                frames = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:  # abandoned by an interrupted decoding thread, whose last word may be lost
                if self._abandoned.is_set():
                    return
                continue
            if frames is _END:
                return
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


def _check_not_input(output: Path, codes: Path) -> None:
    output, codes = output.resolve(), codes.resolve()
    if codes == output:
        raise InputError(f"writing {output} would replace the input {codes}")
    if codes.is_relative_to(output):
        raise InputError(
            f"writing {output} would replace the input {codes}, which is in it; "
            f"to write one file there, name it: {output / codes.stem}.mp4"
        )


def _file_numbers(plan_: Plan, output: str | Path) -> tuple[int, ...]:
    """The numbers of the frames a plan writes, in the order they are written, to name them by."""
    if writer_class(output) is not PngFolderWriter:
        raise InputError("source_numbers=True names the files of a folder of PNG frames; this output is one file")
    numbers = tuple(plan_.keep if plan_.keep is not None else plan_.numbers)
    if len(set(numbers)) != len(numbers):
        raise InputError("source_numbers=True needs each frame once: the selection repeats a frame")
    return numbers


def decode_to_file(
    model: torch.nn.Module,
    clip: Codes,
    output: str | Path,
    device: torch.device | None = None,
    chunk: int | None = None,
    fps: float | None = None,
    crf: int | None = None,
    snap: bool = False,
    overwrite: bool = False,
    on_frames: Callable[[int], None] | None = None,
    encoder: str | None = None,
    frames: slice | Sequence[int] | None = None,
    unscaled: bool = False,
    tile: tuple[int, int] | None = None,
    source_numbers: bool = False,
) -> DecodeResult:
    """Decode `clip` (its output `frames`, None: all) into `output`: a video or animation, one
    picture, or a folder of PNG frames, as its suffix says (a str keeps the trailing slash that
    names a folder). `fps`, `crf` and `encoder` (an MP4's, from writers.ENCODERS) are for the
    formats that use them (None: the format's default); given for another, InputError. `snap`,
    `unscaled` and `tile` say how latents are taken and decoded (see DecodeOptions). With
    `source_numbers` a folder's PNG frames are named by their number in the whole output
    (00010.png, 00020.png, ...), not 00000.png on. The model decodes on the device its weights are
    on (`device`, if given, must be that one).

    Everything is checked before decoding starts; on any failure or interruption the
    partial output is removed and the target is left as it was.
    """
    family = family_of(model)
    if device is not None and torch.device(device) != family.device:
        raise ValueError(f"the model is on {family.device}, not {device}")
    clip, options = family.conform(clip, DecodeOptions(snap=snap, unscaled=unscaled, tile=tile))
    family.check_memory(clip, options)  # before a selection of frames is read
    plan_ = plan(family, clip, frames)
    family.check(plan_.clip, options)
    if not clip.in_memory:
        _check_not_input(Path(output), clip.path)
    frame_size = family.frame_size(clip.grid)
    started = time.perf_counter()
    numbers = _file_numbers(plan_, output) if source_numbers else None
    writer = get_writer(output, frame_size, plan_.n_frames, WriteOptions(fps, crf, encoder, numbers), overwrite)
    try:
        with run_errors(f"decoding {clip.path.name}", family.device), BackgroundWriter(writer) as background:
            for pixels in decode_frames(model, plan_, chunk=chunk, options=options):
                background.put(pixels)
                if on_frames:
                    on_frames(len(pixels))
    except OutOfMemory as error:
        error.hint = family.memory_hint(options) or error.hint
        raise
    return DecodeResult(Path(output), plan_.n_frames, frame_size, time.perf_counter() - started)
