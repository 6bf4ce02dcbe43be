"""The code-level speaker embedding: on constructed voices (each speaker its own code distribution), on voices
it never saw, on bad input, and on the built-in engine's voices encoded by the shipped tiny base's DVAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune.evaluate.speaker import (
    MIN_CODES,
    CodeSpeakerEmbedding,
    equal_error_rate,
    verification,
)

N_CODES, DIM = 64, 8
SEEN, UNSEEN = 16, 5  # constructed speakers used for training / never shown to it
CLIPS_PER_SPEAKER = 16
# built-in voices: the pre-training ones plus the fine-tune voice are learned, the held-out ones never seen
REAL_VOICES = ("builtin-f1", "builtin-f2", "builtin-m1", "builtin-m2", "builtin-f3")
REAL_UNSEEN = ("builtin-f4", "builtin-m3")
REAL_CLIPS = 168


def _voices(n: int, seed: int) -> torch.Tensor:
    """(n, N_CODES) code distributions, one per constructed speaker."""
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(n, N_CODES, generator=g)).softmax(1)


def _clips(voices: torch.Tensor, per_speaker: int, seed: int, prefix: str = "s") -> list[tuple[torch.Tensor, str]]:
    """Clips of 20-60 codes drawn from each speaker's own distribution."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, p in enumerate(voices):
        for _ in range(per_speaker):
            n = int(torch.randint(20, 61, (1,), generator=g))
            out.append((torch.multinomial(p, n, replacement=True, generator=g), f"{prefix}{k}"))
    return out


@pytest.fixture(scope="module")
def codebook() -> torch.Tensor:
    return torch.randn(N_CODES, DIM, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def fitted(codebook) -> tuple[CodeSpeakerEmbedding, dict]:
    emb = CodeSpeakerEmbedding(codebook)
    return emb, emb.fit(_clips(_voices(SEEN, 1), CLIPS_PER_SPEAKER, 2), seed=0)


def test_constructed_speakers_are_told_apart_on_held_out_clips(fitted):
    emb, report = fitted
    assert report["speakers"] == SEEN and report["train_clips"] + report["heldout_clips"] == SEEN * CLIPS_PER_SPEAKER
    assert report["heldout_clips"] == SEEN * 4  # a quarter of each speaker's 16 clips
    assert report["embedding_dim"] == SEEN - 1
    assert report["accuracy"] >= 0.95 and report["centroid_accuracy"] >= 0.95
    assert report["same_speaker_cosine"] > report["different_speaker_cosine"] + 0.5
    assert report["eer"] <= 0.05
    vec = emb.embed(_clips(_voices(SEEN, 1)[:1], 1, 3)[0][0])
    assert vec.shape == (SEEN - 1,) and float(vec.norm()) == pytest.approx(1.0, abs=1e-5)


def test_speakers_it_never_saw_still_separate(fitted):
    emb, _ = fitted
    clips = _clips(_voices(UNSEEN, 7), 8, 8, prefix="new")
    vectors = torch.stack([emb.embed(c) for c, _ in clips])
    figures = verification(vectors, [s for _, s in clips])
    assert figures["same_speaker_cosine"] > figures["different_speaker_cosine"] + 0.3
    assert figures["eer"] <= 0.2
    a, b, other = clips[0][0], clips[1][0], clips[8][0]  # two clips of new0, one of new1
    assert emb.similarity(a, b) > emb.similarity(a, other)


def test_fit_is_deterministic_by_seed(codebook):
    clips = _clips(_voices(4, 11), 8, 12)
    first, second, third = (CodeSpeakerEmbedding(codebook) for _ in range(3))
    report = first.fit(clips, seed=5)
    assert second.fit(clips, seed=5) == report
    assert torch.equal(first.embed(clips[0][0]), second.embed(clips[0][0]))
    third.fit(clips, seed=6)  # another held-out split, so another training set
    assert not torch.equal(first.projection, third.projection)


def test_saved_embedding_reloads_from_json(fitted):
    emb, report = fitted
    again = CodeSpeakerEmbedding.from_dict(json.loads(json.dumps(emb.to_dict())))
    codes = torch.arange(40) % N_CODES
    assert torch.allclose(again.embed(codes), emb.embed(codes), atol=1e-6)
    assert again.summary == report and again.speakers == emb.speakers
    with pytest.raises(ValueError, match="format"):
        CodeSpeakerEmbedding.from_dict({**emb.to_dict(), "format": 99})


def test_bad_input_is_a_clear_error(fitted, codebook):
    emb, _ = fitted
    with pytest.raises(ValueError, match=f"at least {MIN_CODES} DVAE codes, got 0"):
        emb.embed(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="got 3"):
        emb.similarity(torch.tensor([1, 2, 3]), torch.arange(20))
    with pytest.raises(ValueError, match="got 5"):  # start/stop mel ids are no DVAE codes
        emb.embed(torch.tensor([1, 2, 3, 4, 5, N_CODES, N_CODES + 1, N_CODES, N_CODES, N_CODES]))
    with pytest.raises(ValueError, match="shape"):
        emb.embed(torch.zeros(2, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        emb.embed(torch.zeros(20))
    with pytest.raises(ValueError, match=">= 0"):
        emb.embed(torch.full((20,), -1))
    assert emb.embed(torch.arange(20)[None]).shape == emb.embed(torch.arange(20)).shape  # (1, N) is fine
    with pytest.raises(RuntimeError, match="not fitted"):
        CodeSpeakerEmbedding(codebook).embed(torch.arange(20))
    with pytest.raises(ValueError, match="at least 3 speakers"):
        CodeSpeakerEmbedding(codebook).fit(_clips(_voices(2, 3), 4, 4))
    with pytest.raises(ValueError, match="heldout_fraction"):
        CodeSpeakerEmbedding(codebook).fit(_clips(_voices(3, 3), 4, 4), heldout_fraction=1.0)


def test_short_training_clips_are_skipped_and_counted(codebook):
    clips = _clips(_voices(3, 21), 4, 22) + [(torch.tensor([1, 2]), "s0"), (torch.zeros(0, dtype=torch.long), "s9")]
    report = CodeSpeakerEmbedding(codebook).fit(clips, heldout_fraction=0.0)
    assert report["skipped_short"] == 2 and report["speakers"] == 3 and report["heldout_clips"] == 0
    assert report["accuracy"] is None and report["eer"] is None


def test_equal_error_rate_of_known_scores():
    assert equal_error_rate(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2, 0.3])) == 0.0
    assert equal_error_rate(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])) == 1.0
    assert equal_error_rate(torch.tensor([0.9, 0.8, 0.2, 0.7]), torch.tensor([0.1, 0.3, 0.85, 0.0])) == 0.25


