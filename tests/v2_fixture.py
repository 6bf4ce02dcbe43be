"""What the IndexTTS2 audio-side parity tests share: the indextts2-tiny fixture, its tolerances, key lists.

Tolerances are the fixture README's ("Determinism and tolerances"), for each stage fed the fixture's own
inputs of that stage; integers (codes, lengths) are compared exactly.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from conftest import SHARED, read_key_list

V2_FIXTURE = SHARED / "fixtures" / "indextts2-tiny"
V2_CHECKPOINT = V2_FIXTURE / "checkpoint"
V2_AUX = V2_CHECKPOINT / "hf_cache"
V2_KEYS = SHARED / "spec" / "official-keys" / "v2"

ATOL = 1e-4  # resampled audio, embeddings, conditions, DiT outputs, mels out of the CFM, waveforms
MEL_ATOL = 2e-3  # log mels and fbank: the log magnifies rounding in near-silent bins
VOCODER_ATOL = 2e-4  # BigVGAN alone on a real mel (7 % of samples at the clamp)
CHAINED_ATOL = 1e-3  # a stage fed this implementation's own upstream outputs
PCM_LSB = 4

# end-to-end runs of the fixture -> the speaker reference whose prompt they use
RUN_SPEAKER = {"a_en": "a", "a_zh": "a", "a_mixed": "a", "a_tag": "a", "b_emoref_en": "b", "b_emovec_zh": "b"}
REFERENCE_FILES = {"a": "ref_a_24k.wav", "b": "ref_b_22k.wav"}


def require_v2() -> Path:
    """The fixture folder, or a skip naming where it was looked for."""
    if not (V2_FIXTURE / "expected.safetensors").is_file():
        pytest.skip(f"IndexTTS2 parity fixture not found at {V2_FIXTURE} (it ships beside the repo in ../shared)")
    return V2_FIXTURE


def require_keys() -> Path:
    if not V2_KEYS.is_dir():
        pytest.skip(f"official IndexTTS2 key lists not found at {V2_KEYS}")
    return V2_KEYS


@lru_cache(maxsize=1)
def _expected() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(V2_FIXTURE / "expected.safetensors"))


def expected(name: str) -> torch.Tensor:
    require_v2()
    return _expected()[name]


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
    assert err <= atol, f"{name}: max |diff| {err:.3g} > {atol:g}"


def assert_official_keys(state: dict[str, torch.Tensor], dump: str) -> None:
    """``state`` has exactly the keys, shapes and dtypes of an official-keys/v2 dump, and its listed size."""
    keys = require_keys()
    got = {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}
    want = read_key_list(keys / dump)
    assert sorted(set(got) ^ set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    row = re.search(rf"\| {re.escape(dump)}[^|]*\| (\d+) \| ([\d.]+) M \|", (keys / "README.md").read_text())
    assert row, f"{dump} is not in the key lists' README table"
    assert len(state) == int(row.group(1))
    assert round(sum(t.numel() for t in state.values()) / 1e6, 2) == float(row.group(2))
