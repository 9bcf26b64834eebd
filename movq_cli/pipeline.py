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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from movq_cli.errors import InputError, OutOfMemory, run_errors
from movq_cli.io.codes import Clip
from movq_cli.io.writers import WriteOptions, Writer, get_writer, writer_class
from movq_cli.models.family import DecodeOptions, Family, family_of, selected_numbers
from movq_cli.models.fastconv import derive_kernels

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
    """A decode made ready by `prepare`, checked: the family that decodes it, the clip to read
    (only the frames selected, where frames decode independently), how it decodes, its chunks
    (file frames per decoder call), and which output frames it keeps (None: every one)."""

    family: Family
    clip: Clip
    options: DecodeOptions
    chunks: list[int]
    numbers: list[int]  # the output frames, numbered as in the whole output
    total: int  # the frames of the whole output
    keep: list[int] | None = None

    @property
    def n_frames(self) -> int:
        return len(self.numbers)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.family.frame_size(self.clip.grid)


def prepare(
    model: torch.nn.Module,
    clip: Clip,
    frames: slice | Sequence[int] | Callable[[int], Sequence[int]] | None = None,
    options: DecodeOptions = DecodeOptions(),
) -> Plan:
    """The one preparation of every decode: `clip` (its output `frames`, None: all; a function
    picks them from the count of the whole output) decoded by `model` on the device its weights
    are on, with `options`. Raises InputError for anything that
    would not decode, before any frame is: the memory a chunk needs first (before the frames are
    read or the codes scanned), then the frames selected, then the codes themselves."""
    family = family_of(model)
    clip, options = family.conform(clip, options)
    family.check_memory(clip, options)
    keep, total = None, family.output_frames(clip)
    frames = frames(total) if callable(frames) else frames
    if family.independent(clip):
        clip = clip if frames is None else clip.select(frames)
        numbers = [clip.frame_number(i) for i in range(clip.n_frames)]
    else:
        numbers = list(range(total)) if frames is None else selected_numbers(total, frames)
        keep = None if frames is None else sorted(set(numbers))
    family.check(clip, options)
    return Plan(family, clip, options, family.chunk_sizes(clip, options.chunk), numbers, total, keep)


def decode_frames(plan: Plan, ahead: int | None = None) -> Iterator[np.ndarray]:
    """Decode a plan a chunk at a time, yielding host uint8 arrays (n, H, W, 3) of its frames in order.

    `ahead` chunks are queued on the device before the oldest copy to the host is waited for (1 on
    CUDA, so the GPU is never idle while the host waits; 0 elsewhere).
    """
    ahead = (1 if plan.family.device.type == "cuda" else 0) if ahead is None else ahead
    in_flight: deque[HostCopy] = deque()
    for pixels in _pixel_chunks(plan):
        in_flight.append(HostCopy(pixels))
        if len(in_flight) > ahead:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _pixel_chunks(plan: Plan) -> Iterator[torch.Tensor]:
    """uint8 pixels (n, H, W, 3) on the device, chunk by chunk, of the plan's output frames only."""
    family, clip = plan.family, plan.clip
    derive_kernels(family.model)  # before the first activations, not among them
    starts = np.cumsum([0, *plan.chunks[:-1]])
    blocks = (family.to_device(clip.frames(start, start + n)) for start, n in zip(starts, plan.chunks, strict=True))
    first = 0  # the output number of the next frame out of the decoder
    for images in family.stream(blocks, plan.options):
        pixels = family.to_pixels(images)
        if plan.keep is None:
            yield pixels
        else:
            numbers = range(first, first + len(pixels))
            wanted = [n - first for n in plan.keep if n in numbers]
            if wanted:
                yield pixels[wanted]
            if plan.keep[-1] < numbers.stop:
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


def _file_numbers(plan: Plan) -> tuple[int, ...]:
    """The numbers of the frames a plan writes, in the order they are written, to name them by."""
    numbers = tuple(plan.keep if plan.keep is not None else plan.numbers)
    if len(set(numbers)) != len(numbers):
        raise InputError("source_numbers=True needs each frame once: the selection repeats a frame")
    return numbers


def decode_to_file(
    plan: Plan,
    output: str | Path,
    write: WriteOptions = WriteOptions(),
    on_frames: Callable[[int], None] | None = None,
    on_pixels: Callable[[np.ndarray], None] | None = None,
) -> DecodeResult:
    """Decode a prepared plan into `output`: a video or animation, one picture, or a folder of
    PNG frames, as its suffix says (a str keeps the trailing slash that names a folder), written
    with `write` (an option the format has no use for is refused; an MP4's encoder, when not given,
    is the default for the device the plan decodes on). `on_frames(n)` hears progress;
    `on_pixels(frames)` sees each decoded batch of uint8 frames (n, H, W, 3) as it goes to the writer.

    Everything is checked before decoding starts; on any failure or interruption the
    partial output is removed and the target is left as it was.
    """
    family = plan.family
    if not plan.clip.in_memory:
        _check_not_input(Path(output), plan.clip.path)
    if write.source_numbers:
        writer_class(output).check_options(write)  # a folder of frames, before its numbers are made
        write = replace(write, numbers=_file_numbers(plan))
    started = time.perf_counter()
    writer = get_writer(output, plan.frame_size, plan.n_frames, write, family.device.type)
    try:
        with run_errors(f"decoding {plan.clip.path.name}", family.device), BackgroundWriter(writer) as background:
            for pixels in decode_frames(plan):
                if on_pixels:
                    on_pixels(pixels)
                background.put(pixels)
                if on_frames:
                    on_frames(len(pixels))
    except OutOfMemory as error:
        error.hint = family.memory_hint(plan.options) or error.hint
        raise
    return DecodeResult(Path(output), plan.n_frames, plan.frame_size, time.perf_counter() - started)
