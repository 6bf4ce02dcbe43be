"""`prepare` for an IndexTTS-2 base on the tiny v2 fixture: semantic codes as targets (w2v-BERT layer -> stats ->
codec), w2v-BERT features as conditioning, the speaker from another clip, the emotion never from a tagged target;
batched (batch-independent) and resumable like 1.x.

The corpus is a few short clips of built-in babble (the fixture allows 100 codes, 2 s), four speakers laid out
so that every emotion choice occurs: A has tagged and untagged clips, B only tagged ones, C one tagged clip,
D one untagged clip.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune.data.shards import ShardReader
from tagtune.data.split import EMO_NONE, EMO_OTHER, EMO_PROMPT, EMO_PROMPT_TAGGED, EMO_SELF
from v2_fixture import V2_CHECKPOINT, require_v2

SAMPLE_RATE = 24000
WORDS = ["HELLO", "WORLD", "THIS", "IS", "WELL", "THAT", "FUNNY", "REALLY"]
# (speaker, tagged) of each clip
LAYOUT = [("A", True), ("A", False), ("A", True), ("A", False), ("B", True), ("B", True), ("B", True),
          ("C", True), ("D", False)]
VOICE_OF = {"A": "builtin-f1", "B": "builtin-m1", "C": "builtin-f1", "D": "builtin-m1"}


def _clip(k: int, speaker: str, tagged: bool, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    from tagtune.synthetic.babble import babble
    from tagtune.synthetic.events import make_event
    from tagtune.synthetic.voices import VOICES

    voice = VOICES[VOICE_OF[speaker]]
    first, second = WORDS[k % len(WORDS)], WORDS[(3 * k + 1) % len(WORDS)]
    gap = np.zeros(int(0.05 * SAMPLE_RATE), dtype=np.float32)
    parts = [gap, babble(first.lower(), voice, SAMPLE_RATE)[: int(0.5 * SAMPLE_RATE)], gap]
    text = first
    if tagged:
        parts += [make_event("giggle", rng, SAMPLE_RATE, 0.08, f0=voice.f0), gap]
        text += " <giggles>"
    parts += [babble(second.lower(), voice, SAMPLE_RATE)[: int(0.4 * SAMPLE_RATE)], gap]
    audio = np.concatenate(parts)
    audio = audio + 3e-4 * rng.standard_normal(len(audio)).astype(np.float32)
    return audio[: int(1.9 * SAMPLE_RATE)].astype(np.float32), f"{text} {second}."


def _corpus(folder):
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (speaker, tagged) in enumerate(LAYOUT):
        audio, text = _clip(k, speaker, tagged, rng)
        sf.write(folder / f"c{k}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"audio": f"c{k}.wav", "text": text, "speaker": speaker, "id": f"c{k}"})
    listing = folder / "list.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def _prepare(listing, out, **kw):
    from tagtune.data.for_model import prepare_for_model

    return prepare_for_model(V2_CHECKPOINT, str(listing), out, device="cpu", progress=False, shard_size=4,
                             val_fraction=0.0, **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    require_v2()
    root = tmp_path_factory.mktemp("v2prep")
    listing = _corpus(root / "corpus")
    out = root / "data"
    manifest = _prepare(listing, out)
    examples = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    return listing, out, manifest, examples


def test_manifest_describes_v2_data(prepared):
    _, out, manifest, examples = prepared
    assert manifest["model_family"] == "v2" and manifest["codes"] == "semantic"
    assert manifest["cond_features"]["rate"] == 50 and manifest["cond_features"]["array"] == "features"
    assert manifest["tag_ids"] == {"<giggles>": 224}
    assert manifest["counts"]["accepted"] == len(LAYOUT) and manifest["counts"]["rejected"] == 0
    assert manifest["settings"]["emotion"] == "prompt"
    counts = manifest["emotion"]
    assert (counts[EMO_NONE], counts[EMO_PROMPT_TAGGED], counts[EMO_SELF]) == (1, 3, 1)  # C, B, D
    assert counts.get(EMO_PROMPT, 0) + counts.get(EMO_OTHER, 0) == 4  # A: which depends on A's prompt draws
    assert [224 in ShardReader(out / "shards" / e["shard"]).text_ids(e["row"]).tolist() for e in examples] \
        == [tagged for _, tagged in LAYOUT]


def test_speaker_and_emotion_inputs_never_come_from_a_tagged_target(prepared):
    _, _, _, examples = prepared
    for e in examples:
        assert examples[e["cond"]]["speaker"] == e["speaker"]
        if e["speaker"] in ("A", "B"):
            assert e["cond"] != e["id"] and e["cond_mode"] == "other"
        if e["has_tag"]:
            assert e["emo"] != e["id"]  # the trap: the event would be learnt from the emotion vector
        if e["emo"] is None:
            assert e["emo_mode"] == EMO_NONE and e["speaker"] == "C"
            continue
        emo = examples[e["emo"]]
        assert emo["speaker"] == e["speaker"] and (emo["shard"], emo["row"]) == (e["emo_shard"], e["emo_row"])
        if e["emo_mode"] in (EMO_PROMPT, EMO_OTHER):
            assert not emo["has_tag"]
        if e["emo_mode"] == EMO_PROMPT:
            assert e["emo"] == e["cond"]
    modes = {(e["speaker"], e["has_tag"]): e["emo_mode"] for e in examples}
    assert modes[("B", True)] == EMO_PROMPT_TAGGED and modes[("D", False)] == EMO_SELF
    assert modes[("A", True)] in (EMO_PROMPT, EMO_OTHER)


def test_codes_and_features_are_the_official_ones_of_each_clip_alone(prepared):
    """Each clip through the speaker path, w2v-BERT alone (no batch), the stats and the codec: the shard's codes
    exactly, its float16 features to float16 rounding (batched matmuls may round the fp32 values differently)."""
    from tagtune.data.decode import DecodeSettings, decode_clip
    from tagtune.data.semantic import speaker_path_16k
    from tagtune.loaders import load_model
    from tagtune.models.v2.semantic_features import extract_inputs

    listing, out, _, examples = prepared
    m = load_model(V2_CHECKPOINT)
    for e in examples[:4]:
        wav = decode_clip(str(listing.parent / f"c{e['index']}.wav"), DecodeSettings())
        feats, mask = extract_inputs(m.feature_extractor, speaker_path_16k(wav))
        with torch.no_grad():
            states = m.semantic_features(feats, mask)[:, : int(mask.sum())]  # (1, T, 1024)
            codes = m.semantic_codec.quantize(states)[0][0]
        shard = ShardReader(out / "shards" / e["shard"])
        assert torch.equal(shard.codes(e["row"]), codes) and e["n_codes"] == codes.numel()
        assert abs(codes.numel() - 50 * e["seconds"]) <= 2  # 50 semantic codes per second
        stored = shard.features(e["row"])  # (1024, T) cropped to 6 s: the whole clip here
        assert stored.shape == (1024, codes.numel())
        torch.testing.assert_close(stored, states[0].T, rtol=2 ** -10, atol=1e-4)  # float16 storage


def test_semantic_encoder_batches_give_each_clip_its_own_numbers():
    from tagtune.data.semantic import semantic_clip_encoder
    from tagtune.loaders import load_model

    require_v2()
    m = load_model(V2_CHECKPOINT)
    rng = np.random.default_rng(3)
    wavs = [_clip(k, "A", k % 2 == 0, rng)[0][: int(s * SAMPLE_RATE)] for k, s in enumerate((1.9, 0.9, 1.37))]
    together = semantic_clip_encoder(m, "cpu", batch_size=3).encode(wavs)
    alone = semantic_clip_encoder(m, "cpu", batch_size=1).encode(wavs)
    for (f1, c1), (f2, c2) in zip(together, alone):
        assert torch.equal(c1, c2)  # padding never reaches a real row: only fp32 rounding differs
        torch.testing.assert_close(f1, f2, rtol=0, atol=1e-4)


def test_prepare_resumes_and_redoes_only_a_missing_shard(prepared):
    listing, out, manifest, _ = prepared
    shards = sorted((out / "shards").iterdir())
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    shards[0].unlink()
    again = _prepare(listing, out)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "shards").iterdir())}
    assert after[shards[1].name] == before[shards[1].name]  # reused as it was
    assert after[shards[0].name][1] == before[shards[0].name][1]  # remade, byte for byte
    assert {k: v for k, v in again.items() if k != "tagtune_version"} == \
        {k: v for k, v in manifest.items() if k != "tagtune_version"}
