"""The tiny v2 base's codec fit: event rows labelled from the manifest, over-weighted in the fit, and the measure
of how much the codes say about the labels."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tagtune.config import SemanticCodecConfig
from tagtune.data.dataset import SAMPLES_PER_SEMANTIC_CODE as ROW_SAMPLES
from tagtune.tiny.v2.build import codec_flags
from tagtune.tiny.v2.build import main as build_main
from tagtune.tiny.v2.frontend import SPEECH, code_label_information, encode_codes, fit_codec, row_labels
from tagtune.tiny.v2.settings import BuildSettingsV2


def test_row_labels_mark_every_row_an_event_overlaps():
    labels = row_labels([("laughs", ROW_SAMPLES * 2 + 10, ROW_SAMPLES * 4), ("sighs", ROW_SAMPLES * 6, 10**9)], 8)
    assert labels == [SPEECH, SPEECH, "laughs", "laughs", SPEECH, SPEECH, "sighs", "sighs"]
    assert row_labels([], 3) == [SPEECH] * 3


def test_code_label_information_bounds():
    labels = [[SPEECH] * 6 + ["laughs"] * 2, [SPEECH] * 4]
    exact = code_label_information([torch.tensor([0, 1, 2, 0, 1, 2, 7, 7]), torch.tensor([0, 1, 2, 0])], labels)
    p = 2 / 12
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert exact["label_entropy"] == pytest.approx(entropy, abs=1e-4)
    assert exact["mutual_information"] == pytest.approx(entropy, abs=1e-4)  # the code gives the label away
    assert exact["tags"]["laughs"] == {"rows": 2, "codes": 1, "js_from_speech": pytest.approx(math.log(2), abs=1e-4)}
    blind = code_label_information([torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1])],
                                   [[SPEECH, SPEECH, "laughs", "laughs"], [SPEECH] * 4])
    assert blind["mutual_information"] == pytest.approx(0.0, abs=1e-9)
    assert blind["tags"]["laughs"]["js_from_speech"] == pytest.approx(0.0, abs=1e-9)


def _clips(n_clips: int, rows: int, seed: int):
    """Features of 1024 channels: speech rows around 4 well-separated centres; in every 8th clip an event of 12
    rows around its own centre, set off from a speech centre by a smaller step (the codec's random encoder mixes
    neighbouring rows, so a shorter event blurs into its context)."""
    gen = torch.Generator().manual_seed(seed)
    speech_centres = 4.0 * torch.randn(4, 1024, generator=gen)
    event_centre = speech_centres[0] + torch.randn(1024, generator=gen)
    feats, labels = [], []
    for i in range(n_clips):
        x = speech_centres[torch.randint(4, (rows,), generator=gen)] + 0.3 * torch.randn(rows, 1024, generator=gen)
        lab = [SPEECH] * rows
        if i % 8 == 0:
            x[5:17] = event_centre + 0.3 * torch.randn(12, 1024, generator=gen)
            lab[5:17] = ["giggles"] * 12
        feats.append(x)
        labels.append(lab)
    return feats, labels


def test_event_rows_over_weighted_get_codes_of_their_own():
    cfg = SemanticCodecConfig(codebook_size=8, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32,
                              vocos_num_layers=1)
    feats, labels = _clips(40, 40, seed=0)
    idx = list(range(len(feats)))
    measured = {}
    for share in (0.0, 0.3):
        codec, stats = fit_codec(cfg, feats, idx, n_frames=600, seed=1, labels=labels, event_share=share)
        assert stats["fit_frames"] == 600
        measured[share] = code_label_information(encode_codes(codec, feats), labels)
    natural, weighted = measured[0.0], measured[0.3]
    assert weighted["mutual_information"] > 1.2 * natural["mutual_information"], (natural, weighted)
    assert weighted["tags"]["giggles"]["js_from_speech"] > natural["tags"]["giggles"]["js_from_speech"]


def test_without_labels_the_fit_is_the_unweighted_one():
    cfg = SemanticCodecConfig(codebook_size=8, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32,
                              vocos_num_layers=1)
    feats, labels = _clips(12, 20, seed=3)
    idx = list(range(len(feats)))
    a, _ = fit_codec(cfg, feats, idx, n_frames=100, seed=1)
    b, _ = fit_codec(cfg, feats, idx, n_frames=100, seed=1, labels=labels, event_share=0.0)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_the_build_command_names_a_codec_fit_that_is_not_the_default():
    default = BuildSettingsV2()
    assert codec_flags(default) == ""
    variant = replace(default, codec_event_share=0.3, sizes=replace(default.sizes, codec_codebook_dim=16))
    assert codec_flags(variant) == " --codec-event-share 0.3 --codec-dim 16"


def test_an_event_share_out_of_range_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        build_main(["--codec-event-share", "1.5"])
    assert exc.value.code == 2
    assert "--codec-event-share must be in [0, 1), got 1.5" in capsys.readouterr().err
