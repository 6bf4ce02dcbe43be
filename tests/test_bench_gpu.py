"""bench/gpu.py runs to completion in its reduced mode on a CPU (so the GPU script does not rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_reduced_mode_runs_on_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--reduced", "--device", "cpu",
                           "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "reduced (tiny sizes), random init, on CPU" in out
    for precision in ("fp32", "int8"):  # a CPU decodes in both; int8 is the default
        assert f"== decode ({precision})" in out
    steps = re.findall(r"(\d) beam\(s\): +([\d.]+) ms/step, floor +([\d.]+) ms/step", out)
    assert [b for b, _, _ in steps] == ["1", "3", "1", "3"]
    assert all(float(ms) > 0 and float(floor) > 0 for _, ms, floor in steps)
    rtf = re.search(r"end to end, default settings \(3-beam sampling, int8\): RTF ([\d.]+)", out)
    assert rtf and float(rtf.group(1)) > 0
    rates = re.findall(r"(lora(?:-lowmem)?\.yaml) .*: +(\d+) positions/s, peak memory +(\d+) MB", out)
    assert [r[0] for r in rates] == ["lora.yaml", "lora-lowmem.yaml"] and all(int(r[1]) > 0 for r in rates)
    assert len(re.findall(r"epoch of 3 h: [\d.]+ min", out)) == 2
    assert "RNG states restore exactly (resume): True" in out
