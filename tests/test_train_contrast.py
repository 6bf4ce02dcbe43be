"""``loss.tag_contrast``: a tagged clip's event must be likelier under its own text than under a contrast text (a
tag replaced by another or removed) by ``loss.contrast_margin`` nats; the texts are chosen per clip and epoch."""

from __future__ import annotations

import copy

import pytest
import torch

from tagtune.models.contrast import ContrastRows, contrast_penalty, span_sums
from tagtune.models.unified_voice import position_ce
from tagtune.tags.neutral import tokenizer_layout
from tagtune.tags.occurrences import occurrences
from tagtune.tags.rows import TagInit, grow_base
from tagtune.train.config import LossSettings, TrainConfigError
from tagtune.train.contrast import TagContrast
from tagtune.train.data import collate, open_data, pad_spec
from tagtune.train.loss import RowLosses
from train_fixtures import with_events


def test_span_sums_and_the_penalty_by_hand():
    ce = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [9.0, 9.0, 9.0, 9.0]])
    spans = torch.tensor([[1, 3], [0, 4]])
    assert span_sums(ce[:2], spans).tolist() == [5.0, 2.0]
    contrast = ContrastRows(rows=torch.tensor([0, 2]), text_ids=torch.zeros(2, 1, dtype=torch.long),
                            text_lengths=torch.ones(2, dtype=torch.long), spans=spans)
    other = torch.tensor([[1.0, 4.0, 4.0, 0.0], [20.0, 20.0, 20.0, 20.0]])
    # row 0: gap 8 - 5 = 3 < margin 4 -> 0.5 x 1; row 2: gap 80 - 36 = 44 -> 0; row 1 has no contrast text
    out = contrast_penalty(ce, other, contrast, weight=0.5, margin=4.0, batch_size=3)
    assert out.tolist() == [0.5, 0.0, 0.0]


@pytest.fixture(scope="module")
def data_and_gpt(tiny_data):
    data = open_data(tiny_data)
    data.train = _Evented(data.train)
    gpt, _, new_ids = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    _, space_id = tokenizer_layout(data.tokenizer_path, data.tagset.spaced)
    contrast = TagContrast(data.tagset, dict(zip(data.tag_names, new_ids)), space_id, gpt.cfg.stop_text_token, 3)
    return data, gpt.eval(), contrast


