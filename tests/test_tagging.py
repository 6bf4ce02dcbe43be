"""`tags add`: the grown folder keeps the base behaviour for untagged text and gives each tag one id."""

from __future__ import annotations

import json

import pytest
import torch

from tagtune import checkpoint as ckpt
from tagtune.cli import main
from tagtune.loaders import load_model
from tagtune.tags import UnknownTagError
from tagtune.tags.add import add_tags
from tagtune.tags.vocab import parse_tag_list


@pytest.fixture(scope="module")
def grown(shipped_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("grown") / "model"
    res = add_tags(shipped_base, ["<laughs>", "<giggles>", "<SIGH>"], out)
    return out, res


@pytest.fixture(scope="module")
def vocab(shipped_base) -> int:
    """The base tokenizer's size: the first tag gets this id."""
    return ckpt.read_config(shipped_base).gpt.number_text_tokens


def _forward(model_dir, inputs):
    gpt = ckpt.load_gpt(model_dir)
    with torch.no_grad():
        out = gpt.logits(inputs["batch_cond_mel"], inputs["batch_text_ids"], inputs["batch_text_lengths"],
                         inputs["batch_codes"], inputs["batch_wav_lengths"], inputs["batch_cond_mel_lengths"])
    return out


def test_parse_tag_list():
    assert parse_tag_list("<laughs>, giggles ,,<clears throat>") == ["<laughs>", "<giggles>", "<clears throat>"]


def test_ids_contiguous_after_base_vocab(grown, shipped_base, vocab):
    out, res = grown
    assert res.added == {"<laughs>": vocab, "<giggles>": vocab + 1, "<sigh>": vocab + 2}
    cfg = ckpt.read_config(out)
    assert cfg.gpt.number_text_tokens == vocab + 3
    tok = load_model(out).tokenizer
    base_tok = load_model(shipped_base).tokenizer
    assert tok.vocab_size == vocab + 3
    for i in range(base_tok.vocab_size):  # every old piece keeps its id
        assert tok.convert_ids_to_tokens([i]) == base_tok.convert_ids_to_tokens([i])
    ids = tok.encode("Well <LAUGH> that is funny <giggles> ha")
    assert sum(i >= vocab for i in ids) == 2 and vocab in ids and vocab + 1 in ids


def test_grown_keys_shapes_and_old_rows(grown, shipped_base, vocab):
    out, _ = grown
    base = torch.load(shipped_base / "gpt.pth", weights_only=True)
    new = torch.load(out / "gpt.pth", weights_only=True)
    assert set(new) == set(base)
    for k in base:
        if k.startswith(("text_embedding", "text_head")):
            assert new[k].shape[0] == vocab + 4 == (vocab + 3) + 1
            assert torch.equal(new[k][:vocab], base[k][:vocab])
            assert torch.equal(new[k][-1], base[k][-1])  # the spare row stays last
        else:
            assert torch.equal(new[k], base[k]), k


def test_untagged_outputs_bit_identical(grown, shipped_base, base_inputs, vocab):
    out, _ = grown
    a = _forward(shipped_base, base_inputs)
    b = _forward(out, base_inputs)
    assert torch.equal(a.mel_logits, b.mel_logits)
    assert torch.equal(a.text_logits[:, :vocab], b.text_logits[:, :vocab])


def test_add_again_appends_only_new(grown, tmp_path, vocab):
    out, _ = grown
    again = add_tags(out, ["<laughs>", "<chuckles>"], tmp_path / "again")
    assert again.added == {"<chuckles>": vocab + 3}
    assert again.kept == {"<laughs>": vocab, "<giggles>": vocab + 1, "<sigh>": vocab + 2}
    tags = json.loads((tmp_path / "again" / "tags.json").read_text())
    assert [t["id"] for t in tags["tags"]] == [vocab, vocab + 1, vocab + 2, vocab + 3]
    assert ckpt.load_gpt(tmp_path / "again").text_embedding.weight.shape[0] == vocab + 5


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
