"""BigVGAN v2 of IndexTTS2 against the indextts2-tiny fixture (the vocoder alone, every run's waveform and
PCM), the audio-side chain from the reference files to PCM, loading errors and the full-size key set."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tagtune.audio_v2 import PromptMel, campplus_features, mel_frames_for_codes, speaker_prompt
from tagtune.checkpoint import (
    CheckpointError,
    load_bigvgan_v2,
    load_campplus,
    load_s2mel,
    load_semantic_codec,
    read_config_v2,
)
from tagtune.folders import BIGVGAN_V2_CONFIG_FILE, BIGVGAN_V2_WEIGHTS_FILE, CAMPPLUS_FILE, SEMANTIC_CODEC_FILE
from tagtune.models.bigvgan import kaiser_sinc_filter
from tagtune.models.v2.bigvgan_v2 import BigVGANv2, BigVGANv2Config
from tagtune.models.v2.s2mel import seeded_noise
from v2_fixture import (
    ATOL,
    CHAINED_ATOL,
    PCM_LSB,
    REFERENCE_FILES,
    RUN_SPEAKER,
    V2_AUX,
    V2_CHECKPOINT,
    VOCODER_ATOL,
    assert_close,
    assert_official_keys,
    expected,
    require_v2,
)

BIGVGAN_DIR = V2_AUX / "bigvgan"


def pcm16(wav: torch.Tensor) -> torch.Tensor:
    """The official int16 conversion: scale by 32767, clamp, truncate toward zero."""
    return torch.clamp(32767 * wav, -32767, 32767).to(torch.int16).long()


@pytest.fixture(scope="module")
def vocoder():
    require_v2()
    return load_bigvgan_v2(BIGVGAN_DIR)


def test_vocoder_alone_on_a_reference_mel(vocoder):
    with torch.no_grad():
        wav = vocoder(expected("a_ref_mel"))
    assert_close("bigvgan_on_a_ref_mel", wav, expected("bigvgan_on_a_ref_mel"), VOCODER_ATOL)
    assert wav.shape[-1] == 256 * expected("a_ref_mel").shape[-1] and wav.abs().max() <= 1.0


@pytest.mark.parametrize("run", sorted(RUN_SPEAKER))
def test_waveform_and_pcm_of_every_run(vocoder, run):
    with torch.no_grad():
        wav = vocoder(expected(f"{run}_vc_target")).squeeze().unsqueeze(0)
    assert_close(f"{run}_wav", wav, expected(f"{run}_wav"), ATOL)
    assert (pcm16(wav) - expected(f"{run}_pcm16")).abs().max() <= PCM_LSB


def test_audio_side_chain_from_reference_file_to_pcm(vocoder):
    """Reference wav -> prompt mel, fbank -> style, features -> codec -> prompt condition; fixture codes and
    GPT latents -> s2mel -> vocoder, every stage fed this implementation's own outputs."""
    run, ref = "a_en", "a"
    cfg = read_config_v2(V2_CHECKPOINT)
    codec = load_semantic_codec(V2_AUX / SEMANTIC_CODEC_FILE, cfg)
    s2mel, campplus = load_s2mel(V2_CHECKPOINT, cfg), load_campplus(V2_AUX / CAMPPLUS_FILE, cfg)
    prompt = speaker_prompt(require_v2() / "inputs" / REFERENCE_FILES[ref])
    with torch.no_grad():
        ref_mel = PromptMel.from_config(cfg.s2mel.preprocess_params)(prompt.audio_22k)
        style = campplus(campplus_features(prompt.audio_16k))
        _, s_ref = codec.quantize(expected(f"{ref}_spk_cond_emb"))  # w2v-BERT features: the GPT side's tests
        prompt_condition = s2mel.content(s_ref, torch.tensor([ref_mel.shape[-1]]))
        codes, latent = expected(f"{run}_codes"), expected(f"{run}_latent")
        frames = mel_frames_for_codes(torch.tensor([codes.shape[1]]))
        condition = s2mel.content(s2mel.semantic(codec.vq2emb(codes), latent), frames)
        noise = seeded_noise(ref_mel.shape[-1] + int(frames), 1234)
        mel = s2mel.generate(prompt_condition, condition, ref_mel, style, noise)
        wav = vocoder(mel).squeeze().unsqueeze(0)
    assert_close(f"{run}_vc_target (chained)", mel, expected(f"{run}_vc_target"), CHAINED_ATOL)
    assert_close(f"{run}_wav (chained)", wav, expected(f"{run}_wav"), CHAINED_ATOL)


def test_weight_norm_is_folded_with_the_stored_g(vocoder):
    state = torch.load(BIGVGAN_DIR / BIGVGAN_V2_WEIGHTS_FILE, weights_only=True)["generator"]
    assert not any(k.endswith(("weight_g", "weight_v")) for k in vocoder.state_dict())
    g = state["conv_pre.weight_g"].flatten()
    torch.testing.assert_close(vocoder.conv_pre.weight.flatten(1).norm(dim=1), g, rtol=1e-5, atol=0)
    assert not torch.allclose(g, state["conv_pre.weight_v"].flatten(1).norm(dim=1))  # g is not ||v|| here
    assert vocoder.conv_post.bias is None  # use_bias_at_final: false


def test_filter_buffers_are_the_kaiser_formula():
    state = torch.load(require_v2() / "checkpoint" / "hf_cache" / "bigvgan" / BIGVGAN_V2_WEIGHTS_FILE,
                       weights_only=True)["generator"]
    filters = [k for k in state if k.endswith(".filter")]
    assert filters and all(torch.equal(state[k], kaiser_sinc_filter()) for k in filters)


def _folder_with_config(tmp_path, **changes):
    folder = tmp_path / "bigvgan"
    shutil.copytree(require_v2() / "checkpoint" / "hf_cache" / "bigvgan", folder)
    (folder / BIGVGAN_V2_CONFIG_FILE).chmod(0o644)
    config = json.loads((folder / BIGVGAN_V2_CONFIG_FILE).read_text())
    (folder / BIGVGAN_V2_CONFIG_FILE).write_text(json.dumps({**config, **changes}))
    return folder


def test_unsupported_vocoder_config_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="resblock"):
        load_bigvgan_v2(_folder_with_config(tmp_path, resblock="2"))


def test_wrong_width_names_the_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"conv_pre\.weight_v: file has shape \(128, 80, 7\)"):
        load_bigvgan_v2(_folder_with_config(tmp_path, upsample_initial_channel=256))


def test_head_is_tanh_or_clamp_as_the_config_says():
    torch.manual_seed(0)
    mel = torch.randn(1, 80, 4)
    outputs = {}
    for tanh in (False, True):
        torch.manual_seed(1)
        model = BigVGANv2(BigVGANv2Config(upsample_initial_channel=64, use_tanh_at_final=tanh)).eval()
        with torch.no_grad():
            model.conv_post.weight_g.mul_(1e12)  # drive the pre-activation far past +-1
            outputs[tanh] = model(mel)
    clamped, squashed = outputs[False], outputs[True]
    assert (clamped.abs() == 1.0).float().mean() > 0.5  # clamp: exactly +-1 where saturated
    assert torch.equal(squashed.sign(), clamped.sign()) and (squashed.abs() < 1.0).any()


def test_full_size_keys_match_official():
    with torch.device("meta"):
        model = BigVGANv2(BigVGANv2Config())
    assert_official_keys(model.state_dict(), "sd_bigvgan_v2_22k.txt")
