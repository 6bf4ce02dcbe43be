"""`tags add`: the grown folder keeps the base behaviour for untagged text and gives each tag one id."""

from __future__ import annotations

import json

import pytest
import torch

from tagtune import checkpoint as ckpt
from tagtune.loaders import load_model
from tagtune.cli import main
from tagtune.tags.add import add_tags
from tagtune.tags.vocab import parse_tag_list
from tagtune.tags import UnknownTagError


@pytest.fixture(scope="module")
def grown(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grown") / "model"
    res = add_tags(fixture_dir / "checkpoint", ["<laughs>", "<giggles>", "<SIGH>"], out)
    return out, res


def _forward(model_dir, expected):
    gpt = ckpt.load_gpt(model_dir)
    with torch.no_grad():
        out = gpt.logits(expected["batch_cond_mel"], expected["batch_text_ids"], expected["batch_text_lengths"],
                         expected["batch_codes"], expected["batch_wav_lengths"], expected["batch_cond_mel_lengths"])
    return out


def test_parse_tag_list():
    assert parse_tag_list("<laughs>, giggles ,,<clears throat>") == ["<laughs>", "<giggles>", "<clears throat>"]


def test_ids_contiguous_after_base_vocab(grown, fixture_dir):
    out, res = grown
    assert res.added == {"<laughs>": 320, "<giggles>": 321, "<sigh>": 322}
    cfg = ckpt.read_config(out)
    assert cfg.gpt.number_text_tokens == 323
    tok = load_model(out).tokenizer
    base_tok = load_model(fixture_dir / "checkpoint").tokenizer
    assert tok.vocab_size == 323
    for i in range(base_tok.vocab_size):  # every old piece keeps its id
        assert tok.convert_ids_to_tokens([i]) == base_tok.convert_ids_to_tokens([i])
    ids = tok.encode("Well <LAUGH> that is funny <giggles> ha")
    assert sum(i in (320, 321, 322) for i in ids) == 2 and 320 in ids and 321 in ids


def test_grown_keys_shapes_and_old_rows(grown, fixture_dir):
    out, _ = grown
    base = torch.load(fixture_dir / "checkpoint" / "gpt.pth", weights_only=True)
    new = torch.load(out / "gpt.pth", weights_only=True)
    assert set(new) == set(base)
    for k in base:
        if k.startswith(("text_embedding", "text_head")):
            assert new[k].shape[0] == 324 == 323 + 1
            assert torch.equal(new[k][:320], base[k][:320])
            assert torch.equal(new[k][-1], base[k][-1])  # the spare row stays last
        else:
            assert torch.equal(new[k], base[k]), k


def test_untagged_outputs_bit_identical(grown, fixture_dir, expected):
    out, _ = grown
    a = _forward(fixture_dir / "checkpoint", expected)
    b = _forward(out, expected)
    assert torch.equal(a.mel_logits, b.mel_logits)
    assert torch.equal(a.text_logits[:, :320], b.text_logits[:, :320])


def test_add_again_appends_only_new(grown, tmp_path):
    out, _ = grown
    again = add_tags(out, ["<laughs>", "<chuckles>"], tmp_path / "again")
    assert again.added == {"<chuckles>": 323}
    assert again.kept == {"<laughs>": 320, "<giggles>": 321, "<sigh>": 322}
    tags = json.loads((tmp_path / "again" / "tags.json").read_text())
    assert [t["id"] for t in tags["tags"]] == [320, 321, 322, 323]
    assert ckpt.load_gpt(tmp_path / "again").text_embedding.weight.shape[0] == 325


def test_unknown_tag_error_lists_known(grown):
    tok = load_model(grown[0]).tokenizer
    with pytest.raises(UnknownTagError) as e:
        tok.encode("hello <coughs> there")
    assert "<laughs>" in str(e.value) and "<giggles>" in str(e.value)


def test_cli_tags_add_in_place_keeps_folder_on_error(grown, tmp_path, capsys):
    out, _ = grown
    bad = tmp_path / "no-model"
    assert main(["tags", "add", "--model", str(bad), "--tags", "<x>", "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err or not (tmp_path / "o").exists()
