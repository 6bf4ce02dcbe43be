"""BigVGAN + ECAPA-TDNN: weight-norm folding and speaker caching on the shipped base; official key sets,
filter buffers, speaker embedding and waveform parity on the fixture."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import official_param_count, read_key_list
from tagtune.config import ModelConfig, v1_0, v1_5
from tagtune.models.bigvgan import Activation1d, BigVGAN, WNConv1d, kaiser_sinc_filter

PARITY_ATOL = 1e-4  # fixture suggestion; we reach ~7e-7 (speaker) and ~9e-6 (wav)


def _state_dict(folder):
    return torch.load(folder / "bigvgan_generator.pth", weights_only=True)["generator"]


def _folded(folder, state_dict) -> BigVGAN:
    """A generator loaded strictly with weight norm, then folded, in eval mode."""
    cfg = ModelConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    model = BigVGAN(cfg.bigvgan)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                          strict=True)
    model.remove_weight_norm()
    return model.eval()


@pytest.fixture(scope="module")
def state_dict(shipped_base):
    return _state_dict(shipped_base)


@pytest.fixture(scope="module")
def vocoder(shipped_base, state_dict):
    return _folded(shipped_base, state_dict)


@pytest.fixture(scope="module")
def official_state_dict(fixture_dir):
    return _state_dict(fixture_dir / "checkpoint")


@pytest.fixture(scope="module")
def official_vocoder(fixture_dir, official_state_dict):
    return _folded(fixture_dir / "checkpoint", official_state_dict)


@pytest.mark.parametrize("make, dump", [(v1_0, "sd_bigvgan_v10.txt"), (v1_5, "sd_bigvgan_v15.txt")])
def test_full_size_keys_match_official(official_keys_dir, make, dump):
    with torch.device("meta"):
        model = BigVGAN(make().bigvgan)
    got = {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}
    assert got == read_key_list(official_keys_dir / dump)
    assert sum(p.numel() for p in model.parameters()) == official_param_count(official_keys_dir / dump)


FILTER_KEYS = ("activation_post.upsample.filter", "resblocks.0.activations.0.downsample.lowpass.filter")


def test_filter_buffers_equal_checkpoint(state_dict):
    for key in FILTER_KEYS:  # the shipped base stores float16: the formula rounded to it, bit for bit
        assert torch.equal(state_dict[key], kaiser_sinc_filter().to(state_dict[key].dtype)), key


def test_filter_buffers_equal_official_checkpoint(official_state_dict):
    for key in FILTER_KEYS:
        assert torch.equal(official_state_dict[key], kaiser_sinc_filter()), key


def test_remove_weight_norm_uses_g(vocoder, state_dict):
    keys = vocoder.state_dict().keys()
    assert "conv_pre.weight" in keys and not any(k.endswith(("weight_g", "weight_v")) for k in keys)
    # transposed conv: g has one entry per input channel and the norm runs over (out, k)
    w = vocoder.ups[0][0].weight
    g = state_dict["ups.0.0.weight_g"].float()
    torch.testing.assert_close(w.flatten(1).norm(dim=1), g.flatten(), rtol=1e-6, atol=0)
    assert not torch.allclose(g, state_dict["ups.0.0.weight_v"].float().flatten(1).norm(dim=1).view(-1, 1, 1))


def test_weight_norm_conv_folds_to_same_output():
    conv = WNConv1d(4, 3, 5, dilation=2, padding=4)
    with torch.no_grad():
        conv.weight_g.mul_(torch.tensor([0.5, 2.0, 1.5]).view(-1, 1, 1))
    x = torch.randn(2, 4, 30)
    before = conv(x)
    conv.remove_weight_norm()
    assert set(dict(conv.named_parameters())) == {"bias", "weight"}
    torch.testing.assert_close(conv(x), before, atol=1e-6, rtol=0)


def test_speaker_embedding_matches_official(official_vocoder, expected):
    with torch.no_grad():
        spk = official_vocoder.speaker_embedding(expected["cond_mel"].transpose(1, 2))
    assert spk.shape == (1, 1, 32)
    torch.testing.assert_close(spk, expected["spk_emb"], atol=PARITY_ATOL, rtol=0)


def test_wav_matches_official(official_vocoder, expected):
    with torch.no_grad():
        wav = official_vocoder(expected["latents"], expected["cond_mel"].transpose(1, 2))
    assert wav.shape == (1, 1, 40 * 1024) == expected["wav"].shape
    torch.testing.assert_close(wav, expected["wav"], atol=PARITY_ATOL, rtol=0)


def test_wav_before_folding_matches_official(fixture_dir, official_state_dict, expected):
    cfg = ModelConfig.from_dict(yaml.safe_load((fixture_dir / "checkpoint" / "config.yaml").read_text()))
    model = BigVGAN(cfg.bigvgan).eval()
    model.load_state_dict(official_state_dict, strict=True)
    with torch.no_grad():
        wav = model(expected["latents"], expected["cond_mel"].transpose(1, 2))
    torch.testing.assert_close(wav, expected["wav"], atol=PARITY_ATOL, rtol=0)


def test_cached_speaker_and_batch_broadcast(vocoder, base_inputs):
    latents, mel = base_inputs["latents"], base_inputs["cond_mel"].transpose(1, 2)
    with torch.no_grad():
        spk = vocoder.speaker_embedding(mel)
        direct = vocoder(latents, mel)
        cached = vocoder(latents, speaker=spk)
        pair = vocoder(torch.cat([latents, latents.flip(1)]), speaker=spk)  # one speaker for two rows
        flipped = vocoder(latents.flip(1), speaker=spk)
    assert torch.equal(cached, direct)
    assert pair.shape == (2, 1, 40 * 1024)
    # batched convolutions round differently from single-row ones (observed ~7e-6)
    torch.testing.assert_close(pair[0], direct[0], atol=5e-5, rtol=0)
    torch.testing.assert_close(pair[1], flipped[0], atol=5e-5, rtol=0)
    with pytest.raises(ValueError, match="mel_ref"):
        vocoder(latents)


def _reference_activations(model):
    """Make every Activation1d of ``model`` run the three official steps instead of the phase form."""
    for module in model.modules():
        if isinstance(module, Activation1d):
            module.forward = module.reference_forward


@pytest.mark.parametrize("channels, length", [(3, 1), (3, 2), (5, 7), (16, 257)])
def test_phase_activation_equals_the_three_steps(channels, length):
    torch.manual_seed(length)
    act = Activation1d(channels)
    with torch.no_grad():
        act.act.alpha.normal_(0.0, 0.5)
        act.act.beta.normal_(0.0, 0.5)
        x = 2 * torch.randn(2, channels, length)
        fast, steps = act(x), act.reference_forward(x)
    assert fast.shape == steps.shape == (2, channels, length)
    torch.testing.assert_close(fast, steps, atol=1e-5, rtol=0)
    assert not torch.equal(fast, act.act(x))  # the anti-aliasing does something


def test_vocoder_with_phase_activations_equals_official_steps(shipped_base, state_dict, base_inputs):
    fast, steps = _folded(shipped_base, state_dict), _folded(shipped_base, state_dict)
    _reference_activations(steps)
    latents, mel = base_inputs["latents"], base_inputs["cond_mel"].transpose(1, 2)
    with torch.no_grad():
        spk = fast.speaker_embedding(mel)
        torch.testing.assert_close(fast(latents, speaker=spk), steps(latents, speaker=spk), atol=1e-5, rtol=0)
