"""Building blocks of ``tagtune eval``: text variants, code spans, batched NLL, the detector, rate summaries."""

from __future__ import annotations

import pytest
import torch

from tagtune.audio import code_span
from tagtune.evaluate.detector import NONE, CodeEventDetector, choose_window, window_features, window_labels
from tagtune.evaluate.freerun import make_prompts, score_clips, strip_tags, summarize_free
from tagtune.evaluate.nll import ScoreRow, code_nll
from tagtune.evaluate.reliance import TrialScore, occurrences, summarize, with_other_tag, without_tag
from tagtune.tags.vocab import TagSet

SPACE = 7
TAGS = TagSet(["<laughs>", "<sighs>"], token_ids={"<laughs>": 320, "<sighs>": 321})
TAG_IDS = {"<laughs>": 320, "<sighs>": 321}




def test_text_variants_remove_the_tag_with_its_space_piece_or_swap_it():
    ids = torch.tensor([5, 9, SPACE, 320, 11, 321])
    assert without_tag(ids, 3, SPACE).tolist() == [5, 9, 11, 321]
    assert without_tag(ids, 5, SPACE).tolist() == [5, 9, SPACE, 320, 11]  # no space piece before it
    assert without_tag(ids, 3, None).tolist() == [5, 9, SPACE, 11, 321]
    assert with_other_tag(ids, 3, 321).tolist() == [5, 9, SPACE, 321, 11, 321]
    assert strip_tags(ids, {320, 321}, SPACE).tolist() == [5, 9, 11]


def test_code_span_covers_every_code_overlapping_the_event():
    assert code_span(3 * 1024 + 5, 5 * 1024, 60) == (3, 5)
    assert code_span(1000, 1025, 60) == (0, 2)
    assert code_span(50 * 1024, 70 * 1024, 55) == (50, 55)  # clipped to the clip's codes


def test_occurrences_match_events_in_order_and_fall_back_to_the_text():
    item = {"text_ids": torch.tensor([5, 320, 9, 321, 4]), "codes": torch.zeros(40, dtype=torch.long),
            "wav_len": 40 * 1024, "events": [{"tag": "sighs", "start_sample": 20 * 1024, "end_sample": 30 * 1024},
                                            {"tag": "laughs", "start_sample": 2048, "end_sample": 8 * 1024 + 1}]}
    occ = occurrences(item, 0, TAGS, TAG_IDS)
    assert [(o.tag, o.position, o.span) for o in occ] == [("<laughs>", 1, (2, 9)), ("<sighs>", 3, (20, 30))]
    assert occ[1].onset_fraction == pytest.approx(0.5)
    item["events"] = item["events"][:1]  # one event for two tags: no boundaries, whole-clip trials
    occ = occurrences(item, 0, TAGS, TAG_IDS)
    assert [o.span for o in occ] == [None, None] and occ[1].onset_fraction == pytest.approx(3 / 5)


def test_reliance_summary_from_trials():
    trials = [TrialScore(0, "<laughs>", "event", 10.0, 13.0, {"<sighs>": 12.0}, 2.0, 4.5),
              TrialScore(1, "<laughs>", "event", 10.0, 9.0, {"<sighs>": 11.0}, 2.0, 2.5),
              TrialScore(2, "<sighs>", "clip", 5.0, 5.0, {"<laughs>": 5.0})]
    s = summarize(trials, ["<laughs>", "<sighs>"])
    assert s["<laughs>"]["reliance_gap"] == pytest.approx(1.0) and s["<laughs>"]["wrong_tag_gap"] == pytest.approx(1.5)
    assert s["<laughs>"]["clip_win_rate"] == 0.5 and s["<laughs>"]["reliance_gap_se"] == pytest.approx(2.0)
    assert s["<laughs>"]["onset_gap"] == pytest.approx(1.5)  # (2.5 + 0.5) / 2 over the events' first codes
    assert s["<sighs>"] == {"trials": 1, "unit": "clip", "reliance_gap": 0.0, "reliance_gap_se": None,
                            "wrong_tag_gap": 0.0, "clip_win_rate": 0.0,
                            "onset_gap": None}  # a tie is no win; a whole-clip trial has no onset


def test_batched_nll_equals_each_row_alone(shipped_base):
    from tagtune.checkpoint import load_gpt

    gpt = load_gpt(shipped_base)
    g = torch.Generator().manual_seed(0)
    conds = torch.randn(3, 32, gpt.cfg.model_dim, generator=g)
    text_ids = lambda n: torch.randint(2, gpt.cfg.number_text_tokens, (n,), generator=g)
    codes = lambda m: torch.randint(0, gpt.cfg.start_mel_token, (m,), generator=g)
    rows = [ScoreRow(conds[k], text_ids(n), codes(m), m * 1024 - 100)
            for k, (n, m) in enumerate([(4, 20), (11, 7), (7, 33)])]
    together = code_nll(gpt, rows)
    alone = [code_nll(gpt, [r])[0] for r in rows]
    assert [t.shape[0] for t in together] == [21, 8, 34]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    full = gpt.logits(None, rows[0].text_ids[None], torch.tensor([4]), rows[0].codes[None], torch.tensor([20 * 1024]),
                      conds=conds[:1])
    logp = full.mel_logits[0].log_softmax(0)  # (V, Lc+2)
    expected = -logp[torch.cat([rows[0].codes, torch.tensor([gpt.cfg.stop_mel_token])]), torch.arange(21)]
    torch.testing.assert_close(together[0], expected, atol=1e-4, rtol=1e-5)


