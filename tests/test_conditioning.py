"""Conformer + perceiver speaker conditioning: padding and masking on the shipped base, and the official
v1.5.0 outputs of the tiny fixture."""

from __future__ import annotations

import pytest
import torch

from base_fixtures import load_plain_gpt
from tagtune.config import ConditionConfig
from tagtune.models.conditioning import (
    ConformerEncoder,
    RelPositionalEncoding,
    length_mask,
    sinusoid_table,
)
from tagtune.models.unified_voice import UnifiedVoice

ATOL = 1e-5  # reached: conformer_out 1.5e-6, conds 7.2e-7 (fixture's own fp32 noise bound ~8.5e-7)


PE_KEY = "conditioning_encoder.embed.pos_enc.pe"




@pytest.fixture(scope="module")
def tiny(shipped_base) -> UnifiedVoice:
    return load_plain_gpt(shipped_base)


@pytest.fixture(scope="module")
def official(fixture_dir) -> UnifiedVoice:
    return load_plain_gpt(fixture_dir / "checkpoint")


def test_sinusoid_table_equals_checkpoint_buffer(tiny, shipped_base):
    stored = torch.load(shipped_base / "gpt.pth", weights_only=True)[PE_KEY]
    width = tiny.cfg.condition_module.output_size
    assert stored.shape == (1, 5000, width)
    # a float16 file: the table rounded. float32 sin of large arguments differs in its last bits between machines
    # (CPU kernels), which moves some roundings by one float16 step: 0.8% of them between the build machine and
    # another 2-core VM of this project's kind
    table = sinusoid_table(5000, width)[None]
    torch.testing.assert_close(stored.float(), table, atol=2.0**-11, rtol=0)
    assert (stored != table.to(stored.dtype)).float().mean() < 0.02


def test_sinusoid_table_equals_official_checkpoint_buffer(fixture_dir):
    stored = torch.load(fixture_dir / "checkpoint" / "gpt.pth", weights_only=True)[PE_KEY]
    assert stored.shape == (1, 5000, 32)
    torch.testing.assert_close(sinusoid_table(5000, 32)[None], stored, atol=1e-6, rtol=0)


@torch.no_grad()
def test_conformer_output_matches_official(official, expected):
    mel = expected["cond_mel"]  # (1, 100, 235)
    out, mask = official.conditioning_encoder(mel.transpose(1, 2), torch.tensor([mel.shape[2]]))
    assert out.shape == (1, 117, 32) and mask.shape == (1, 117) and bool(mask.all())
    torch.testing.assert_close(out, expected["conformer_out"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_conds_match_official(official, expected):
    conds = official.get_conditioning(expected["cond_mel"], torch.tensor([235]))
    assert conds.shape == (1, 32, 64)
    torch.testing.assert_close(conds, expected["conds"], atol=ATOL, rtol=0)


def _padded_batch(inputs):
    """The batch (row 1 = cond_mel frames 20..204, then padding) with garbage in the padding."""
    noisy = inputs["batch_cond_mel"].clone()
    noisy[1, :, 185:] = torch.randn(100, 50, generator=torch.Generator().manual_seed(0)) * 5
    return noisy, inputs["batch_cond_mel_lengths"]


@torch.no_grad()
def test_masked_padding_rows_equal_their_unpadded_runs(tiny, base_inputs):
    batch, lengths = _padded_batch(base_inputs)
    assert lengths.tolist() == [235, 185]
    got = tiny.get_conditioning(batch, lengths, mask_padding=True)
    alone0 = tiny.get_conditioning(batch[:1], lengths[:1])
    alone1 = tiny.get_conditioning(base_inputs["cond_mel"][:, :, 20:205], torch.tensor([185]))
    torch.testing.assert_close(got[0], alone0[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[1], alone1[0], atol=ATOL, rtol=0)
    # the lengths really hide the padding: treated as real frames, row 1 changes a lot
    unmasked = tiny.get_conditioning(batch, torch.tensor([235, 235]))
    assert (unmasked[1] - alone1[0]).abs().max() > 0.02


@torch.no_grad()
def test_official_padding_leaks_only_through_the_conv_bias(tiny, base_inputs):
    """Official mode: padding content is ignored, but the padded row differs a little from its lone run."""
    batch, lengths = _padded_batch(base_inputs)
    official = tiny.get_conditioning(batch, lengths)
    zero_padded = tiny.get_conditioning(base_inputs["batch_cond_mel"], lengths)
    torch.testing.assert_close(official, zero_padded, atol=ATOL, rtol=0)  # content of the padding: no effect
    alone1 = tiny.get_conditioning(base_inputs["cond_mel"][:, :, 20:205], torch.tensor([185]))
    leak = (official[1] - alone1[0]).abs().max().item()
    assert 1e-4 < leak < 0.05, leak


@torch.no_grad()
def test_get_conditioning_leaves_inputs_untouched(tiny, base_inputs):
    mel, lengths = base_inputs["batch_cond_mel"].clone(), base_inputs["batch_cond_mel_lengths"].clone()
    tiny.get_conditioning(mel, lengths)
    assert torch.equal(mel, base_inputs["batch_cond_mel"])
    assert torch.equal(lengths, base_inputs["batch_cond_mel_lengths"])


@pytest.mark.parametrize("frames, sub", [(3, 1), (4, 1), (5, 2), (235, 117), (301, 150)])
def test_subsampled_length_is_t_minus_1_over_2(frames, sub):
    enc = ConformerEncoder(ConditionConfig(output_size=8, linear_units=16, attention_heads=2, num_blocks=1))
    out, mask = enc(torch.randn(1, frames, 100), torch.tensor([frames]))
    assert out.shape == (1, sub, 8) and mask.shape == (1, sub)


def test_subsampled_mask_keeps_frames_fully_inside_the_length():
    mask = length_mask(torch.tensor([185, 9]), 235)[:, 2::2]  # the rule Conv2dSubsampling2 applies
    assert mask.sum(1).tolist() == [92, 4]  # (L - 1) // 2


def test_position_table_limit_raises_value_error():
    enc = RelPositionalEncoding(4)
    x, pos = enc(torch.ones(1, 4999, 4))
    assert pos.shape == (1, 4999, 4)
    assert torch.allclose(x, torch.full_like(x, 2.0))  # scaled by sqrt(D)
    with pytest.raises(ValueError, match="5000 subsampled frames"):
        enc(torch.ones(1, 5000, 4))


def test_too_long_reference_raises_before_attention():
    enc = ConformerEncoder(ConditionConfig(output_size=8, linear_units=16, attention_heads=2, num_blocks=1))
    with pytest.raises(ValueError, match="too long"):
        enc(torch.zeros(1, 10001, 100), torch.tensor([10001]))  # T' = 5000
