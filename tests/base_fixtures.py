"""A reference clip and model inputs for the shipped tiny base, laid out like the parity fixture's tensors.

``reference_wav`` is 2.5 s of built-in babble at 24 kHz (the length of the fixture's ``inputs/ref.wav``, so a
mel has 235 frames and the DVAE gives 59 codes); ``reference_44k_wav`` is babble at 44.1 kHz in stereo with the
right channel at 0.6 x left (as ``inputs/ref_44k.wav``). ``base_inputs`` holds, under the names the fixture's
``expected.safetensors`` uses, what the tests feed a model: the reference mel and its conditioning, codes, text
ids, and a padded two-row training batch. Nothing here is compared with official outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

REF_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs."
REF_VOICE = "builtin-m1"
REF_SECONDS = 2.5
TEXTS = ("Hello, World! This is IndexTTS speaking.", "a")  # the fixture's texts 0 and 6
LONG_TEXT = "It costs twenty five dollars, said the man. Well, that is funny!"
BATCH_TEXT_LENGTHS = (15, 32)  # as the fixture's batch: row 0 padded, row 1 full width
BATCH_CODES = 30
BATCH_WAV_LENGTHS = (30 * 1024, 21 * 1024 + 300)  # row 1: 23 codes kept, the rest becomes stop
BATCH_ROW1_FRAMES = (20, 205)  # row 1's conditioning mel: these frames of the reference, then zeros
LATENT_CODES = 40


def babble_clip(sample_rate: int, seconds: float = REF_SECONDS, text: str = REF_TEXT) -> np.ndarray:
    """``seconds`` of built-in speech at ``sample_rate`` (float32, peak ~0.5), with a little seeded noise."""
    from tagtune.synthetic.babble import babble
    from tagtune.synthetic.voices import VOICES

    n = int(round(seconds * sample_rate))
    speech = babble(text, VOICES[REF_VOICE], sample_rate)
    while len(speech) < n:  # repeat the sentence until the clip is long enough
        speech = np.concatenate([speech, babble(text, VOICES[REF_VOICE], sample_rate)])
    noise = 1e-3 * np.random.default_rng(0).standard_normal(n)
    return (speech[:n] + noise).astype(np.float32)


@pytest.fixture(scope="session")
def reference_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "ref.wav"
    sf.write(path, babble_clip(24000), 24000, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def reference_44k_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference-44k") / "ref_44k.wav"
    left = babble_clip(44100)
    sf.write(path, np.stack([left, 0.6 * left], axis=1), 44100, subtype="PCM_16")
    return path


def _text_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer.encode(text))


def _batch(cond_mel: torch.Tensor, codes: torch.Tensor, row0: torch.Tensor, row1: torch.Tensor, cfg,
           g: torch.Generator) -> dict[str, torch.Tensor]:
    """The fixture's training batch layout, with garbage past every length (the forward must ignore it)."""
    n0, n1 = BATCH_TEXT_LENGTHS
    text = torch.randint(3, cfg.number_text_tokens, (2, n1), generator=g)
    text[0, :n0], text[1] = row0[:n0], row1[:n1]
    first, last = BATCH_ROW1_FRAMES
    mel = torch.zeros(2, *cond_mel.shape[1:])
    mel[0], mel[1, :, : last - first] = cond_mel[0], cond_mel[0, :, first:last]
    batch_codes = torch.randint(0, cfg.start_mel_token, (2, BATCH_CODES), generator=g)
    batch_codes[0] = codes[0, :BATCH_CODES]
    return {"batch_cond_mel": mel, "batch_cond_mel_lengths": torch.tensor([cond_mel.shape[2], last - first]),
            "batch_text_ids": text, "batch_text_lengths": torch.tensor(BATCH_TEXT_LENGTHS),
            "batch_codes": batch_codes, "batch_wav_lengths": torch.tensor(BATCH_WAV_LENGTHS)}


@pytest.fixture(scope="session")
def base_inputs(shipped_base, reference_wav) -> dict[str, torch.Tensor]:
    """Inputs for the shipped base under the fixture's tensor names (shapes: fixture README, D = model_dim)."""
    from tagtune import audio
    from tagtune.checkpoint import load_dvae, load_gpt
    from tagtune.generation.batched import pad_rows
    from tagtune.text import TextTokenizer

    gpt, dvae = load_gpt(shipped_base), load_dvae(shipped_base)
    tokenizer = TextTokenizer(shipped_base / "bpe.model", normalizer=None)
    cond_mel = audio.MelSpectrogram()(audio.load_reference(reference_wav))  # (1, 100, 235)
    ids = [_text_ids(tokenizer, t) for t in TEXTS]
    with torch.no_grad():
        conds = gpt.get_conditioning(cond_mel, torch.tensor([cond_mel.shape[2]]))  # (1, 32, D)
        codes = dvae.get_codebook_indices(cond_mel)  # (1, 59)
        latents = gpt.latents(conds, ids[0][None], codes[:, :LATENT_CODES])  # (1, 40, D)
    long_ids = torch.cat([ids[0], _text_ids(tokenizer, LONG_TEXT)])
    inputs = {"cond_mel": cond_mel, "conds": conds, "dvae_codes": codes, "latents": latents,
              "gen_text_ids": ids[0][None], "latent_text_ids": ids[0][None],
              "latent_codes": codes[:, :LATENT_CODES],
              "gen_batch_text_ids": pad_rows(ids, gpt.cfg.stop_text_token, "cpu")}
    g = torch.Generator().manual_seed(0)
    return inputs | _batch(cond_mel, codes, ids[0], long_ids, gpt.cfg, g)


def load_plain_gpt(folder: Path):
    """The GPT of a model folder loaded with torch and yaml alone (not through tagtune's loader), fp32, eval."""
    from tagtune.config import ModelConfig
    from tagtune.models.unified_voice import UnifiedVoice

    cfg = ModelConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    gpt = UnifiedVoice(cfg.gpt)
    state = torch.load(folder / "gpt.pth", weights_only=True)
    gpt.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return gpt.eval()
