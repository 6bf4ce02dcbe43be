"""Training the conditioning (``lora.train_conditioning``) from cached reference frames: the conformers' input
subsampling stays frozen, runs once per clip (``train.data.precompute_frames``), and each step continues from its
frames with the same losses and gradients as from the mels."""

from __future__ import annotations

import pytest
import torch

from tagtune import lora
from tagtune.lora import LoraSpec
from tagtune.tags.rows import TagInit, grow_base
from tagtune.train.config import LossSettings
from tagtune.train.data import (
    ReferenceFrames,
    collate,
    conds_from_frames,
    open_data,
    pad_spec,
    precompute_conds,
    precompute_frames,
)
from tagtune.train.loss import RowLosses


def _trainable(gpt) -> list[str]:
    return [n for n, p in gpt.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_train_conditioning_keeps_the_input_subsampling_frozen(tiny_data, mode):
    data = open_data(tiny_data)
    gpt, _, ids = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    lora.apply_lora(gpt, LoraSpec(rank=2, alpha=4, mode=mode, train_conditioning=True), ids)
    trained = _trainable(gpt)
    assert not [n for n in trained if ".embed." in n], "the conv front must not train"
    # everything else of both branches does: the conformer layers and the perceiver
    assert any("conditioning_encoder" in n and ".encoders." in n for n in trained)
    assert any(n.startswith("perceiver_encoder") for n in trained)


def test_frames_give_the_speaker_latents_of_the_mels(tiny_data):
    data = open_data(tiny_data)
    gpt, _, _ = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    gpt.eval()
    frames = precompute_frames(gpt, data.train, "cpu", batch_size=5)
    assert isinstance(frames, ReferenceFrames) and len(frames) == len(data.train)
    lengths = {len(f) for f in frames.values()}
    assert len(lengths) > 1  # clips of several lengths, so padding is exercised
    conds = precompute_conds(gpt, data.train, "cpu")
    picks = list(range(len(data.train)))[::-1]
    from_frames = conds_from_frames(gpt, frames, picks, "cpu", batch_size=7)
    assert max(float((conds[i] - z).abs().max()) for i, z in zip(picks, from_frames, strict=True)) < 1e-5


def test_frames_over_the_budget_fall_back_to_the_mels(tiny_data):
    data = open_data(tiny_data)
    gpt, _, _ = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    assert precompute_frames(gpt, data.train, "cpu", max_bytes=1) is None


def test_losses_and_gradients_from_frames_equal_those_from_mels(tiny_data):
    data = open_data(tiny_data)
    gpt, _, ids = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    lora.apply_lora(gpt, LoraSpec(rank=2, alpha=4, dropout=0.0, train_conditioning=True), ids)
    gpt.eval()  # no dropout: both paths see the same network
    frames = precompute_frames(gpt, data.train, "cpu")
    picks = [0, 3, 1, 5, 2]
    losses = RowLosses(gpt, LossSettings(mask_padding=True))
    results = []
    for cache in (None, frames):
        batch = collate(data.train, picks, pad_spec(gpt), cache)
        assert (batch.cond_frames is None) == (cache is None) and (batch.cond_mels is None) == (cache is not None)
        gpt.zero_grad(set_to_none=True)
        text_ce, mel_ce = losses(batch)
        (text_ce.sum() + mel_ce.sum()).backward()
        grads = {n: p.grad.clone() for n, p in gpt.named_parameters() if p.grad is not None}
        results.append((text_ce.detach(), mel_ce.detach(), grads))
    (t0, m0, g0), (t1, m1, g1) = results
    torch.testing.assert_close(t1, t0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys()
    # the trained copy of the conditioning encoder's layers receives gradient, the same on both paths
    assert any("conditioning_encoder" in n and ".encoders." in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_train_conditioning_keeps_both_v2_input_subsamplings_frozen(mode):
    from tagtune.checkpoint import build_gpt, read_model_config
    from v2_fixture import V2_CHECKPOINT, require_v2

    require_v2()
    gpt = build_gpt(read_model_config(V2_CHECKPOINT).gpt)
    fronts = [n for n, _ in gpt.named_parameters() if "conditioning_encoder.embed." in n]
    assert {n.split(".")[0] for n in fronts} == {"conditioning_encoder", "emo_conditioning_encoder"}
    lora.apply_lora(gpt, LoraSpec(rank=2, alpha=4, mode=mode, train_conditioning=True),
                    [gpt.cfg.number_text_tokens - 1])
    trained = _trainable(gpt)
    assert not [n for n in trained if ".embed." in n]
    for branch in ("conditioning_encoder", "emo_conditioning_encoder", "emo_perceiver_encoder", "emo_layer"):
        assert any(n.startswith(branch) for n in trained), branch
