"""Guidance until the event begins (generation/guidance.py, ``EventOnsets``): a row is guided until each of its
tags' events has begun, decodes its events at scale 1, and the places where a text differs from its tag-free twin
are counted as the tokenizer writes them."""

from __future__ import annotations

import pytest
import torch

import tagtune.generation.guidance as guidance
from base_fixtures import load_plain_gpt
from tagtune.generation import MelDecoder, prepare_prompt
from tagtune.generation.guidance import (
    EVENT_QUIET_CODES,
    MIN_EVENT_CODES,
    EventOnsets,
    Guide,
    GuidedDecoder,
    tag_runs,
)

S, E, P = 90, 91, 91  # start, stop, and the stop id that pads rows


def _runs(tagged: list[list[int]], free: list[list[int]]) -> list[int]:
    pad = lambda rows: torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], True, P)  # noqa: E731
    return tag_runs(pad(tagged), pad(free), (S, E)).tolist()


def test_tag_runs_count_each_place_the_twin_leaves_out():
    assert _runs([[S, 5, 40, 6, E]], [[S, 5, 6, E]]) == [1]  # a spaced tag piece
    assert _runs([[S, 5, 3, 40, 6, E]], [[S, 5, 6, E]]) == [1]  # a bare "▁" (3) then the tag
    assert _runs([[S, 5, 3, 40, 6, 3, 41, 7, E]], [[S, 5, 6, 7, E]]) == [2]  # two tags apart
    assert _runs([[S, 5, 40, 41, 6, E]], [[S, 5, 6, E]]) == [1]  # side by side: one place
    assert _runs([[S, 5, 6, E], [S, 40, 5, 6, 41, E]], [[S, 5, 6, E], [S, 5, 6, E]]) == [0, 2]  # padded batch
    assert _runs([[S, 5, 3, 6, 3, 40, E]], [[S, 5, 3, 6, E]]) == [1]  # an ordinary "▁" kept by the twin


