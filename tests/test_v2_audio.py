"""IndexTTS2 audio front ends: both prompt paths, the CAMPPlus fbank and the s2mel prompt mel against the
official values of the indextts2-tiny fixture; truncation, channel mixing and bad input on made-up audio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune.audio import AudioError
from tagtune.audio_v2 import (
    PROMPT_MAX_SECONDS,
    S2MEL_SAMPLE_RATE,
    W2V_SAMPLE_RATE,
    PromptMel,
    campplus_features,
    emotion_prompt,
    kaldi_fbank,
    load_prompt,
    mel_frames_for_codes,
    slaney_mel_filters,
    speaker_prompt,
)
from tagtune.config import PreprocessConfig
from v2_fixture import MEL_ATOL, REFERENCE_FILES, RUN_SPEAKER, assert_close, expected, require_v2


@pytest.mark.parametrize("ref", ["a", "b"])
def test_speaker_prompt_both_rates(ref):
    prompt = speaker_prompt(require_v2() / "inputs" / REFERENCE_FILES[ref])
    # soxr and the sinc resampler reproduce the official samples (the README allows 1e-4; this is exact here)
    assert_close(f"{ref}_audio_22k", prompt.audio_22k, expected(f"{ref}_audio_22k"), 0.0)
    assert_close(f"{ref}_audio_16k", prompt.audio_16k, expected(f"{ref}_audio_16k"), 1e-6)


@pytest.mark.parametrize("ref, name", [("a", "ref_a_24k.wav"), ("b", "ref_b_22k.wav"), ("a16", "ref_a_16k.wav")])
def test_emotion_prompt_straight_to_16k(ref, name):
    got = emotion_prompt(require_v2() / "inputs" / name)
    assert_close(f"{ref}_emo_audio_16k", got, expected(f"{ref}_emo_audio_16k"), 1e-6)


def test_the_two_paths_differ_for_one_file():
    path = require_v2() / "inputs" / REFERENCE_FILES["a"]
    speaker, emotion = speaker_prompt(path).audio_16k, emotion_prompt(path)
    assert speaker.shape[-1] == emotion.shape[-1] + 1  # 44001 vs 44000 samples, as the official paths give
    assert (speaker[:, :-1] - emotion).abs().max() > 1e-3


@pytest.mark.parametrize("ref", ["a", "b"])
def test_campplus_fbank(ref):
    got = campplus_features(expected(f"{ref}_audio_16k"))
    assert_close(f"{ref}_fbank", got[0], expected(f"{ref}_fbank"), MEL_ATOL)
    assert got.mean(dim=1).abs().max() < 1e-4  # the per-bin mean over time is removed


@pytest.mark.parametrize("ref", ["a", "b"])
def test_prompt_mel(ref):
    mel = PromptMel.from_config(PreprocessConfig())(expected(f"{ref}_audio_22k"))
    assert_close(f"{ref}_ref_mel", mel, expected(f"{ref}_ref_mel"), MEL_ATOL)
    assert mel.shape[-1] == expected(f"{ref}_audio_22k").shape[-1] // 256


def test_mel_frames_for_codes_table():
    assert torch.equal(mel_frames_for_codes(torch.arange(1816)), expected("target_len_table"))
    for run in RUN_SPEAKER:
        assert torch.equal(mel_frames_for_codes(expected(f"{run}_code_lens")), expected(f"{run}_target_lengths"))


def _write(path, samples: np.ndarray, sr: int):
    sf.write(path, samples, sr, subtype="FLOAT")
    return path


def _tone(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


def test_long_prompts_are_cut_to_15_seconds(tmp_path):
    path = _write(tmp_path / "long.wav", _tone(PROMPT_MAX_SECONDS + 4.5, 24000), 24000)
    assert speaker_prompt(path).audio_22k.shape == (1, PROMPT_MAX_SECONDS * S2MEL_SAMPLE_RATE)
    assert emotion_prompt(path).shape == (1, PROMPT_MAX_SECONDS * W2V_SAMPLE_RATE)
    short = _write(tmp_path / "short.wav", _tone(2.0, 24000), 24000)
    assert load_prompt(short).shape == (1, 2 * S2MEL_SAMPLE_RATE)  # ceil(n * 22050 / 24000), not cut


def test_a_long_prompt_decoded_in_part_equals_the_whole_decode(tmp_path):
    import soxr

    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(44100 * 40)).astype(np.float32)
    got = load_prompt(_write(tmp_path / "long.wav", samples, 44100), W2V_SAMPLE_RATE)
    whole = soxr.resample(samples, 44100, W2V_SAMPLE_RATE, quality="HQ")[: PROMPT_MAX_SECONDS * W2V_SAMPLE_RATE]
    assert torch.equal(got[0], torch.from_numpy(whole))


def test_stereo_prompts_are_mixed_to_mono(tmp_path):
    stereo = _tone(1.0, S2MEL_SAMPLE_RATE, channels=2)
    got = load_prompt(_write(tmp_path / "stereo.wav", stereo, S2MEL_SAMPLE_RATE))
    assert torch.allclose(got[0], torch.from_numpy(stereo.mean(axis=1)), atol=1e-7)


@pytest.mark.parametrize("samples, words", [(np.zeros(24000, np.float32), "silent"),
                                            (np.full(24000, np.nan, np.float32), "NaN")])
def test_unusable_prompts_are_refused(tmp_path, samples, words):
    with pytest.raises(AudioError, match=words):
        speaker_prompt(_write(tmp_path / "bad.wav", samples, 24000))


def test_too_short_prompt_is_refused(tmp_path):
    with pytest.raises(AudioError, match="too short"):
        speaker_prompt(_write(tmp_path / "blip.wav", _tone(0.05, 24000), 24000))


def test_missing_prompt_is_refused(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        emotion_prompt(tmp_path / "nope.wav")


def test_fbank_of_a_clip_shorter_than_a_frame_is_empty():
    assert kaldi_fbank(torch.zeros(1, 399)).shape == (0, 80)
    assert kaldi_fbank(torch.randn(1, 400)).shape == (1, 80)


def test_slaney_filters_have_equal_area():
    filters = slaney_mel_filters(S2MEL_SAMPLE_RATE, 1024, 80, 0.0, None)  # (80, 513)
    bin_hz = S2MEL_SAMPLE_RATE / 1024
    area = filters.sum(dim=1) * bin_hz
    assert filters.shape == (80, 513) and (filters >= 0).all()
    assert torch.allclose(area[10:], torch.ones(70), atol=0.05)  # wide filters: a triangle of area 1 in Hz
