"""`tagtune tags add` on an IndexTTS-2 folder: tag pieces in bpe.model, rows in the v2 GPT's text tables,
number_text_tokens in config.yaml, the other files carried over; the grown folder loads strictly."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
import torch

from tagtune.checkpoint import read_config_v2, read_state_dict
from tagtune.config import ModelConfigV2
from tagtune.folders import AUX_MODELS_DIR, PROVENANCE_FILE, TAGS_FILE
from tagtune.loaders import LoadedModelV2, load_model
from tagtune.models.v2.gpt import UnifiedVoiceV2
from tagtune.tags.add import add_tags
from tagtune.tags.rows import TEXT_KEYS, TagInit, grow_base
from v2_fixture import V2_CHECKPOINT, require_v2

TAGS = ["<giggles>", "<sighs>"]
BASE_TOKENS = 224  # number_text_tokens of the fixture


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    require_v2()
    out = tmp_path_factory.mktemp("v2tags") / "grown"
    return add_tags(V2_CHECKPOINT, TAGS, out, init="mean", seed=3)


def test_tags_add_writes_a_v2_folder_with_the_tags(grown):
    out = grown.out_dir
    assert grown.added == {"<giggles>": BASE_TOKENS, "<sighs>": BASE_TOKENS + 1}
    cfg = read_config_v2(out)
    assert isinstance(cfg, ModelConfigV2) and cfg.gpt.number_text_tokens == BASE_TOKENS + 2
    assert cfg.fixture is not None and cfg.fixture.w2v_bert_hidden_layer == 1  # the fixture's sizes survive
    sp = spm.SentencePieceProcessor(model_file=str(out / cfg.dataset.bpe_model))
    assert sp.get_piece_size() == BASE_TOKENS + 2
    assert [sp.id_to_piece(i) for i in (BASE_TOKENS, BASE_TOKENS + 1)] == ["\u2581" + t.upper() for t in TAGS]
    for name in ("s2mel.pth", "wav2vec2bert_stats.pt", "feat1.pt", "feat2.pt"):
        assert (out / name).read_bytes() == (V2_CHECKPOINT / name).read_bytes()
    aux = sorted(p.relative_to(out / AUX_MODELS_DIR) for p in (out / AUX_MODELS_DIR).rglob("*") if p.is_file())
    assert aux == sorted(p.relative_to(V2_CHECKPOINT / AUX_MODELS_DIR)
                         for p in (V2_CHECKPOINT / AUX_MODELS_DIR).rglob("*") if p.is_file())
    assert {t["tag"]: t["id"] for t in json.loads((out / TAGS_FILE).read_text())["tags"]} == grown.added
    assert json.loads((out / PROVENANCE_FILE).read_text())["history"][-1]["tags"] == TAGS


def test_grown_rows_sit_before_the_spare_row_and_old_rows_are_untouched(grown):
    base = read_state_dict(V2_CHECKPOINT / "gpt.pth", "model")
    state = read_state_dict(grown.out_dir / "gpt.pth", "model")
    assert set(state) == set(base)  # the official key set: only the text tables change shape
    for key in TEXT_KEYS:
        assert state[key].shape[0] == BASE_TOKENS + 3
        assert torch.equal(state[key][:BASE_TOKENS], base[key][:BASE_TOKENS])
        assert torch.equal(state[key][-1], base[key][-1])  # the spare row stays last
    changed = [k for k in base if k not in TEXT_KEYS and not torch.equal(base[k], state[k])]
    assert changed == []


def test_grown_folder_loads_strictly_and_tokenizes_the_tags(grown):
    m = load_model(grown.out_dir)
    assert isinstance(m, LoadedModelV2)
    m.check_vocabulary()
    assert isinstance(m.gpt, UnifiedVoiceV2) and m.gpt.text_embedding.num_embeddings == BASE_TOKENS + 3
    ids = m.tokenizer.encode("Well, that is funny <giggles> really.")
    assert BASE_TOKENS in ids and BASE_TOKENS + 1 not in ids


def test_grow_base_matches_tags_add_and_keeps_untagged_logits(grown):
    gpt, cfg, new_ids = grow_base(V2_CHECKPOINT, TAGS, TagInit("mean", 3))
    assert isinstance(gpt, UnifiedVoiceV2) and isinstance(cfg, ModelConfigV2) and new_ids == [224, 225]
    written = read_state_dict(grown.out_dir / "gpt.pth", "model")
    for key in TEXT_KEYS:
        assert torch.equal(gpt.state_dict()[key], written[key])
    base = load_model(V2_CHECKPOINT).gpt
    torch.manual_seed(0)
    spk = torch.randn(1, 40, 1024)
    conds, emovec = base.get_conditioning(spk), base.get_emovec(spk)
    text, codes = torch.tensor([[5, 9, 40, 7]]), torch.tensor([[3, 17, 90, 11, 2]])
    args = (conds, emovec, text, torch.tensor([4]), codes, torch.tensor([5]))
    with torch.no_grad():
        before, after = base.logits(*args), gpt.logits(*args)
    assert torch.equal(before.mel_logits, after.mel_logits)
    assert torch.equal(before.text_logits, after.text_logits[:, list(range(BASE_TOKENS)) + [-1]])


def test_words_init_reads_the_v2_tokenizer(tmp_path):
    from tagtune.text.tokenizer import TextTokenizer

    require_v2()
    out = add_tags(V2_CHECKPOINT, ["<giggles>"], tmp_path / "words", init="words").out_dir
    state = read_state_dict(out / "gpt.pth", "model")
    base = read_state_dict(V2_CHECKPOINT / "gpt.pth", "model")
    pieces = list(TextTokenizer(out / "bpe.model", normalizer=None).word_piece_ids("GIGGLES"))
    assert pieces and max(pieces) < BASE_TOKENS
    for key in TEXT_KEYS:
        assert torch.allclose(state[key][BASE_TOKENS], base[key][pieces].mean(0))


def test_cli_tags_add_on_a_v2_folder(tmp_path, capsys):
    from tagtune.cli import main

    require_v2()
    assert main(["tags", "add", "--model", str(V2_CHECKPOINT), "--tags", "<laughs>", "--out", str(tmp_path / "o")]) == 0
    assert f"added <laughs> -> id {BASE_TOKENS}" in capsys.readouterr().out
    assert read_config_v2(tmp_path / "o").gpt.number_text_tokens == BASE_TOKENS + 1
