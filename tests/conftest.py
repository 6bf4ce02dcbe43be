"""Shared test fixtures.

A test that needs a model uses the tiny base that ships in the package (``shipped_base``) or builds its own.
Only the official-parity tests read ../shared (the parity fixture, whose expected values the official code
computed, and the official key lists); they skip, naming what is missing, when it is absent.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TAGTUNE_SHARED", REPO.parent / "shared"))
TINY_FIXTURE = SHARED / "fixtures" / "indextts-tiny"
OFFICIAL_KEYS = SHARED / "spec" / "official-keys"
SHIPPED_BASE = Path(str(resources.files("tagtune") / "assets" / "tiny-base"))

# Tiny models: thread start-up costs more than it saves; one thread is also what the fixture used.
torch.set_num_threads(1)

# shared fixtures: a reference clip and model inputs for the shipped base, a tiny prepared corpus and a trained
# run (training, export, synthesis), and a corpus with exact event boundaries (evaluation)
pytest_plugins = ["base_fixtures", "train_fixtures", "eval_fixtures"]


@pytest.fixture(scope="session")
def shipped_base() -> Path:
    """The tiny base model shipped in the package (official folder layout): the model of every non-parity test."""
    if not (SHIPPED_BASE / "config.yaml").is_file():
        pytest.fail(f"the tiny base is missing from {SHIPPED_BASE}: run python -m tagtune.tiny.build")
    return SHIPPED_BASE


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The official-parity fixture folder (checkpoint/, inputs/, expected.safetensors, README.md); parity only."""
    if not (TINY_FIXTURE / "expected.safetensors").exists():
        pytest.skip(f"parity fixture not found at {TINY_FIXTURE} (it ships beside the repo in ../shared)")
    return TINY_FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "expected.safetensors"))


@pytest.fixture(scope="session")
def official_keys_dir() -> Path:
    if not OFFICIAL_KEYS.is_dir():
        pytest.skip(f"official key lists not found at {OFFICIAL_KEYS}")
    return OFFICIAL_KEYS


def read_key_list(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Official dump ``key<TAB>(shape)<TAB>dtype`` -> {key: (shape, dtype)}; '#' lines are comments."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return out


def official_param_count(path: Path) -> int:
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("# params:"))
    return int(line.split(":")[1])
