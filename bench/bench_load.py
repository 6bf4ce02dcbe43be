"""Load time and peak memory of a full-size random-init IndexTTS-1.5 GPT, and GPT forward throughput.

Each measurement runs in a fresh subprocess (peak RSS is per process). The baseline is the usual way:
build the model with random init on the CPU, ``torch.load`` the whole file into memory, then
``load_state_dict`` (copy). tagtune builds on the meta device, memory-maps the file and assigns tensors.

    python bench/bench_load.py [--workdir /tmp/tagtune-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = r"""
import json, sys, time, torch
from pathlib import Path
torch.set_num_threads(2)
mode, folder = sys.argv[1], Path(sys.argv[2])
t0 = time.perf_counter()
if mode == "baseline":
    from tagtune.checkpoint import read_config
    from tagtune.models.unified_voice import UnifiedVoice
    cfg = read_config(folder)
    model = UnifiedVoice(cfg.gpt)
    sd = torch.load(folder / cfg.gpt_checkpoint, map_location="cpu", weights_only=True)
    sd = {k: v.float() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    del sd
else:
    from tagtune.checkpoint import load_gpt
    model = load_gpt(folder)
dt = time.perf_counter() - t0
def peak_mb():
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork/exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
out = {"load_s": dt, "peak_mb": peak_mb()}
model.eval()
with torch.no_grad():  # one short forward touches every weight (memory-mapped pages count from here on)
    model.gpt(torch.zeros(1, 8, model.text_embedding.weight.shape[1]))
out["peak_after_forward_mb"] = peak_mb()
if len(sys.argv) > 3:
    D = model.cfg.model_dim if hasattr(model, "cfg") else model.text_embedding.weight.shape[1]
    x = torch.randn(1, int(sys.argv[3]), D)
    with torch.no_grad():
        model.gpt(x)
        t0 = time.perf_counter(); n = 3
        for _ in range(n):
            model.gpt(x)
        out["fwd_tokens_per_s"] = n * x.shape[1] / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def make_checkpoint(folder: Path, dtype: torch.dtype) -> float:
    """A full-size v1.5 folder with random weights, written with our own code; returns the gpt.pth size in MB."""
    from tagtune.checkpoint import save_pth, write_config
    from tagtune.config import v1_5
    from tagtune.models.unified_voice import UnifiedVoice

    cfg = v1_5()
    torch.manual_seed(0)
    model = UnifiedVoice(cfg.gpt)
    state = model.state_dict()
    save_pth(folder / "gpt.pth", {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    write_config(folder, cfg)
    return (folder / "gpt.pth").stat().st_size / 2**20


def run_child(mode: str, folder: Path, seq: int | None = None) -> dict:
    args = [sys.executable, "-c", CHILD, mode, str(folder)] + ([str(seq)] if seq else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--seq", type=int, default=400, help="sequence length of the forward-throughput test")
    a = ap.parse_args()
    root = a.workdir or Path(tempfile.mkdtemp(prefix="tagtune-bench-"))
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        size = make_checkpoint(folder, dtype)
        base = run_child("baseline", folder)
        ours = run_child("tagtune", folder, a.seq if name == "fp32" else None)
        print(f"[{name} gpt.pth {size:.0f} MB] baseline load {base['load_s']:.2f} s, peak {base['peak_mb']:.0f} MB | "
              f"tagtune load {ours['load_s']:.2f} s, peak {ours['peak_mb']:.0f} MB "
              f"({ours['peak_after_forward_mb']:.0f} MB after a forward; "
              f"baseline {base['peak_after_forward_mb']:.0f}) | speed x{base['load_s'] / ours['load_s']:.2f}, "
              f"memory x{base['peak_after_forward_mb'] / ours['peak_after_forward_mb']:.2f} (after a forward)")
        if "fwd_tokens_per_s" in ours:
            print(f"  GPT forward, batch 1, {a.seq} positions, fp32: {ours['fwd_tokens_per_s']:.0f} positions/s")


if __name__ == "__main__":
    main()
