"""The tiny IndexTTS-2 base: the shipped folder (official keys, size, hashes, a GPT that learned bilingual speech
on its own semantic codes, voice roles) and a quick rebuild that is deterministic."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import SHARED, read_key_list
from tagtune.checkpoint import file_sha256, read_state_dict
from tagtune.loaders import LoadedModelV2, load_model
from tagtune.synthetic.voices import FINE_TUNE, HELD_OUT, PRETRAIN, voices_with
from tagtune.tiny.corpus import planned_script_digest
from tagtune.tiny.v2.build import DEFAULT_OUT, build_tiny_model_v2
from tagtune.tiny.v2.settings import BuildSettingsV2

SHIPPED = DEFAULT_OUT
MAX_FOLDER_BYTES = 30 * 1000 * 1000
LANGUAGES = ("en", "zh")
MIN_STOP_RATE = 0.8
V2_KEYS = SHARED / "spec" / "official-keys" / "v2"


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def shipped() -> LoadedModelV2:
    if not (SHIPPED / "BUILD.json").is_file():
        pytest.fail(f"the tiny v2 base is missing from {SHIPPED}: run python -m tagtune.tiny.v2.build")
    return load_model(SHIPPED, eager=True)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((SHIPPED / "BUILD.json").read_text())


@pytest.fixture(scope="module")
def quick_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-v2-quick")
    for name in ("a", "b"):
        build_tiny_model_v2(root / name, seed=3, settings=BuildSettingsV2.quick(), log=_quiet)
    return root / "a", root / "b"


def key_pattern(keys) -> set[str]:
    """Keys with block indices replaced by '#', so models of different depth compare."""
    return {re.sub(r"\.\d+(?=\.)", ".#", k) for k in keys}


# ------------------------------------------------------------------------------------------ shipped folder


def test_shipped_folder_loads_every_network_and_fits_budget(shipped, record):
    assert isinstance(shipped, LoadedModelV2)
    shipped.check_vocabulary()
    cfg = shipped.config
    assert shipped.tokenizer.vocab_size == cfg.gpt.number_text_tokens
    assert cfg.semantic_codec.codebook_size + 2 == cfg.gpt.number_mel_codes
    assert shipped.semantic_features.hidden_layer == cfg.sizes.w2v_bert_hidden_layer
    total = 0
    for name, info in record["files"].items():
        assert file_sha256(SHIPPED / name) == info["sha256"], f"{name} changed since the build"
        total += (SHIPPED / name).stat().st_size
    assert total <= MAX_FOLDER_BYTES, total
    assert {p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob("*") if p.is_file()} == {*record["files"],
                                                                                              "BUILD.json"}


@pytest.mark.parametrize("dump, path, part", [
    ("sd_gpt_v2.txt", "gpt.pth", None),
    ("sd_s2mel_v2_cfm.txt", "s2mel.pth", "cfm"),
    ("sd_s2mel_v2_length_regulator.txt", "s2mel.pth", "length_regulator"),
    ("sd_s2mel_v2_gpt_layer.txt", "s2mel.pth", "gpt_layer"),
    ("sd_campplus_v2.txt", "hf_cache/campplus_cn_common.bin", None),
    ("sd_bigvgan_v2_22k.txt", "hf_cache/bigvgan/bigvgan_generator.pt", "generator"),
    ("sd_semantic_codec_v2.txt", "hf_cache/semantic_codec_model.safetensors", None),
])
def test_shipped_key_patterns_match_the_official_dumps(dump, path, part):
    if not V2_KEYS.is_dir():
        pytest.skip(f"official IndexTTS2 key lists not found at {V2_KEYS}")
    if part in (None, "generator"):
        state = read_state_dict(SHIPPED / path, part)
    else:
        state = torch.load(SHIPPED / path, map_location="cpu", weights_only=True)["net"][part]
    assert key_pattern(state) == key_pattern(read_key_list(V2_KEYS / dump)), dump


def test_shipped_codec_uses_its_whole_codebook(record, shipped):
    codec = record["results"]["codec"]
    assert codec["codes_used_on_corpus"] >= 0.95 * shipped.config.semantic_codec.codebook_size
    assert 45 <= codec["code_rate_per_s"] <= 55  # w2v-BERT rows: 50 per second


def test_shipped_base_speaks_and_stops_in_both_languages(record):
    quality = record["quality"]
    assert set(quality) == set(LANGUAGES)
    for lang in LANGUAGES:
        q = quality[lang]
        assert q["checked"] >= 16 and q["stop_rate"] >= MIN_STOP_RATE, (lang, q)
        assert q["val_clips"] >= 40 and q["val_code_ce"] < 4.5, (lang, q)  # random init: ~ln(258) = 5.55


def test_shipped_gpt_beats_random_init_on_fresh_clips(shipped, tmp_path):
    """Code CE on freshly generated clips of each language, encoded by the shipped front end the way
    ``prepare`` encodes them: the shipped GPT is far below a random-init one."""
    from tagtune.data.semantic import semantic_clip_encoder
    from tagtune.models.v2.gpt import UnifiedVoiceV2
    from tagtune.tiny.corpus import by_language, load_clips, make_corpus
    from tagtune.tiny.v2.pretrain import ExampleV2, evaluate, same_speaker

    make_corpus(tmp_path / "c", n_clips=16, seed=12345, chinese_fraction=0.5)
    clips = load_clips(tmp_path / "c")
    encoded = semantic_clip_encoder(shipped, device="cpu").encode([c.wav.numpy() for c in clips])
    examples = [ExampleV2(torch.tensor(shipped.tokenizer.encode(c.text)), codes, feats.T.half(), c.speaker)
                for c, (feats, codes) in zip(clips, encoded)]
    pools = same_speaker(examples, list(range(len(clips))))
    torch.manual_seed(0)
    untrained = UnifiedVoiceV2(shipped.config.gpt).eval()
    for lang, idx in by_language(clips, list(range(len(clips)))).items():
        assert idx, lang
        trained = evaluate(shipped.gpt, examples, idx, pools)["mel_loss"]
        random_init = evaluate(untrained, examples, idx, pools)["mel_loss"]
        assert random_init > 5.0
        assert trained < random_init - 1.0, (lang, trained, random_init)


def test_shipped_base_heard_only_pretrain_voices(record):
    roles, corpus = record["voice_roles"], record["corpus"]
    for role in (PRETRAIN, FINE_TUNE, HELD_OUT):
        assert roles[role] == list(voices_with(role, roles["engine"])), role
    assert set(corpus["speakers"]) == set(roles[PRETRAIN])
    assert set(corpus["languages"]) == set(LANGUAGES) and min(corpus["languages"].values()) > 800


def test_shipped_v2_base_was_built_from_todays_generator(record):
    corpus, settings = record["corpus"], record["settings"]
    today = planned_script_digest(corpus["n_clips"], record["stage_seeds"]["corpus"], corpus["engine"],
                                  settings["chinese_fraction"])
    assert today == corpus["script_sha256"], "generator changed since the tiny v2 base was built: " \
        "rebuild it with python -m tagtune.tiny.v2.build --seed 0"


# --------------------------------------------------------------------------------------------- quick build


def test_quick_build_writes_a_loadable_official_v2_folder(quick_dirs):
    folder = quick_dirs[0]
    m = load_model(folder, eager=True)
    assert isinstance(m, LoadedModelV2) and m.tokenizer.vocab_size == m.config.gpt.number_text_tokens
    rec = json.loads((folder / "BUILD.json").read_text())
    assert rec["seed"] == 3 and rec["builder"] == "tagtune.tiny.v2.build"
    assert set(rec["corpus"]["languages"]) == set(LANGUAGES)
    assert set(rec["corpus"]["speakers"]) <= set(rec["voice_roles"][PRETRAIN])
    for lang in LANGUAGES:
        q = rec["quality"][lang]
        assert q["checked"] == 1 and 0.0 <= q["stop_rate"] <= 1.0 and q["val_code_ce"] > 0, (lang, q)
    for name, info in rec["files"].items():
        assert file_sha256(folder / name) == info["sha256"], name
    gpt_state = read_state_dict(folder / "gpt.pth")
    assert all(v.dtype == torch.float16 for v in gpt_state.values() if v.is_floating_point())


def test_quick_build_is_deterministic(quick_dirs):
    a, b = (json.loads((d / "BUILD.json").read_text())["files"] for d in quick_dirs)
    assert a == b  # every file byte-identical (SHA-256), the w2v-BERT and codec fits included