def test_window_labels_and_features():
    labels = window_labels(12, [("<sighs>", 4, 9)], 4)
    # a window of 4 is labelled once the event covers >= 0.6 of it (3 codes); partial overlaps are skipped
    assert labels == [NONE, None, None, "<sighs>", "<sighs>", "<sighs>", "<sighs>", None, None]
    codebook = torch.arange(12.0).reshape(6, 2)
    feats = window_features(torch.tensor([0, 1, 2, 1]), codebook, 3)
    assert feats.shape == (2, 6)
    torch.testing.assert_close(feats[0], torch.tensor([2.0, 3.0, 2.0, 2.0, 2.0, 2.0]))


def test_detector_finds_a_synthetic_event_at_its_onset():
    g = torch.Generator().manual_seed(1)
    codebook = torch.randn(20, 4, generator=g)
    codebook[10:, 0] += 2.0  # the "event" codes sound different from the "speech" codes

    def clip(onset: int | None, n: int = 40):
        codes = torch.randint(0, 10, (n,), generator=g)  # "speech" codes 0..9
        if onset is None:
            return codes, []
        codes[onset : onset + 12] = torch.randint(10, 20, (12,), generator=g)  # "sigh" codes 10..19
        return codes, [("<sighs>", onset, onset + 12)]

    det = CodeEventDetector(codebook, ["<sighs>"], window=6)
    det.fit([clip(o) for o in (5, 10, 20, None, 15, None)], seed=0)
    assert det.accuracy([clip(8), clip(None)])["accuracy"] > 0.95
    codes, _ = clip(17)
    (found,) = det.detect(codes)
    assert found.tag == "<sighs>" and abs(found.onset - 17) <= 2 and abs(found.end - 29) <= 2
    assert det.detect(clip(None)[0]) == []


def test_free_running_rates_from_trials():
    scored = {"trials": [{"tag": "<laughs>", "detected": "<laughs>", "error_ms": 100.0, "edge": "trailing"},
                         {"tag": "<laughs>", "detected": "<sighs>", "error_ms": 50.0, "edge": "inside"},
                         {"tag": "<sighs>", "detected": NONE, "error_ms": None, "edge": "trailing"},
                         {"tag": "<sighs>", "detected": "<sighs>", "error_ms": 10.0, "edge": None}],
              "false_flags": [True, False, False, False], "any_flags": [True, True, False],
              "twin_flags": [True, False], "untagged_flags": [False, False, False]}
    s = summarize_free(scored, ["<laughs>", "<sighs>"])
    assert s["false_event_rate_by_prompt"] == {"tag_free_twins": {"rate": 0.5, "prompts": 2},
                                               "untagged_clips": {"rate": 0.0, "prompts": 3}}
    assert s["per_tag"]["<laughs>"] == {"trials": 2, "hit_rate": 0.5, "placement_error_ms": 100.0}
    assert s["per_tag"]["<sighs>"]["hit_rate"] == 0.5 and s["mean_hit_rate"] == 0.5
    assert s["false_event_rate"] == 0.25 and s["any_event_rate"] == pytest.approx(2 / 3)
    assert s["confusion"]["counts"]["<laughs>"] == {"<laughs>": 1, "<sighs>": 1, NONE: 0}
    # a trial without recorded boundaries has no edge and counts in none of them
    assert s["hit_rate_by_edge"] == {"leading": {"trials": 0, "hit_rate": None},
                                     "inside": {"trials": 1, "hit_rate": 0.0},
                                     "trailing": {"trials": 2, "hit_rate": 0.5}}


def test_an_event_edge_is_read_from_its_recording():
    from tagtune.evaluate.freerun import _edge

    ms = 1000.0 * 1024 / 24000  # 1.x: 42.7 ms per code, so 0.3 s is 7 codes
    assert _edge((7, 20), 100, ms) == "leading" and _edge((8, 20), 100, ms) == "inside"
    assert _edge((80, 93), 100, ms) == "trailing" and _edge((80, 92), 100, ms) == "inside"
    assert _edge((80, 85), 100, 20.0) == "trailing"  # IndexTTS-2: 20 ms per code, 15 codes
    assert _edge(None, 100, ms) is None