@pytest.fixture(scope="module")
def builtin_codes(shipped_base, tmp_path_factory) -> list[tuple[torch.Tensor, str, str]]:
    """(codes, speaker, language) of short built-in English and Chinese clips, encoded as `prepare` does."""
    from tagtune.data.encoders import clip_encoder_from_model
    from tagtune.synthetic import generate_corpus

    folder = tmp_path_factory.mktemp("speaker-corpus")
    generate_corpus(folder, n_clips=REAL_CLIPS, seed=4, untagged_fraction=1.0, voices=REAL_VOICES + REAL_UNSEEN,
                    engine="builtin", chinese_fraction=0.3, workers=1)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    wavs = [sf.read(folder / r["audio"], dtype="float32")[0].astype(np.float32) for r in rows]
    encoded = clip_encoder_from_model(shipped_base, device="cpu").encode(wavs)
    return [(codes, r["speaker"], r["language"]) for (_, codes), r in zip(encoded, rows)]


def test_builtin_voices_through_the_tiny_dvae(shipped_base, builtin_codes):
    from tagtune.checkpoint import load_dvae

    codebook = load_dvae(shipped_base).codebook.embed.t().contiguous()  # (n_codes, dim), as evaluation reads it
    emb = CodeSpeakerEmbedding(codebook)
    report = emb.fit([(c, s) for c, s, _ in builtin_codes if s in REAL_VOICES], seed=0)
    assert report["speakers"] == len(REAL_VOICES) and {"en", "zh"} == {lang for *_, lang in builtin_codes}
    assert report["accuracy"] >= 0.6  # chance: 0.2
    assert report["same_speaker_cosine"] > report["different_speaker_cosine"] + 0.3
    unseen = [(c, s) for c, s, _ in builtin_codes if s in REAL_UNSEEN]
    figures = verification(torch.stack([emb.embed(c) for c, _ in unseen]), [s for _, s in unseen])
    assert figures["same_speaker_cosine"] > figures["different_speaker_cosine"] + 0.2
