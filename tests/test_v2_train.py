"""The IndexTTS-2 training forward (models/v2/objective.py) on data prepared from the tiny v2 fixture: the 34-position
prefix from another clip's speaker features and an emotion clip's features, per-clip losses independent of the
batch, gradients reaching LoRA and the tag rows only."""

from __future__ import annotations

import pytest
import torch

from tagtune import lora
from tagtune.data.dataset import PreparedDatasetV2
from tagtune.models.unified_voice import row_ce
from tagtune.models.v2.objective import RowLossesV2, collate_v2, conditioning_prefix_inputs, prefix_inputs
from tagtune.tags.rows import TagInit, grow_base
from test_v2_prepare import LAYOUT, _corpus, _prepare
from v2_fixture import V2_CHECKPOINT, require_v2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    require_v2()
    root = tmp_path_factory.mktemp("v2train")
    out = root / "data"
    _prepare(_corpus(root / "corpus"), out)
    return PreparedDatasetV2(out, "all")


@pytest.fixture(scope="module")
def tuned():
    gpt, cfg, new_ids = grow_base(V2_CHECKPOINT, ["<giggles>"], TagInit("mean", 0))
    assert new_ids == [224]  # the id prepare gave the tag
    lora.apply_lora(gpt, lora.LoraSpec(rank=4, alpha=8.0, dropout=0.0), new_ids)
    return gpt.eval()


def test_v2_dataset_gives_speaker_and_emotion_features_of_other_clips(data):
    assert len(data) == len(LAYOUT) - 1  # the lone tagged clip has no usable emotion clip
    for i in range(len(data)):
        item, e = data[i], data.examples[i]
        assert item["spk_features"].shape[1] == 1024 and item["emo_features"].shape[1] == 1024
        assert item["spk_features"].shape[0] == data.rows.all_examples[e["cond"]]["n_codes"]
        if item["has_tag"]:
            assert item["emo"] != item["id"]


