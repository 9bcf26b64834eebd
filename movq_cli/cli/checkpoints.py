"""`movq convert`, `movq info` and `movq inspect`: checkpoints and code files, examined and converted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from movq_cli.cli.app import command
from movq_cli.cli.console import reported_errors, stderr
from movq_cli.cli.options import (
    DTYPE_NAMES,
    CodesArgument,
    GridOption,
    ImageOption,
    JsonOption,
    KeyOption,
    QuietOption,
    TokenOffsetOption,
    TokensOption,
    WeightsArgument,
    parse_grid,
    typer_parser,
)
from movq_cli.errors import as_flags

stdout = Console(highlight=False)


@command(
    epilog=(
        "Examples:\n\n"
        "  movq convert movq_final.ckpt movq.safetensors\n\n"
        "  movq convert kandinsky-2-2-decoder/movq movq-fp16.safetensors --dtype fp16\n\n"
        "  movq convert decoder.pt movq.safetensors --config kandinsky-2.2"
    ),
)
def convert(
    source: WeightsArgument,
    target: Annotated[
        Path, typer.Argument(help="The native file to write: NAME.safetensors.", metavar="TARGET", show_default=False)
    ],
    dtype: Annotated[
        str | None,
        typer.Option(metavar="DTYPE", help=f"Store the tensors as {', '.join(DTYPE_NAMES)} (default: as in SOURCE)."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            metavar="CONFIG",
            help="Config instead of the one found or inferred: a preset (kandinsky-2.2, kandinsky-3, movqgan-67m, "
            "...), or a JSON file of MovqConfig fields or a diffusers config.json.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing TARGET.")] = False,
    no_encoder: Annotated[
        bool, typer.Option("--no-encoder", help="Leave the encoder out (kept by default, for movq encode).")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Convert any supported checkpoint into one native .safetensors file (config in its metadata)."""
    with reported_errors():
        from movq_cli.checkpoints import weights as weights_io
        from movq_cli.checkpoints.reading import read_config
        from movq_cli.device import resolve_dtype

        checkpoint = weights_io.convert(
            source,
            target,
            dtype=resolve_dtype(dtype) if dtype else None,
            config=read_config(config) if config else None,
            overwrite=overwrite,
            encoder=not no_encoder,
        )
        if not quiet:
            stderr.print(f"read {checkpoint.layout} layout (config {checkpoint.config_source})", soft_wrap=True)
            stderr.print(f"wrote {_contents(checkpoint)} to {target}", soft_wrap=True, markup=False)
        print(target)


def _contents(checkpoint) -> str:
    """What a converted file holds: "the decoder and the encoder, 214 tensors, 6.5 MiB, float32"."""
    tensors = checkpoint.state.values()
    parts = (
        "the decoder and the encoder"
        if any(name.startswith("encoder.") for name in checkpoint.state)
        else ("the decoder only")
    )
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in tensors})
    return f"{parts}, {len(checkpoint.state)} tensors, {size / (1 << 20):.1f} MiB, {'/'.join(dtypes)}"


