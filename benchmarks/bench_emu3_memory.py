"""Emu3 decode memory by clip length: movq's stream against transformers' Emu3VQVAE.decode.

    python benchmarks/bench_emu3_memory.py                        # 8x8 codes, T = 2 and 8
    python benchmarks/bench_emu3_memory.py --grid 16 --frames 2 16

The released decoder (width 256, random weights), fp32 on the CPU. Each decode runs in a fresh
process: the model is built, the peak resident memory is reset (/proc/self/clear_refs), the clip
(1, T, g, g) is decoded, and the peak since the reset (VmHWM) less the resident memory before it
is reported: what the decode itself held. movq streams the clip (its default chunk, the 2D
decoder one frame a call) and turns each chunk into uint8 pixels as a writer would;
transformers decodes the clip whole, as `Emu3VQVAE.decode` does. No timing: see the benchmark
beside the others for speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from movq_cli.models.config import emu3_preset


def cpu_name() -> str:
    found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return found.group(1) if found else platform.machine()


def resident_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


def random_(model: torch.nn.Module) -> None:
    """Weights that keep activations finite; what they decode to does not matter here."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                tensor.fill_(1.0)
            elif tensor.is_floating_point():
                tensor.normal_(0, 0.02)


def decode_once(side: str, frames: int, grid: int) -> dict:
    torch.manual_seed(0)
    codes = torch.randint(0, 32768, (1, frames, grid, grid))
    if side == "movq":
        from movq_cli.checkpoints.building import build
        from movq_cli.models.emu3 import Emu3

        weights = Emu3(emu3_preset("emu3"))
        random_(weights)
        model = build(emu3_preset("emu3"), weights.state_dict())  # as a checkpoint loads
        del weights
    else:
        from transformers import Emu3VQVAE, Emu3VQVAEConfig

        with torch.device("meta"):
            model = Emu3VQVAE(Emu3VQVAEConfig())
        model.encoder = model.quant_conv = None  # decoding never reads them
        model.to_empty(device="cpu")
        random_(model)
        model.eval()
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    before = resident_kib("VmRSS")
    with torch.inference_mode():
        if side == "movq":
            chunks = torch.split(codes, model.schedule(frames), dim=1)
            for images in model.decode_stream(chunks):
                model.to_pixels(images[0].transpose(0, 1))
        else:
            model.decode(codes)
    return {"peak_mib": (resident_kib("VmHWM") - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=8, help="codes per side")
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 8], help="latent frames T")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # side frames: run one decode, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(decode_once(args.one[0], int(args.one[1]), args.grid)))
        return
    print(f"# {' '.join(sys.argv)}; {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"released Emu3 decoder (ch 256), fp32, CPU; codes {args.grid}x{args.grid}; one fresh process per figure")
    for frames in args.frames:
        for side in ("movq", "transformers"):
            command = [sys.executable, __file__, "--grid", str(args.grid), "--one", side, str(frames)]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            pixels = 8 * args.grid
            print(
                f"T={frames:<3} -> {4 * frames:3} frames {pixels}x{pixels}  {side:12}  decode peak {result['peak_mib']:7.0f} MiB"
            )


if __name__ == "__main__":
    main()
