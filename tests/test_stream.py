"""Streaming: step-wise searches equal the one-shot ones, the silence rule and vocoder windows are exact,
and ``TTS.stream`` joins to ``TTS.synthesize`` (same codes, audio within the stated tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagtune.evaluate.quality import audio_difference
from tagtune.generation import GenerationConfig, MelDecoder, generate_codes, prepare_prompt, remove_long_silence
from tagtune.generation.batched import pad_rows
from tagtune.generation.postprocess import SILENT_TOKEN
from tagtune.generation.stepwise import new_search, run_search
from tagtune.synthesis.stream import (
    STREAM_TOLERANCE_LSB,
    STREAM_TOLERANCE_LSB_BF16,
    SilenceFilter,
    VocoderStream,
    receptive_field,
)
from tagtune.synthesis.tts import TTS, SeedError, TextError

TEXT = "Hello, World! This is IndexTTS speaking. Well, that is funny, it costs ten dollars."
SETTINGS = {
    "greedy": GenerationConfig.greedy(max_new_tokens=120),
    "sampling": GenerationConfig(num_beams=1, max_new_tokens=120),
    "beams": GenerationConfig(max_new_tokens=120),  # the official default: 3-beam sampling
    "beams from the first": GenerationConfig(max_new_tokens=120, beam_sample_from_first=True),
    "beam search": GenerationConfig(do_sample=False, max_new_tokens=120),
}


@pytest.fixture(scope="module")
def tts(shipped_base):
    return TTS.load(shipped_base, precision="fp32")


@pytest.fixture(scope="module")
def small_sentences(shipped_base):
    """Short sentences in batches of two: several length groups, so sentences finish out of order."""
    return TTS.load(shipped_base, precision="fp32", max_sentence_tokens=12, batch_size=2)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_stepwise_search_gives_the_codes_of_generate_codes(tts, reference_wav, name):
    cfg = SETTINGS[name]
    c, ref = tts.gpt.cfg, tts.reference(reference_wav)
    text_ids = pad_rows(tts.sentences(TEXT)[:1] + [tts.sentences("Well, that is funny.")[0]], c.stop_text_token, "cpu")
    expected, _ = generate_codes(tts.gpt, text_ids, cfg, conds=ref.conds, generator=torch.Generator().manual_seed(5))
    prompt = prepare_prompt(tts.gpt, ref.conds, text_ids)
    prompt = prompt.repeat_rows(cfg.num_beams) if cfg.num_beams > 1 else prompt
    decoder = MelDecoder(tts.gpt, prompt, use_cache=True, position_mode=cfg.position_mode,
                         max_new_tokens=cfg.max_new_tokens)
    search = new_search(prompt.history, cfg, c.stop_mel_token, 2, torch.Generator().manual_seed(5))
    seen = [[], []]
    for _ in run_search(decoder, search):
        for b in range(2):
            now = search.certain(b)
            assert now[: len(seen[b])] == seen[b], "a code called final changed"
            seen[b] = now
    assert torch.equal(search.result(), expected)
    for b in range(2):
        row = expected[b].tolist()
        assert seen[b] == row[: row.index(c.stop_mel_token)] if c.stop_mel_token in row else row


def test_silence_filter_matches_the_official_rule_at_every_prefix():
    rng = np.random.default_rng(0)
    stop = 999
    for trial in range(200):
        runs = []  # alternating speech and silent runs, some long
        for _ in range(int(rng.integers(1, 8))):
            runs += list(rng.integers(100, 110, size=int(rng.integers(1, 6))))
            runs += [SILENT_TOKEN] * int(rng.integers(0, 25))
        row = torch.tensor(runs + [stop])
        expected = remove_long_silence(row[None], stop_token=stop)[0][0].tolist()
        filt, before = SilenceFilter(), []
        for k in range(len(runs) + 1):
            now = filt.final(runs[:k], finished=k == len(runs))
            assert now[: len(before)] == before and expected[: len(now)] == now, (trial, k)
            before = now
        assert before == expected


def test_receptive_field_bounds_the_vocoder_reach(tts):
    """Changing one latent frame changes no output sample more than R frames away."""
    voc = tts.vocoder
    R = receptive_field(voc)
    x = torch.randn(1, 4 * R + 1, voc.cfg.gpt_dim)
    spk = torch.randn(1, 1, voc.cfg.speaker_embedding_dim)
    y = x.clone()
    y[0, 2 * R] += 1.0
    with torch.no_grad():
        diff = (voc(x, speaker=spk) - voc(y, speaker=spk))[0, 0].abs().view(-1, voc.hop_length).amax(1)
    reached = diff.nonzero()[:, 0] - 2 * R
    assert 0 < int(reached.max()) <= R and -R <= int(reached.min()) < 0


def test_vocoder_windows_join_to_one_call(tts):
    voc = tts.vocoder
    latents = torch.randn(150, voc.cfg.gpt_dim) * 0.3
    speaker = torch.randn(1, 1, voc.cfg.speaker_embedding_dim)
    with torch.no_grad():
        whole = torch.clamp(32767 * voc(latents[None], speaker=speaker)[0, 0], -32767, 32767).to(torch.int16).numpy()
    stream, chunks = VocoderStream(voc, speaker), []
    for piece in latents.split(7):
        chunks += stream.push(piece)
    chunks += stream.finish()
    assert len(chunks) > 2
    joined = np.concatenate(chunks)
    assert joined.shape == whole.shape
    assert np.abs(joined.astype(int) - whole.astype(int)).max() <= STREAM_TOLERANCE_LSB


@pytest.fixture(scope="module")
def small_sentences_bf16_latents(shipped_base):
    """The CPU default's decode (int8) with the latent pass on a bf16 backbone copy, whichever CPU runs it."""
    return TTS.load(shipped_base, precision="int8", latent_precision="bf16", max_sentence_tokens=12, batch_size=2)


