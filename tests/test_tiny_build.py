"""The tiny base model: the shipped folder (official keys, size, hashes, learned bilingual GPT, voice roles)
and a quick rebuild."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import read_key_list
from tagtune.checkpoint import file_sha256, read_state_dict
from tagtune.config import ModelConfig
from tagtune.loaders import load_model
from tagtune.models.bigvgan import BigVGAN
from tagtune.models.dvae import DiscreteVAE
from tagtune.models.unified_voice import UnifiedVoice
from tagtune.synthetic.corpus import make_plans
from tagtune.synthetic.voices import FINE_TUNE, HELD_OUT, PRETRAIN, VOICES, voices_with
from tagtune.tiny.bpe import check_layout
from tagtune.tiny.build import DEFAULT_OUT, build_tiny_model
from tagtune.tiny.corpus import check_voice_roles, planned_script_digest
from tagtune.tiny.settings import BuildSettings
from tagtune.tiny.vocoder_train import fast_forward

SHIPPED = DEFAULT_OUT
MAX_FOLDER_BYTES = 20 * 1000 * 1000
WEIGHT_FILES = ("gpt.pth", "dvae.pth", "bigvgan_generator.pth")
LANGUAGES = ("en", "zh")
MIN_STOP_RATE = 0.8  # the shipped base must end its speech in both languages (a fine-tune builds on it)


@pytest.fixture(scope="module")
def shipped():
    if not (SHIPPED / "BUILD.json").is_file():
        pytest.fail(f"the tiny base is missing from {SHIPPED}: run python -m tagtune.tiny.build")
    return load_model(SHIPPED)


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-quick")
    build_tiny_model(out, seed=3, settings=BuildSettings.quick(), log=lambda *_: None)
    return out


def fresh_modules(cfg: ModelConfig) -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return {"gpt.pth": UnifiedVoice(cfg.gpt), "dvae.pth": DiscreteVAE(cfg.vqvae),
                "bigvgan_generator.pth": BigVGAN(cfg.bigvgan)}


def assert_official_layout(model_dir, cfg: ModelConfig) -> None:
    """Every weight file holds exactly the keys and shapes of a freshly built module of the config."""
    for name, module in fresh_modules(cfg).items():
        state = read_state_dict(model_dir / name)
        want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in state.items()} == want, name
    raw = torch.load(model_dir / "bigvgan_generator.pth", map_location="cpu", weights_only=True)
    assert list(raw) == ["generator"]  # the official wrapper


def key_pattern(keys) -> set[str]:
    """Keys with block indices replaced by '#', so models of different depth compare."""
    return {re.sub(r"\.\d+(?=\.)", ".#", k) for k in keys}


# ------------------------------------------------------------------------------------------ shipped folder


def test_shipped_folder_has_official_keys(shipped):
    assert_official_layout(SHIPPED, shipped.config)


def test_shipped_key_patterns_match_official_dumps(shipped, official_keys_dir):
    dumps = {"gpt.pth": "sd_gpt_v15.txt", "dvae.pth": "sd_dvae.txt", "bigvgan_generator.pth": "sd_bigvgan_v15.txt"}
    for name, dump in dumps.items():
        official = list(read_key_list(official_keys_dir / dump))
        assert key_pattern(read_state_dict(SHIPPED / name)) == key_pattern(official), name


def test_shipped_folder_loads_and_fits_budget(shipped):
    gpt, dvae, voc, tok = shipped.gpt, shipped.dvae, shipped.vocoder, shipped.tokenizer
    assert tok.vocab_size == shipped.config.gpt.number_text_tokens == gpt.text_embedding.num_embeddings - 1
    assert voc.hop_length == 1024 and dvae.cfg.num_tokens + 2 == shipped.config.gpt.number_mel_codes
    record = json.loads((SHIPPED / "BUILD.json").read_text())
    total = 0
    for name, info in record["files"].items():
        assert file_sha256(SHIPPED / name) == info["sha256"], f"{name} changed since the build"
        total += (SHIPPED / name).stat().st_size
    assert total <= MAX_FOLDER_BYTES
    check_layout((SHIPPED / "bpe.model").read_bytes())


def test_shipped_dvae_silence_is_code_52(shipped):
    floor = torch.full((1, 100, 64), float(torch.log(torch.tensor(1e-7))))
    codes = shipped.dvae.get_codebook_indices(floor)[0]
    assert codes[2:-2].tolist() == [52] * (len(codes) - 4)


def test_shipped_dvae_uses_many_codes(shipped):
    record = json.loads((SHIPPED / "BUILD.json").read_text())
    assert record["results"]["dvae"]["codes_used"] >= 0.9 * shipped.config.vqvae.num_tokens


def test_shipped_gpt_beats_random_init(shipped, tmp_path):
    """Mel CE on freshly generated clips of each language: the shipped GPT is far below a random-init one."""
    from tagtune.tiny.build import make_examples
    from tagtune.tiny.corpus import by_language, load_clips, make_corpus
    from tagtune.tiny.pretrain import evaluate, same_speaker

    make_corpus(tmp_path / "c", n_clips=16, seed=12345, chinese_fraction=0.5)
    clips = load_clips(tmp_path / "c")
    examples = make_examples(clips, shipped.tokenizer, shipped.dvae)
    mels = [c.mel for c in clips]
    pools = same_speaker(examples, list(range(len(clips))))
    torch.manual_seed(0)
    untrained = UnifiedVoice(shipped.config.gpt).eval()
    for lang, idx in by_language(clips, list(range(len(clips)))).items():
        assert idx, lang
        trained = evaluate(shipped.gpt, examples, idx, mels, pools)["mel_loss"]
        random_init = evaluate(untrained, examples, idx, mels, pools)["mel_loss"]
        assert random_init > 5.0  # ~ln(258) for an untrained model
        assert trained < random_init - 1.5, (lang, trained, random_init)


def test_shipped_base_speaks_and_stops_in_both_languages():
    quality = json.loads((SHIPPED / "BUILD.json").read_text())["quality"]
    assert set(quality) == set(LANGUAGES)
    for lang in LANGUAGES:
        q = quality[lang]
        assert q["checked"] >= 20 and q["stop_rate"] >= MIN_STOP_RATE, (lang, q)
        assert q["val_clips"] >= 50 and q["val_mel_ce"] < 4.0, (lang, q)  # random init: ~5.6


def test_shipped_base_heard_only_pretrain_voices():
    record = json.loads((SHIPPED / "BUILD.json").read_text())
    roles, corpus = record["voice_roles"], record["corpus"]
    engine = roles["engine"]
    for role in (PRETRAIN, FINE_TUNE, HELD_OUT):
        assert roles[role] == list(voices_with(role, engine)), role
    assert roles[FINE_TUNE] and len(roles[HELD_OUT]) >= 2
    assert set(corpus["speakers"]) == set(roles[PRETRAIN])
    assert set(corpus["languages"]) == set(LANGUAGES) and min(corpus["languages"].values()) > 1000


def test_shipped_base_was_built_from_todays_generator():
    """The corpus script the build would speak today is the one the shipped base heard; when templates or the
    voice roster change, the base must be rebuilt (its build command no longer makes it)."""
    record = json.loads((SHIPPED / "BUILD.json").read_text())
    corpus, settings = record["corpus"], record["settings"]
    today = planned_script_digest(corpus["n_clips"], record["stage_seeds"]["corpus"], corpus["engine"],
                                  settings["chinese_fraction"])
    assert today == corpus["script_sha256"], "generator changed since the tiny base was built: " \
        "rebuild it with python -m tagtune.tiny.build --seed 0"


def test_shipped_tokenizer_covers_the_generator_text(shipped):
    """No transcript the corpus generator can write maps to <unk> (Mandarin characters included)."""
    voices = [VOICES[n] for n in voices_with(PRETRAIN)]
    plans = make_plans(400, seed=7, tags=("laughs",), untagged_fraction=1.0, voices=voices, chinese_fraction=0.5)
    texts = [p.text for p in plans]
    assert any(p.language == "zh" for p in plans) and any(p.language == "en" for p in plans)
    tok = shipped.tokenizer
    for text in texts:
        assert tok.unk_token_id not in tok.encode(text), (text, tok.tokenize(text))


@pytest.mark.parametrize("role", [FINE_TUNE, HELD_OUT])
def test_build_refuses_a_voice_outside_pretraining(role):
    banned = voices_with(role, "espeak")[0]
    speakers = {voices_with(PRETRAIN, "espeak")[0]: 5, banned: 1}
    with pytest.raises(ValueError, match=banned):
        check_voice_roles(speakers, "espeak")
    assert check_voice_roles({voices_with(PRETRAIN, "espeak")[0]: 5}, "espeak")[PRETRAIN]


# --------------------------------------------------------------------------------------------- quick build


def test_quick_build_writes_a_loadable_official_folder(quick_dir):
    m = load_model(quick_dir, eager=True)
    assert_official_layout(quick_dir, m.config)
    record = json.loads((quick_dir / "BUILD.json").read_text())
    assert record["seed"] == 3 and set(record["files"]) == {"config.yaml", "bpe.model", *WEIGHT_FILES}
    assert set(record["corpus"]["languages"]) == set(LANGUAGES)  # a bilingual corpus ...
    assert set(record["corpus"]["speakers"]) <= set(record["voice_roles"][PRETRAIN])  # ... of pretrain voices
    corpus = record["corpus"]
    assert corpus["script_sha256"] == planned_script_digest(corpus["n_clips"], record["stage_seeds"]["corpus"],
                                                            corpus["engine"], record["settings"]["chinese_fraction"])
    for lang in LANGUAGES:
        q = record["quality"][lang]
        assert q["val_clips"] >= 1 and q["checked"] == 1 and 0.0 <= q["stop_rate"] <= 1.0, (lang, q)
        assert q["val_mel_ce"] > 0
    for name, info in record["files"].items():
        assert file_sha256(quick_dir / name) == info["sha256"]
    assert m.tokenizer.vocab_size == m.config.gpt.number_text_tokens
    gpt_state = read_state_dict(quick_dir / "gpt.pth")
    assert all(v.dtype == torch.float16 for v in gpt_state.values() if v.is_floating_point())


def test_quick_build_vocoder_identity_stages(quick_dir):
    """The late AMP blocks are exact identities: the cheap training forward equals the full one."""
    m = load_model(quick_dir)
    record = json.loads((quick_dir / "BUILD.json").read_text())
    stages = record["settings"]["vocoder_full_stages"]
    torch.manual_seed(0)
    latents = torch.randn(1, 3, m.config.gpt.model_dim)
    speaker = torch.randn(1, 1, m.config.bigvgan.speaker_embedding_dim)
    with torch.no_grad():
        full = m.vocoder(latents, speaker=speaker)
        fast = fast_forward(m.vocoder, latents, speaker, stages)
    assert full.shape == (1, 1, 3 * 1024)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_quick_build_is_bit_identical(quick_dir, tmp_path):
    build_tiny_model(tmp_path, seed=3, settings=BuildSettings.quick(), log=lambda *_: None)
    for name in ("config.yaml", "bpe.model", *WEIGHT_FILES):
        assert file_sha256(tmp_path / name) == file_sha256(quick_dir / name), name