class _Evented:
    """``data.train`` with event boundaries on its tagged clips (``train_fixtures.with_events``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return with_events(self.dataset[i])


def _tagged(data) -> list[int]:
    return [i for i in range(len(data.train)) if data.train[i]["has_tag"]]


def test_contrast_texts_change_one_tag_and_are_a_function_of_seed_epoch_and_clip(data_and_gpt):
    data, _, contrast = data_and_gpt
    tag_ids = contrast.tag_ids
    kinds = set()
    for i in _tagged(data)[:6]:
        item = data.train[i]
        occs = {o.position: o for o in occurrences(item, 0, contrast.tags, tag_ids)}
        ids = item["text_ids"].tolist()
        for epoch in range(12):
            text, span = contrast.text(item, i, epoch)
            again = contrast.text(item, i, epoch)
            assert torch.equal(text, again[0]) and span == again[1]  # the same in every process and on resume
            text = text.tolist()
            if len(text) == len(ids):  # one tag replaced by another tag
                (k,) = [k for k in range(len(ids)) if ids[k] != text[k]]
                assert text[k] in tag_ids.values() and text[k] != ids[k]
                kinds.add("other tag")
            else:  # one tag removed, with the bare "▁" before it where the tokenizer writes one
                assert len(ids) - len(text) in (1, 2) and sum(t in tag_ids.values() for t in text) == \
                    sum(t in tag_ids.values() for t in ids) - 1
                k = next(k for k in range(len(ids)) if k >= len(text) or ids[k] != text[k])
                k = k if ids[k] in tag_ids.values() else k + 1
                kinds.add("removed")
            assert occs[k].span == span and span[1] > span[0]
    assert kinds == {"other tag", "removed"}
    untagged = next(i for i in range(len(data.train)) if not data.train[i]["has_tag"])
    assert contrast.text(data.train[untagged], untagged, 0) is None
    no_events = {**data.train[_tagged(data)[0]], "events": None}
    assert contrast.text(no_events, 0, 0) is None  # without boundaries there is no event span to score


def test_row_losses_add_the_margin_penalty_of_the_contrast_texts(data_and_gpt):
    data, gpt, contrast = data_and_gpt
    tagged = _tagged(data)[:3]
    untagged = [i for i in range(len(data.train)) if not data.train[i]["has_tag"]][:1]
    indices = tagged + untagged
    batch = collate(data.train, indices, pad_spec(gpt))
    batch.contrast = contrast.rows([data.train[i] for i in indices], indices, epoch=1)
    assert batch.contrast.rows.tolist() == [0, 1, 2]
    settings = LossSettings(tag_contrast=0.3, contrast_margin=50.0)  # a margin no row reaches: every row pays
    with torch.no_grad():
        _, plain = RowLosses(gpt, LossSettings())(batch)
        _, off = RowLosses(gpt, LossSettings(tag_contrast=0.0))(batch)
        _, on = RowLosses(gpt, settings)(batch)
        out = gpt.logits(batch.cond_mels, batch.text_ids, batch.text_lengths, batch.codes, batch.wav_lengths,
                         batch.cond_lengths, mask_padding=True, mask_loss=True)
        true_ce = position_ce(out.mel_logits, out.mel_targets)
    torch.testing.assert_close(off, plain)
    assert on[3] == plain[3]  # the untagged row has no contrast text
    for r, i in enumerate(tagged):  # each contrast text scored on its own, unbatched
        item = data.train[i]
        text, (first, last) = contrast.text(item, i, 1)
        one = collate(data.train, [i], pad_spec(gpt))
        with torch.no_grad():
            alone = gpt.logits(one.cond_mels, text[None], torch.tensor([len(text)]), one.codes, one.wav_lengths,
                               one.cond_lengths, mask_padding=True, mask_loss=True)
        other = float(position_ce(alone.mel_logits, alone.mel_targets)[0, first:last].sum())
        gap = other - float(true_ce[r, first:last].sum())
        assert on[r].item() == pytest.approx(plain[r].item() + 0.3 * max(0.0, 50.0 - gap), rel=1e-4)


def _gaps(gpt, batch) -> torch.Tensor:
    """NLL of each contrasted event under its contrast text minus under its own text (nats per event)."""
    c = batch.contrast
    with torch.no_grad():
        out = gpt.logits(batch.cond_mels, batch.text_ids, batch.text_lengths, batch.codes, batch.wav_lengths,
                         batch.cond_lengths, mask_padding=True, mask_loss=True)
        other = gpt.logits(batch.cond_mels[c.rows], c.text_ids, c.text_lengths, batch.codes[c.rows],
                           batch.wav_lengths[c.rows], batch.cond_lengths[c.rows], mask_padding=True, mask_loss=True)
    return (span_sums(position_ce(other.mel_logits, other.mel_targets), c.spans)
            - span_sums(position_ce(out.mel_logits, out.mel_targets)[c.rows], c.spans))


def test_a_step_on_the_penalty_widens_the_gap(data_and_gpt):
    data, gpt, contrast = data_and_gpt
    gpt = copy.deepcopy(gpt)
    indices = _tagged(data)[:4]
    batch = collate(data.train, indices, pad_spec(gpt))
    batch.contrast = contrast.rows([data.train[i] for i in indices], indices, epoch=0)
    before = _gaps(gpt, batch)
    rows = gpt.text_embedding.weight  # the text rows alone, the tag rows among them
    for p in gpt.parameters():
        p.requires_grad_(p is rows)
    _, mel = RowLosses(gpt, LossSettings(tag_contrast=1.0, contrast_margin=50.0))(batch)
    _, plain = RowLosses(gpt, LossSettings())(batch)
    (mel - plain).sum().backward()  # the penalty alone
    assert int(torch.count_nonzero(rows.grad[list(contrast.tag_ids.values())].abs().sum(dim=1))) >= 2
    with torch.no_grad():
        rows -= 0.05 * rows.grad
    after = _gaps(gpt, batch)
    assert after.mean() > before.mean() + 0.1, (before, after)


@pytest.mark.parametrize("field, value", [("tag_contrast", -0.1), ("contrast_margin", -1.0)])
def test_contrast_settings_are_checked(field, value):
    with pytest.raises(TrainConfigError, match=f"loss.{field}"):
        LossSettings(**{field: value})