@command(epilog="Examples:\n\n  movq info movq_final.ckpt\n\n  movq info kandinsky-3/movq --grid 64x64 --json")
def info(
    weights: WeightsArgument,
    grid: Annotated[
        Any, typer.Option(metavar="HxW", help="Codes per frame, for the frame size.", parser=typer_parser(parse_grid))
    ] = "32x32",
    as_json: JsonOption = False,
) -> None:
    """Show a checkpoint's family, layout, config, sizes, codebook, downsampling and attention."""
    with reported_errors():
        from movq_cli.report import checkpoint_info

        report = checkpoint_info(weights, grid)
    if as_json:
        print(json.dumps(report))
        return
    height, width = report["frame_size"]
    encoder = report["encoder"]
    encoder_size = f"{encoder['parameters']:,} parameters ({encoder['tensors']} tensors)"
    if encoder["problem"]:
        encoder_size += f"; cannot encode: {encoder['problem']}"
    rows = {
        "file": report["path"],
        "family": report["family"],
        "layout": report["layout"],
        "config": f"{report['config_source']}: {json.dumps(report['config'])}",
        "file holds": f"{report['file']['tensors']} tensors, {report['file']['parameters']:,} parameters",
        "decoder": f"{report['decoder']['parameters']:,} parameters ({report['decoder']['tensors']} tensors)",
        "encoder": encoder_size if encoder["present"] else "none (decoding only)",
        "stored dtype": ", ".join(report["dtypes"]),
    }
    if report["family"] == "cogvideox":
        scale = report["scaling_factor"]
        rows["scaling factor"] = "unknown (no config.json: decode --unscaled latents)" if scale is None else str(scale)
        rows["downsampling"] = f"x{report['factor']} in space, x{report['temporal_compression']} in time"
        rows[f"frame for {grid[0]}x{grid[1]} latents"] = f"{height}x{width} pixels"
    else:
        attention = report["attention"]
        where = [f"level {level}" for level in attention["levels"]] + (["middle"] if attention["mid"] else [])
        rows["codebook"] = "none (latents only)" if report["codebook_size"] is None else str(report["codebook_size"])
        rows["downsampling"] = f"x{report['factor']}"
        if "temporal_compression" in report:  # Emu3: 4 frames a latent frame
            rows["downsampling"] += f" in space, x{report['temporal_compression']} in time"
        rows["attention"] = ", ".join(where) or "none"
        rows[f"frame for {grid[0]}x{grid[1]} codes"] = f"{height}x{width} pixels"
    _print_table(rows)


@command(
    epilog=(
        "Examples:\n\n"
        "  movq inspect clip.npy --weights movq.safetensors\n\n"
        "  movq inspect tokens.npz --key tokens --grid 32x32 --json\n\n"
        "  movq inspect generated.pt --tokens emu3"
    ),
)
def inspect(
    codes: CodesArgument,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            metavar="WEIGHTS",
            help="Also check that the codes fit this model (exit 1 when they do not).",
        ),
    ] = None,
    grid: GridOption = None,
    key: KeyOption = None,
    tokens: TokensOption = None,
    token_offset: TokenOffsetOption = None,
    image: ImageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Describe a code file: shape, reading, range, most used codes, NaN/Inf; and whether it fits a model."""
    with reported_errors():
        from movq_cli import load
        from movq_cli.io import codes as codes_io
        from movq_cli.report import codes_report

        clip = codes_io.read(codes, key=key, grid=grid, tokens=tokens, token_offset=token_offset, image=image)
        model = load(weights, "cpu") if weights is not None else None
        report = codes_report(clip, model)
    _print_codes_report(report, as_json)
    if report.get("fits") is False:
        raise typer.Exit(1)


def _print_codes_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    rows = {
        "file": report["path"],
        "shape": f"{tuple(report['shape'])} {report['dtype']}",
        "read as": report["read_as"],
        "range": f"{report['min']} .. {report['max']}",
    }
    if report["kind"] == "codes":
        rows["distinct codes"] = str(report["distinct"])
        rows["most used"] = ", ".join(f"{code} ({count}x)" for code, count in report["top"])
    else:
        rows["NaN / Inf"] = f"{report['nan']} / {report['inf']}"
    if "fits" in report:
        rows["fits the model"] = "yes" if report["fits"] else f"no: {report['reason']}"
        height, width = report["frame_size"]
        rows["decodes to"] = f"{report['output_frames']} frame(s) of {height}x{width}"
        if report["decoding"]:
            rows["decoded as"] = as_flags(report["decoding"])
    _print_table(rows)


def _print_table(rows: dict[str, str]) -> None:
    """Label and value a row: a table on a terminal; elsewhere plain lines, never wrapped, for scripts and copying."""
    if not stdout.is_terminal:
        width = max(map(len, rows))
        for label, value in rows.items():
            print(f"{label:<{width}}  {value}")
        return
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in rows.items():
        table.add_row(label, escape(value))
    stdout.print(table)