def _scores(lead: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, 3) of a tagged and a tag-free branch: the tagged branch leads with code 0, the tag-free one with
    codes 1 and 2 (code 0's margin: 8.7 nats at ``lead`` 8, 1.3 at 1)."""
    return torch.tensor([[lead, 0.0, 0.0]]), torch.tensor([[0.0, lead, lead]])


def _scale(onsets: EventOnsets, scale: float = 3.0) -> float:
    return float(onsets.scales(scale, *_scores(8.0))[0, 0])


def _event(onsets: EventOnsets, codes: int = MIN_EVENT_CODES) -> None:
    """Feed an event of ``codes`` event codes; inside it the row is not guided."""
    for _ in range(codes):
        onsets.observe(torch.tensor([0]))
        assert _scale(onsets) == 1.0


def _speech(onsets: EventOnsets, codes: int = EVENT_QUIET_CODES) -> None:
    for _ in range(codes):
        onsets.observe(torch.tensor([1]))


def test_a_row_is_guided_until_its_event_begins_and_between_its_events():
    onsets = EventOnsets(torch.tensor([2]))
    assert _scale(onsets) == 3.0
    onsets.observe(torch.tensor([1]))  # a speech code: no margin
    assert _scale(onsets) == 3.0
    _event(onsets)  # the first event: its own length
    for _ in range(EVENT_QUIET_CODES - 1):
        onsets.observe(torch.tensor([2]))
        assert _scale(onsets) == 1.0  # not yet ended
    onsets.observe(torch.tensor([2]))  # quiet long enough: the event has ended, one tag is left
    assert _scale(onsets) == 3.0
    _event(onsets)  # the second event
    for _ in range(3 * EVENT_QUIET_CODES):
        onsets.observe(torch.tensor([1]))
        assert _scale(onsets) == 1.0  # every tag's event has been made: no more guidance


def test_an_event_too_short_to_be_one_gives_the_tag_back():
    onsets = EventOnsets(torch.tensor([1]))
    assert _scale(onsets) == 3.0
    _event(onsets, MIN_EVENT_CODES - 1)
    _speech(onsets)
    assert _scale(onsets) == 3.0  # a stray code: guided again
    _event(onsets)
    _speech(onsets)
    assert _scale(onsets) == 1.0


def test_a_small_margin_is_no_event_and_beams_carry_their_state():
    both = tuple(torch.cat([t, t]) for t in _scores(8.0))
    onsets = EventOnsets(torch.tensor([1, 1]))
    onsets.scales(3.0, *(torch.cat([t, t]) for t in _scores(1.0)))  # code 0 only 1.3 nats likelier: no event
    onsets.observe(torch.tensor([0, 1]))
    assert onsets.scales(3.0, *both).flatten().tolist() == [3.0, 3.0]
    onsets = EventOnsets(torch.tensor([1, 1]))
    onsets.scales(3.0, *both)
    onsets.reorder(torch.tensor([1, 1]))
    onsets.observe(torch.tensor([1, 0]))  # row 1 begins its event, row 0 speaks
    onsets.reorder(torch.tensor([1, 1]))  # both continue row 1
    assert onsets.scales(3.0, *both).flatten().tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def model(shipped_base):
    return load_plain_gpt(shipped_base)


@torch.no_grad()
def test_guided_decoding_drops_to_scale_one_at_the_event_onset(model, base_inputs, monkeypatch):
    """On the shipped base (an id left out stands in for a tag): the step after the code the tagged branch favours
    most is scored at scale 1, the steps before at the guidance scale."""
    tagged = base_inputs["gen_text_ids"].long()
    free = torch.cat([tagged[:, :2], tagged[:, 3:]], dim=1)
    conds = base_inputs["conds"]
    both = torch.cat([tagged, torch.nn.functional.pad(free, (0, 1), value=model.cfg.stop_text_token)])

    def guided(tags):
        inner = MelDecoder(model, prepare_prompt(model, conds, both), use_cache=True, position_mode="train",
                           max_new_tokens=8)
        return GuidedDecoder(inner, Guide(2.5, torch.tensor([False]), tags=tags))

    plain = MelDecoder(model, prepare_prompt(model, conds, torch.cat([tagged, tagged])[:1]), use_cache=True,
                       position_mode="train", max_new_tokens=8)
    twin = MelDecoder(model, prepare_prompt(model, conds, free), use_cache=True, position_mode="train",
                      max_new_tokens=8)
    lt, lf = plain.start().log_softmax(-1), twin.start().log_softmax(-1)
    code = int((lt - lf).argmax())
    monkeypatch.setattr(guidance, "ONSET_MARGIN", float((lt - lf)[0, code]) - 1e-3)
    whole, onset = guided(None), guided(torch.tensor([1]))
    first = onset.start()
    torch.testing.assert_close(first, whole.start(), rtol=0, atol=0)  # before any event: the same guidance
    torch.testing.assert_close(first, lf + 2.5 * (lt - lf), rtol=0, atol=1e-4)
    token = torch.tensor([code])
    after, after_whole = onset.step(token), whole.step(token)
    own = plain.step(token)
    lt, lf = own.log_softmax(-1), twin.step(token).log_softmax(-1)
    torch.testing.assert_close(after, own, rtol=0, atol=1e-4)  # inside the event: the tagged branch's own logits
    torch.testing.assert_close(after_whole, lf + 2.5 * (lt - lf), rtol=0, atol=1e-4)


def test_inside_an_event_an_anchored_row_decodes_as_the_tuned_model():
    """Whatever the start (the base, a share of it): a row inside its event keeps the tagged branch's logits, a
    row before its event is guided, a row without a tag keeps the base's."""
    tagged, free, base = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    plain, own = torch.tensor([False, False, True]), torch.tensor([True, False, False])
    got = guidance.guided_scores(tagged, free, 3.0, plain, base, 0.5, own)
    want = guidance.guided_scores(tagged, free, 3.0, plain, base, 0.5)
    torch.testing.assert_close(got[0], tagged[0])
    torch.testing.assert_close(got[1:], want[1:])
    torch.testing.assert_close(got[2], base[2])


def test_an_onset_can_ask_for_several_event_codes_in_a_row(monkeypatch):
    monkeypatch.setattr(guidance, "ONSET_CODES", 2)
    onsets = EventOnsets(torch.tensor([1]))
    for code, scale in ((0, 3.0), (1, 3.0), (0, 3.0), (0, 3.0), (1, 1.0)):
        assert _scale(onsets) == scale  # one event code, broken by speech, is no onset; two in a row are
        onsets.observe(torch.tensor([code]))
    assert bool(onsets.inside[0])