def test_false_events_are_split_into_tag_free_twins_and_untagged_clips():
    class EventsAtCodeSeven:  # "detects" an event in every sequence that holds code 7
        def detect(self, seq):
            return ["event"] if 7 in seq.tolist() else []

    tagged = [{"text_ids": torch.tensor([5, 99, 6]), "codes": torch.zeros(4), "wav_len": 4096}]
    untagged = [{"text_ids": torch.tensor([5, 6]), "codes": torch.zeros(4), "wav_len": 4096} for _ in range(2)]
    prompts = make_prompts(tagged, untagged, {99}, None)
    assert [(p.tagged, p.twin) for p in prompts] == [(True, False), (False, True), (False, False), (False, False)]
    codes = [torch.tensor([1, 2]), torch.tensor([7, 1]), torch.tensor([1, 1]), torch.tensor([7, 7])]
    scored = score_clips(EventsAtCodeSeven(), prompts, codes, tagged + untagged, TagSet(["<laughs>"]), {"<laughs>": 99})
    assert scored["false_flags"] == [True, False, True]
    assert scored["twin_flags"] == [True] and scored["untagged_flags"] == [False, True]


def test_strip_tags_at_the_end_and_adjacent():
    import torch

    from tagtune.evaluate.freerun import strip_tags

    space, a, b = 5, 100, 101
    ids = torch.tensor([7, 8, space, a, 9, space, b, space, a])
    assert strip_tags(ids, {a, b}, space).tolist() == [7, 8, 9]
    assert strip_tags(torch.tensor([a, b, 3]), {a, b}, space).tolist() == [3]


def test_generated_negatives_teach_the_detector_that_rough_speech_is_no_event():
    # "generated speech" uses codes 10..14, which real speech never does and which look like the event's
    g = torch.Generator().manual_seed(2)
    codebook = torch.randn(25, 4, generator=g)
    codebook[10:, 0] += 2.0

    def real(onset: int | None, n: int = 40):
        codes = torch.randint(0, 10, (n,), generator=g)
        if onset is None:
            return codes, []
        codes[onset : onset + 12] = torch.randint(15, 25, (12,), generator=g)
        return codes, [("<sighs>", onset, onset + 12)]

    def generated(n: int = 40):
        return torch.where(torch.rand(n, generator=g) < 0.5, torch.randint(0, 10, (n,), generator=g),
                           torch.randint(10, 15, (n,), generator=g))

    fit = [real(o) for o in (5, 10, 20, None, 15, None)]
    held_out = [generated() for _ in range(8)]
    plain = CodeEventDetector(codebook, ["<sighs>"], window=6)
    counts = plain.fit(fit, seed=0)
    calibrated = CodeEventDetector(codebook, ["<sighs>"], window=6)
    with_negatives = calibrated.fit(fit, seed=0, negatives=[generated() for _ in range(8)])
    assert counts["generated_none"] == 0 and with_negatives["generated_none"] == 8 * 18  # (40 - 6 + 1) / 2
    before, fp = plain.false_positives(held_out), calibrated.false_positives(held_out)
    assert before["sequence_rate"] > 0.5 and before["window_rate"] > 0.2
    assert fp["sequences"] == 8 and fp["windows"] == 8 * 35
    assert fp["sequence_rate"] <= 0.25 and fp["window_rate"] < 0.25 * before["window_rate"]
    codes, _ = real(17)
    found = calibrated.detect(codes)  # the real event is still found
    assert any(d.tag == "<sighs>" and abs(d.onset - 17) <= 2 for d in found)


def test_plain_tag_rows_are_the_short_mean_row():
    from tagtune.tags.rows import grow_text_rows

    g = torch.Generator().manual_seed(0)
    n, d = 30, 16
    state = {"text_embedding.weight": torch.randn(n + 1, d, generator=g) + 0.2,
             "text_head.weight": torch.randn(n + 1, d, generator=g), "text_head.bias": torch.randn(n + 1, generator=g)}
    grown = grow_text_rows(state, 3, n, init="plain", seed=4)
    new, mean = grown["text_embedding.weight"][n : n + 3], state["text_embedding.weight"][:n].mean(0)
    assert ((new - mean).norm(dim=1) / mean.norm()).max() < 0.3 and not torch.equal(new[0], new[1])
    assert new.norm(dim=1).max() < 0.5 * state["text_embedding.weight"][:n].norm(dim=1).median()
    torch.testing.assert_close(grown["text_head.bias"][n : n + 3], state["text_head.bias"][:n].mean().expand(3))
    assert torch.equal(grown["text_embedding.weight"][-1], state["text_embedding.weight"][-1])


def test_detector_windows_span_the_same_time_at_both_code_rates():
    """8 DVAE codes (1024 samples each) are ~0.34 s; IndexTTS-2's semantic codes (480 samples) need 17 for it."""
    assert choose_window([]) == 8 and choose_window([], samples_per_code=480) == 17
    assert choose_window([20, 30, 40]) == 8 and choose_window([20, 30, 40], samples_per_code=480) == 17
    assert choose_window([5, 6, 7], samples_per_code=480) == 6  # shorter events: their median length
    assert choose_window([1, 1, 2]) == 3  # never below MIN_WINDOW
