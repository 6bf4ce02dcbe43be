"""Reduced-precision GPT copies, batched latents, joined vocoding and the quality measure (shipped base)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tagtune.checkpoint import load_bigvgan, load_gpt
from tagtune.evaluate.quality import teacher_forced_quality
from tagtune.generation import GenerationConfig, generate_codes, latents_for_vocoder
from tagtune.generation.batched import batched_latents, vocode_joined
from tagtune.precision import CPU_DECODE_DEFAULT, TRAINING_PRECISIONS, PrecisionError, resolve_precision
from tagtune.synthesis.fast_gpt import conv1d_to_linear, prepare_gpt

HOP = 1024


@pytest.fixture(scope="module")
def gpt(shipped_base):
    return load_gpt(shipped_base)


def test_conv1d_to_linear_is_exact():
    torch.manual_seed(0)
    block = nn.Sequential(Conv1D(12, 8), nn.GELU(), Conv1D(8, 12))
    x = torch.randn(2, 5, 8)
    before = block(x)
    conv1d_to_linear(block)
    assert [type(m) for m in block] == [nn.Linear, nn.GELU, nn.Linear]
    torch.testing.assert_close(block(x), before, atol=1e-6, rtol=0)


def test_resolve_precision(monkeypatch):
    import tagtune.precision

    assert resolve_precision("auto", "cpu") == CPU_DECODE_DEFAULT == "int8"  # decoding: passes the bar
    for native, training in ((True, "bf16"), (False, "fp32")):  # bf16 training where the CPU computes in it
        monkeypatch.setattr(tagtune.precision, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto", "cpu", TRAINING_PRECISIONS) == training
        assert resolve_precision("auto", "cpu") == "int8"
    assert resolve_precision("bf16", "cpu") == "bf16"
    for bad, device in (("fp16", "cpu"), ("int4", "cpu")):
        with pytest.raises(PrecisionError):
            resolve_precision(bad, device)


def test_prepare_gpt_leaves_the_original_alone(gpt):
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    fast = prepare_gpt(gpt, "int8")
    assert type(gpt.gpt.h[0].attn.c_attn) is Conv1D and type(fast.gpt.h[0].attn.c_attn) is not Conv1D
    assert "quantized" in type(fast.mel_head).__module__
    assert all(torch.equal(v, gpt.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_teacher_forced_quality(gpt, base_inputs, precision):
    prompt = base_inputs["conds"], base_inputs["latent_text_ids"], base_inputs["latent_codes"]
    q = teacher_forced_quality(gpt, prepare_gpt(gpt, precision), *prompt)
    assert q["passes"] and q["top1_agreement"] >= 0.9, q


def test_int8_copy_has_no_float_linears_and_shares_nothing(gpt):
    fast = prepare_gpt(gpt, "int8")
    float_linears = [n for n, m in fast.named_modules() if type(m) in (Conv1D, nn.Linear)
                     and (n.startswith("gpt.") or n == "mel_head")]
    assert float_linears == []
    assert fast.gpt.h[0].mlp.c_fc.weight().qscheme() == torch.per_channel_affine
    originals = {p.data_ptr() for p in gpt.parameters()}
    assert not any(p.data_ptr() in originals for p in fast.parameters())


def _batched_rows(inputs):
    """Three sentences of the prompt and their codes; an empty row is skipped, not an error."""
    text, codes = inputs["gen_text_ids"][0].tolist(), inputs["dvae_codes"][0]
    return [text, text[:6], text[3:]], [codes[:30], codes[:0], codes[10:19]]


def test_batched_latents_equal_one_at_a_time(gpt, base_inputs):
    conds, (sentences, rows) = base_inputs["conds"], _batched_rows(base_inputs)
    got = batched_latents(gpt, conds, sentences, rows, batch_size=8)
    d = gpt.cfg.model_dim
    assert [tuple(g.shape) for g in got] == [(30, d), (0, d), (9, d)]
    for ids, c, g in zip(sentences, rows, got):
        if len(c):
            one = latents_for_vocoder(gpt, conds, torch.tensor([ids]), c[None], torch.tensor([len(c)]))[0]
            torch.testing.assert_close(g, one, atol=1e-5, rtol=0)


def test_batched_latents_match_official(fixture_dir, expected):
    official = load_gpt(fixture_dir / "checkpoint")
    got = batched_latents(official, expected["conds"], *_batched_rows(expected), batch_size=8)
    torch.testing.assert_close(got[0], expected["latents"][0, :30], atol=1e-4, rtol=0)


def test_vocode_joined_splits_at_the_joins(shipped_base, base_inputs):
    vocoder = load_bigvgan(shipped_base)
    lat = base_inputs["latents"][0]  # (40, D)
    with torch.no_grad():
        speaker = vocoder.speaker_embedding(base_inputs["cond_mel"].transpose(1, 2))
        waves = vocode_joined(vocoder, [lat[:25], lat[:0], lat[25:]], speaker)
        whole = vocoder(lat[None], speaker=speaker)  # (1, 1, 40 * HOP)
    assert [len(w) for w in waves] == [25 * HOP, 0, 15 * HOP]
    torch.testing.assert_close(torch.cat(waves), whole[0, 0], atol=1e-4, rtol=0)


def test_resolve_latent_precision(monkeypatch):
    import tagtune.precision
    from tagtune.precision import resolve_latent_precision

    for native in (True, False):
        monkeypatch.setattr(tagtune.precision, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_latent_precision("auto", "int8", "cpu") == ("bf16" if native else "fp32")
        assert resolve_latent_precision("auto", "fp32", "cpu") == "fp32"  # fp32 decoding: fp32 throughout
        assert resolve_latent_precision("fp32", "int8", "cpu") == "fp32"
    with pytest.raises(PrecisionError):
        resolve_latent_precision("int8", "int8", "cpu")


def test_bf16_latent_model_shares_all_but_the_backbone_and_holds_the_audio(gpt, shipped_base, base_inputs):
    from tagtune.evaluate.quality import audio_difference
    from tagtune.synthesis.fast_gpt import latent_model

    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    model = latent_model(gpt)
    assert all(torch.equal(v, gpt.state_dict()[k]) for k, v in before.items())
    inner, outer = model.gpt.inner.h[0].attn.c_attn.weight, gpt.gpt.h[0].attn.c_attn.weight
    assert inner.dtype == torch.bfloat16 and inner.data_ptr() != outer.data_ptr()
    assert model.mel_embedding.weight is gpt.mel_embedding.weight and model.final_norm.weight is gpt.final_norm.weight
    prompt = base_inputs["conds"], base_inputs["latent_text_ids"], base_inputs["latent_codes"]
    lens = torch.tensor([prompt[2].shape[1]])
    fp32, bf16 = (latents_for_vocoder(m, *prompt, lens) for m in (gpt, model))
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    vocoder = load_bigvgan(shipped_base)
    with torch.no_grad():
        speaker = vocoder.speaker_embedding(base_inputs["cond_mel"].transpose(1, 2))
        waves = [vocoder(lat, speaker=speaker)[0, 0] for lat in (fp32, bf16)]
    assert audio_difference(*waves).passes


def test_decoded_quality_runs_the_decode_path_with_its_cache(gpt, base_inputs):
    from tagtune.evaluate.quality import decoded_logits, decoded_quality_over

    conds, text_ids, codes = base_inputs["conds"], base_inputs["latent_text_ids"], base_inputs["latent_codes"]
    logits, targets = decoded_logits(gpt, conds, text_ids, codes)
    assert logits.shape == (codes.shape[1] + 1, gpt.cfg.number_mel_codes) and targets[-1] == gpt.cfg.stop_mel_token
    greedy = generate_codes(gpt, text_ids, GenerationConfig.greedy(max_new_tokens=3, repetition_penalty=1.0),
                            conds=conds)[0]  # the decode path's own argmax after the prefill
    assert int(logits[0].argmax()) == int(greedy[0, 0])
    assert decoded_quality_over(gpt, gpt, [(conds, text_ids, codes)]).kl == 0.0
    q = decoded_quality_over(gpt, prepare_gpt(gpt, "int8"), [(conds, text_ids, codes)])
    assert q.passes and q.positions == codes.shape[1] + 1 and q.kl > 0
