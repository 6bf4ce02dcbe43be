"""Audio loading, resampling and log-mel features; the official reference path is checked on the fixture tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune import audio
from tagtune.config import MelConfig

MEL_ATOL = 2e-3  # fp32 rounding of quiet bins after the log (fixture README); we reach ~1.1e-3


@pytest.fixture(scope="module")
def mel():
    return audio.MelSpectrogram()


def test_load_audio_shapes_and_scale(reference_wav, reference_44k_wav):
    wav, sr = audio.load_audio(reference_44k_wav)
    assert sr == 44100 and wav.shape == (2, 110250) and wav.dtype == torch.float32
    # right channel = 0.6 x left, within 16-bit quantisation
    torch.testing.assert_close(wav[1], 0.6 * wav[0], atol=2.5 / 32768, rtol=0)
    # 16-bit PCM decodes to int16 / 32768 exactly
    raw = np.frombuffer(reference_wav.read_bytes()[44:], dtype="<i2")
    mono, sr = audio.load_audio(reference_wav)
    assert sr == 24000 and mono.shape == (1, 60000)
    assert torch.equal(mono[0], torch.from_numpy(raw.astype(np.float32) / 32768))


def test_load_audio_from_bytes_equals_path(reference_44k_wav):
    path = reference_44k_wav
    from_path, sr1 = audio.load_audio(path)
    from_bytes, sr2 = audio.load_audio(path.read_bytes())
    assert sr1 == sr2 and torch.equal(from_path, from_bytes)


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_load_other_containers(tmp_path, fmt):
    t = np.arange(24000) / 24000
    sf.write(tmp_path / f"x.{fmt}", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000)
    wav, sr = audio.load_audio(tmp_path / f"x.{fmt}")
    assert sr == 24000 and wav.shape == (1, 24000)
    assert 0.45 < wav.abs().max() < 0.55


def test_to_mono_is_channel_mean():
    wav = torch.tensor([[1.0, -1.0, 0.5], [0.0, 1.0, 0.5]])
    assert torch.equal(audio.to_mono(wav), torch.tensor([[0.5, 0.0, 0.5]]))


def test_resample_matches_official(fixture_dir, expected):
    ref = audio.load_reference(fixture_dir / "inputs" / "ref_44k.wav")
    assert ref.shape == expected["ref_44k_mono_resampled"].shape
    torch.testing.assert_close(ref, expected["ref_44k_mono_resampled"], atol=1e-6, rtol=0)


def test_resample_identity_and_lengths():
    x = torch.randn(2, 1000)
    assert audio.resample(x, 24000, 24000) is x
    assert audio.resample(x, 16000, 24000).shape == (2, 1500)
    assert audio.resample(torch.randn(1, 1001), 44100, 24000).shape == (1, math.ceil(1001 * 80 / 147))


@pytest.mark.parametrize("orig", [16000, 22050, 44100, 48000])
def test_resample_keeps_a_sine(orig):
    n = orig  # one second
    t = torch.arange(n, dtype=torch.float64) / orig
    x = torch.sin(2 * math.pi * 1000 * t).float()[None]
    y = audio.resample(x, orig, 24000)
    t2 = torch.arange(y.shape[-1], dtype=torch.float64) / 24000
    want = torch.sin(2 * math.pi * 1000 * t2).float()[None]
    # ignore the edges, where the sinc sees zero padding
    torch.testing.assert_close(y[:, 200:-200], want[:, 200:-200], atol=2e-3, rtol=0)
    z = audio.resample_soxr(x, orig, 24000)
    assert z.shape == y.shape
    torch.testing.assert_close(z[:, 200:-200], want[:, 200:-200], atol=2e-3, rtol=0)


def test_cond_mel_matches_official(fixture_dir, expected, mel):
    out = mel(audio.load_reference(fixture_dir / "inputs" / "ref.wav"))
    assert out.shape == (1, 100, 235)
    torch.testing.assert_close(out, expected["cond_mel"], atol=MEL_ATOL, rtol=0)


def test_cond_mel_from_44k_matches_official(fixture_dir, expected, mel):
    out = mel(audio.load_reference(fixture_dir / "inputs" / "ref_44k.wav"))
    torch.testing.assert_close(out, expected["cond_mel_from_44k"], atol=MEL_ATOL, rtol=0)


def test_mel_from_config_and_batching(mel):
    wav = torch.randn(2, 3, 5000) * 0.1
    out = audio.MelSpectrogram.from_config(MelConfig())(wav)
    assert out.shape == (2, 3, 100, audio.num_frames(5000))
    torch.testing.assert_close(out[1, 2], mel(wav[1, 2]), atol=1e-5, rtol=0)
    silence = mel(torch.zeros(1, 4000))
    assert torch.all(silence == math.log(audio.LOG_FLOOR))


def test_corrupt_file_raises(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEgarbage")
    with pytest.raises(audio.AudioError, match="cannot decode"):
        audio.load_audio(bad)
    with pytest.raises(audio.AudioError, match="cannot decode"):
        audio.load_audio(b"not audio at all")


def test_empty_inputs_raise(tmp_path):
    zero_bytes = tmp_path / "empty.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(audio.AudioError):
        audio.load_reference(zero_bytes)
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros((0, 1), dtype=np.float32), 24000)
    with pytest.raises(audio.AudioError, match="no samples"):
        audio.load_audio(no_frames)
    with pytest.raises(audio.AudioError, match="not found"):
        audio.load_audio(tmp_path / "missing.wav")


def test_too_short_for_a_mel_frame_raises(mel):
    with pytest.raises(audio.AudioError, match="too short"):
        mel(torch.zeros(1, 300))