def test_per_clip_losses_do_not_depend_on_the_batch(data, tuned):
    losses = RowLossesV2(tuned)
    items = [data[i] for i in range(len(data))]
    with torch.no_grad():
        text_ce, code_ce = losses(collate_v2(items, tuned.cfg))
        for k in (0, 3, len(items) - 1):
            alone = losses(collate_v2([items[k]], tuned.cfg))
            torch.testing.assert_close(text_ce[k], alone[0][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(code_ce[k], alone[1][0], rtol=1e-5, atol=1e-5)
        prefix = conditioning_prefix_inputs(tuned, data, batch_size=3)
        cached = losses(collate_v2(items, tuned.cfg, prefix))
    torch.testing.assert_close(cached[1], code_ce, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(text_ce).all() and torch.isfinite(code_ce).all()


def test_the_loss_is_the_inference_prefix_teacher_forced(data, tuned):
    """One clip by hand: speaker latents and emotion vector of the features alone (the official lengths), the
    34-position prefix, the text, start + codes; mean CE of the codes and stop."""
    item = data[0]
    with torch.no_grad():
        conds = tuned.get_conditioning(item["spk_features"][None])
        emovec = tuned.get_emovec(item["emo_features"][None])
        prefix = tuned.conditioning_prefix(conds, emovec)
        assert prefix.shape[1] == 34
        text, codes = item["text_ids"][None], item["codes"][None]
        out = tuned.logits(conds, emovec, text, torch.tensor([text.shape[1]]), codes, torch.tensor([codes.shape[1]]))
        want = row_ce(out.mel_logits, out.mel_targets)
        got = RowLossesV2(tuned)(collate_v2([item], tuned.cfg))[1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert out.mel_targets[0, -2].item() == tuned.cfg.stop_mel_token  # codes, then stop


def test_gradients_reach_lora_and_the_tag_rows_only(data, tuned):
    losses = RowLossesV2(tuned)
    tagged = [data[i] for i in range(len(data)) if data[i]["has_tag"]][:3]
    text_ce, code_ce = losses(collate_v2(tagged, tuned.cfg))
    (text_ce + code_ce).mean().backward()
    grads = {n: p.grad for n, p in tuned.named_parameters() if p.requires_grad}
    assert any("lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    head = lora.trainable_head(tuned)
    assert head.weight.grad[224].abs().sum() > 0 and head.weight.grad[:224].abs().sum() == 0
    frozen = [n for n, p in tuned.named_parameters() if n.startswith(("conditioning_encoder", "emo_", "speed_emb"))]
    assert frozen and all(not dict(tuned.named_parameters())[n].requires_grad for n in frozen)
    tuned.zero_grad(set_to_none=True)


def test_onset_weight_weighs_the_first_codes_of_tagged_events(data, tuned):
    # the giggle of a tagged clip of this corpus starts after 0.05 s of silence, 0.5 s of speech and 0.05 s more
    event = {"tag": "giggles", "start_sample": 14_400, "end_sample": 16_800}
    items = [{**data[i], "events": [event] if data[i]["has_tag"] else None} for i in range(len(data))]
    batch = collate_v2(items, tuned.cfg)
    tagged = [k for k, it in enumerate(items) if it["has_tag"]]
    assert tagged and all(batch.onsets[k] == [30] for k in tagged)  # 14 400 / 480 samples per semantic code
    assert all(batch.onsets[k] == [] for k, it in enumerate(items) if not it["has_tag"])
    with torch.no_grad():
        plain = RowLossesV2(tuned)(batch)[1]
        heavy = RowLossesV2(tuned, onset_weight=5.0, onset_codes=2)(batch)[1]
    untagged = [k for k in range(len(items)) if not batch.onsets[k]]
    torch.testing.assert_close(heavy[untagged], plain[untagged])
    assert (heavy[tagged] > plain[tagged]).all()


def test_tag_contrast_adds_the_penalty_of_the_tag_free_text(data, tuned):
    """The fixture's one tag has no other tag to swap with: its contrast text is the tag-free one."""
    from tagtune.models.contrast import span_sums
    from tagtune.models.unified_voice import position_ce
    from tagtune.tags.vocab import TagSet
    from tagtune.train.contrast import TagContrast

    event = {"tag": "giggles", "start_sample": 14_400, "end_sample": 16_800}
    items = [{**data[i], "events": [event] if data[i]["has_tag"] else None} for i in range(len(data))]
    event_codes = torch.tensor([[30, 35]])  # (14 400 / 480 to 16 800 / 480)
    contrast = TagContrast(TagSet(["<giggles>"]), {"<giggles>": 224}, None, tuned.cfg.stop_text_token, 0)
    batch = collate_v2(items, tuned.cfg)
    batch.contrast = contrast.rows(items, list(range(len(items))), epoch=0)
    tagged = [k for k, it in enumerate(items) if it["has_tag"]]
    assert tagged and batch.contrast.rows.tolist() == tagged
    with torch.no_grad():
        plain = RowLossesV2(tuned)(batch)[1]
        on = RowLossesV2(tuned, tag_contrast=0.2, contrast_margin=40.0)(batch)[1]
        for k in tagged:  # the tag-free text scored alone
            free = items[k]["text_ids"][items[k]["text_ids"] != 224]
            one = collate_v2([{**items[k], "text_ids": free}], tuned.cfg)
            mine = collate_v2([items[k]], tuned.cfg)
            scored = []
            for b in (one, mine):
                out = tuned.logits(*prefix_inputs(tuned, b), b.text_ids, b.text_lengths, b.codes, b.code_lengths,
                                   mask_padding=True, mask_loss=True)
                scored.append(float(span_sums(position_ce(out.mel_logits, out.mel_targets), event_codes)))
            gap = scored[0] - scored[1]
            assert on[k].item() == pytest.approx(plain[k].item() + 0.2 * max(0.0, 40.0 - gap), rel=1e-4)
    untagged = [k for k in range(len(items)) if k not in tagged]
    torch.testing.assert_close(on[untagged], plain[untagged])