@pytest.mark.parametrize("name", ["beams", "sampling", "bf16-latents"])
def test_stream_joins_to_synthesize(small_sentences, small_sentences_bf16_latents, reference_wav, name):
    tts = small_sentences_bf16_latents if name == "bf16-latents" else small_sentences
    cfg = SETTINGS["sampling" if name == "bf16-latents" else name]
    assert len(tts.sentences(TEXT)) >= 3
    one = tts.synthesize(TEXT, reference_wav, generation=cfg, seed=7)
    chunks = list(tts.stream(TEXT, reference_wav, generation=cfg, seed=7))
    assert all(c.dtype == np.int16 and c.ndim == 1 and len(c) for c in chunks)
    joined = np.concatenate(chunks)
    assert joined.shape == one.audio.shape and len(chunks) > 1
    worst = np.abs(joined.astype(int) - one.audio.astype(int)).max()
    if name != "bf16-latents":
        assert worst <= STREAM_TOLERANCE_LSB
        return
    # a streamed latent pass runs other matrix shapes than the whole one, so bf16 rounds it differently
    assert worst <= STREAM_TOLERANCE_LSB_BF16, worst
    as_float = [torch.from_numpy(a.astype(np.float32) / 32767) for a in (one.audio, joined)]
    assert audio_difference(*as_float).passes


def test_first_chunk_comes_before_generation_ends(tts, reference_wav, monkeypatch):
    steps = []
    original = MelDecoder.step
    monkeypatch.setattr(MelDecoder, "step", lambda self, tokens: steps.append(1) or original(self, tokens))
    at_first = None
    for _chunk in tts.stream(TEXT, reference_wav, generation=SETTINGS["greedy"], seed=1):
        at_first = len(steps) if at_first is None else at_first
    assert len(steps) > 60 and at_first < len(steps) - 20


def test_bad_input_fails_before_the_first_chunk(tts, reference_wav):
    with pytest.raises(TextError):
        tts.stream("   ", reference_wav)
    with pytest.raises(SeedError):
        tts.stream(TEXT, reference_wav, seed=-1)
