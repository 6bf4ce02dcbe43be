"""Neutral tag rows (tagtune.tags.neutral): the fit, where the rows live in a wrapped model, and how a run
records them."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tagtune import lora
from tagtune.folders import shipped_base
from tagtune.lora import LoraSpec
from tagtune.tags.neutral import (
    Insertion,
    NeutralFit,
    divergence,
    fit_neutral_row,
    insertion_points,
    tokenizer_layout,
    untagged_examples,
    with_tag,
)
from tagtune.tags.rows import TEXT_KEYS, TagInit, current_tag_rows, grow_base, set_tag_rows

TAGS = ["<a>", "<b>", "<c>"]


def test_tokenizer_layout_and_insertion_points():
    assert tokenizer_layout(shipped_base() / "bpe.model", spaced_tags=True)[1] is None  # the tag holds the space
    starts, space = tokenizer_layout(shipped_base() / "bpe.model", spaced_tags=False)
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(shipped_base() / "bpe.model"))
    assert space == sp.PieceToId("\u2581") and starts[space]
    ids = torch.tensor(sp.encode("HELLO THERE, FRIEND"))
    points = insertion_points(ids, starts)
    # one point before each word after the first, and the end
    words_after_first = [k for k in range(1, len(ids)) if sp.IdToPiece(int(ids[k])).startswith("\u2581")]
    assert points == words_after_first + [len(ids)] and len(words_after_first) == 2
    tagged = with_tag(ids, points[0], 500, space)
    assert tagged.tolist() == ids[: points[0]].tolist() + [space, 500] + ids[points[0] :].tolist()
    assert with_tag(ids, len(ids), 500, None).tolist() == ids.tolist() + [500]


def test_tag_rows_round_trip_through_peft_wrapping():
    gpt, _, ids = grow_base(shipped_base(), TAGS, TagInit("plain", 1))
    lora.apply_lora(gpt, LoraSpec(rank=2, alpha=4), ids)
    rows = {k: torch.randn_like(v) for k, v in current_tag_rows(gpt, ids).items()}
    set_tag_rows(gpt, ids, rows)
    got = current_tag_rows(gpt, ids)
    assert all(torch.equal(got[k], rows[k]) for k in TEXT_KEYS)
    # forward reads them, and merging keeps them
    merged = lora.merge(gpt)
    assert torch.equal(merged["text_embedding.weight"][ids], rows["text_embedding.weight"])
    assert torch.equal(merged["text_head.bias"][ids], rows["text_head.bias"])


def _clips_and_conds(gpt, data_dir):
    from tagtune.data import PreparedDataset
    from tagtune.train.data import precompute_conds

    clips = untagged_examples(PreparedDataset(data_dir, "train"), 64, seed=0)
    conds = precompute_conds(gpt, clips, "cpu")
    return clips, [conds[k] for k in range(len(clips))]


def test_neutral_fit_lowers_the_divergence_and_leaves_the_base_alone(tiny_data):
    from tagtune.train.data import open_data

    data = open_data(tiny_data)
    gpt, _, ids = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    flags = [p.requires_grad for p in gpt.parameters()]
    clips, conds = _clips_and_conds(gpt, tiny_data)
    assert clips and not any(c["has_tag"] for c in clips)
    starts, space = tokenizer_layout(data.tokenizer_path, data.tagset.spaced)
    row, report = fit_neutral_row(gpt, ids, clips, conds, starts, space, NeutralFit(steps=40, lr=3e-2, batch_size=4))
    assert row.shape == (gpt.cfg.model_dim,)
    assert report["kl_per_code_after"] < 0.9 * report["kl_per_code_before"], report  # measured: -18%
    after = gpt.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # only the returned row changed
    assert [p.requires_grad for p in gpt.parameters()] == flags and not gpt.training
    # the divergence with the row written into the table is the fitted one
    set_tag_rows(gpt, ids, {"text_embedding.weight": row.expand(len(ids), -1)})
    probe = [Insertion(c["text_ids"], c["codes"], int(c["wav_len"]), z, len(c["text_ids"])) for c, z in
             zip(clips[:8], conds[:8])]
    with torch.no_grad():
        assert float(divergence(gpt.eval(), probe, ids[0], space)) < report["kl_per_code_before"]


def test_neutral_run_records_its_start_rows_and_eval_grows_the_base_with_them(tiny_data, tmp_path):
    from tagtune.evaluate.loading import load_models
    from tagtune.export import export
    from tagtune.train import train
    from tagtune.train.config import TrainConfig
    from train_fixtures import RUN_CONFIG

    config = TrainConfig.from_dict(RUN_CONFIG | {"lora": RUN_CONFIG["lora"] | {"tag_init": "neutral",
                                                                               "neutral_steps": 6},
                                                 "schedule": {"max_steps": 2, "warmup_steps": 0}})
    run = tmp_path / "run"
    train(tiny_data, run, config)
    start = load_file(str(run / "tag_init.safetensors"))
    emb = start["text_embedding.weight"]
    assert torch.equal(emb, emb[:1].expand_as(emb))  # one shared row for every tag
    for folder in ("best", "last"):
        assert torch.equal(load_file(str(run / folder / "tag_init.safetensors"))["text_embedding.weight"], emb)
    model = export(run, tmp_path / "model")
    _, base, tags, _ = load_models(model, base_dir=config_base(tiny_data))
    ids = [tags.token_ids[t] for t in tags.tags]
    assert base.tag_rows == "recorded start rows"
    grown = current_tag_rows(base.gpt, ids)
    assert all(torch.equal(grown[k], start[k]) for k in TEXT_KEYS)


def config_base(data_dir):
    from tagtune.train.data import open_data

    return open_data(data_dir).base_dir
