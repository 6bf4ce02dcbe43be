"""``loss.onset_weight``: the first codes of each tagged event weigh more in the mel CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tagtune.audio import event_onset_codes
from tagtune.models.unified_voice import IGNORE_INDEX, onset_weights
from tagtune.tags.rows import TagInit, grow_base
from tagtune.train.config import LossSettings, TrainConfigError
from tagtune.train.data import collate, open_data, pad_spec
from tagtune.train.loss import RowLosses
from train_fixtures import with_events


def test_event_onsets_read_the_recorded_boundaries():
    events = [{"tag": "laughs", "start_sample": 5000, "end_sample": 9000},
              {"tag": "sighs", "start_sample": 1000, "end_sample": 2000, "sample_rate": 12000}]
    assert event_onset_codes(events, True, 1024) == [1, 4]  # 1000 samples at 12 kHz = 2000 at 24 kHz -> code 1
    assert event_onset_codes(events, False, 1024) == []  # an untagged clip (an event cut) weighs nothing more
    assert event_onset_codes(None, True, 1024) == []


def test_onset_weights_mark_the_first_codes_of_each_event():
    w = onset_weights(torch.Size([2, 8]), [[1, 5], []], 3.0, 2)
    assert w[0].tolist() == [1, 3, 3, 1, 1, 3, 3, 1] and w[1].tolist() == [1.0] * 8
    assert onset_weights(torch.Size([2, 8]), [[1], []], 1.0, 2) is None  # weight 1: the plain mean
    assert onset_weights(torch.Size([2, 8]), [[], []], 3.0, 2) is None  # no tagged event in the batch


def test_onset_weight_scales_the_mel_ce_of_event_onset_codes(tiny_data):
    data = open_data(tiny_data)
    gpt, _, _ = grow_base(data.base_dir, data.tag_names, TagInit("mean", 0))
    gpt.eval()
    tagged = [i for i in range(len(data.train)) if data.train[i]["has_tag"]][:3]
    untagged = [i for i in range(len(data.train)) if not data.train[i]["has_tag"]][:1]
    items = [with_events(data.train[i]) for i in tagged + untagged]  # the tones have no recorded events
    batch = collate(data.train, tagged + untagged, pad_spec(gpt), items=items)
    assert len(tagged) == 3 and all(batch.onsets[k] for k in range(3)) and batch.onsets[-1] == []
    with torch.no_grad():
        _, plain = RowLosses(gpt, LossSettings())(batch)
        _, same = RowLosses(gpt, LossSettings(onset_weight=1.0, onset_codes=3))(batch)
        _, heavy = RowLosses(gpt, LossSettings(onset_weight=4.0, onset_codes=2))(batch)
        out = gpt.logits(batch.cond_mels, batch.text_ids, batch.text_lengths, batch.codes, batch.wav_lengths,
                         batch.cond_lengths, mask_padding=True, mask_loss=True)
    torch.testing.assert_close(same, plain)
    ce = F.cross_entropy(out.mel_logits.float(), out.mel_targets, ignore_index=IGNORE_INDEX, reduction="none")
    scored = out.mel_targets != IGNORE_INDEX
    for row, starts in enumerate(batch.onsets):
        extra = sum(float(ce[row, s : s + 2].sum()) for s in starts)  # weight 4 = the CE once more, three times
        expected = (float(ce[row][scored[row]].sum()) + 3 * extra) / int(scored[row].sum())
        assert heavy[row].item() == pytest.approx(expected, rel=1e-5)
        assert (heavy[row] > plain[row]) == bool(starts)


@pytest.mark.parametrize("field, value", [("onset_weight", -1.0), ("onset_codes", 0)])
def test_onset_settings_are_checked(field, value):
    with pytest.raises(TrainConfigError, match=f"loss.{field}"):
        LossSettings(**{field: value})
