"""DiscreteVAE: padded batches and the silence code on the shipped base; official key set and exact codes on
the fixture."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import official_param_count, read_key_list
from tagtune import audio
from tagtune.config import ModelConfig, v1_0, v1_5
from tagtune.models.dvae import PAD_CODE, DiscreteVAE

SILENCE_CODE = 52  # the official post-processing's silence code; both tiny models map digital silence to it


def state_shapes(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in module.state_dict().items()}


def _load(folder) -> DiscreteVAE:
    cfg = ModelConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    model = DiscreteVAE(cfg.vqvae).eval()
    model.load_state_dict(torch.load(folder / "dvae.pth", weights_only=True), strict=True)
    return model


@pytest.fixture(scope="module")
def dvae(shipped_base):
    return _load(shipped_base)


@pytest.fixture(scope="module")
def official(fixture_dir):
    return _load(fixture_dir / "checkpoint")


@pytest.mark.parametrize("make", [v1_0, v1_5])
def test_full_size_keys_match_official(official_keys_dir, make):
    with torch.device("meta"):
        model = DiscreteVAE(make().vqvae)
    assert state_shapes(model) == read_key_list(official_keys_dir / "sd_dvae.txt")
    assert sum(p.numel() for p in model.parameters()) == official_param_count(official_keys_dir / "sd_dvae.txt")


def test_codes_match_official(official, expected):
    codes = official.get_codebook_indices(expected["cond_mel"])
    assert codes.dtype == torch.int64
    assert torch.equal(codes, expected["dvae_codes"])


def test_codes_from_our_mel_match_official(official, expected, fixture_dir):
    mel = audio.MelSpectrogram()(audio.load_reference(fixture_dir / "inputs" / "ref.wav"))
    assert torch.equal(official.get_codebook_indices(mel), expected["dvae_codes"])


def test_padded_batch_gives_each_rows_own_codes(dvae, base_inputs):
    mel = base_inputs["cond_mel"][0]  # (100, 235)
    rows = [mel, mel[:, 20:205], mel[:, :101], mel[:, 7:10]]
    lengths = torch.tensor([r.shape[1] for r in rows])
    batch = torch.randn(len(rows), 100, int(lengths.max())) * 5  # garbage in the padding on purpose
    for i, r in enumerate(rows):
        batch[i, :, : r.shape[1]] = r
    codes = dvae.get_codebook_indices(batch, lengths)
    code_lengths = dvae.code_lengths(lengths)
    assert code_lengths.tolist() == [59, 47, 26, 1]
    for i, r in enumerate(rows):
        alone = dvae.get_codebook_indices(r[None])[0]
        assert len(alone) == code_lengths[i]
        assert torch.equal(codes[i, : len(alone)], alone)
        assert torch.all(codes[i, len(alone) :] == PAD_CODE)
    # without lengths the garbage leaks into the last codes of the short rows
    unmasked = dvae.get_codebook_indices(batch)
    assert not torch.equal(unmasked[2, :26], codes[2, :26])


def test_digital_silence_maps_to_silence_code(dvae):
    mel = audio.MelSpectrogram()(torch.zeros(1, 2 * audio.SAMPLE_RATE))
    codes = dvae.get_codebook_indices(mel)
    assert codes.shape == (1, 47)
    assert torch.all(codes[0, 4:-4] == SILENCE_CODE)


def test_decode_shape_and_code_rate(dvae, base_inputs):
    codes = base_inputs["dvae_codes"]
    rec = dvae.decode(codes)
    assert rec.shape == (1, 100, 4 * codes.shape[1])
    assert audio.HOP * 4 == 1024  # one code per 1024 samples, as the GPT assumes
