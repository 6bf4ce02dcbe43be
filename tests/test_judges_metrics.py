"""The judges' scoring on constructed inputs with known answers: event matching, P/R/F1, onset error,
confusion, false events, WER/CER, intervals, the text normaliser and the prompt suite."""

from __future__ import annotations

import pytest

from tagtune.evaluate.judges.base import Event, Expected
from tagtune.evaluate.judges.metrics import (
    JudgedClip,
    Transcript,
    event_scores,
    interval,
    similarity_scores,
    tolerance_s,
    words_scores,
)

L, G, S = "<laughs>", "<giggles>", "<sighs>"


def _clips() -> list[JudgedClip]:
    """Four 4 s clips (window ±1 s) and two untagged ones, with hand-counted answers:

    laughs: asked 3, hit 2 (onset errors 100 and 300 ms); found 4, two of them hits -> P 2/4, R 2/3
    giggles: asked 2, hit 1 (error 0), one answered by a laugh (confusion laughs), one giggle on an untagged
             clip -> found 2, right 1: P 1/2, R 1/2
    sighs: asked 1, nothing found -> P None, R 0
    """
    return [
        JudgedClip([Expected(L, 1.0)], [Event(L, 1.1, 1.8)], 4.0),
        JudgedClip([Expected(L, 2.0), Expected(G, 0.5)], [Event(L, 2.3, 3.0), Event(G, 0.5, 1.0)], 4.0),
        JudgedClip([Expected(L, 0.5)], [Event(L, 3.9, 4.0)], 4.0),  # 3.4 s away: outside the window
        JudgedClip([Expected(G, 3.0), Expected(S, 1.0)], [Event(L, 3.2, 3.9)], 4.0),
        JudgedClip([], [Event(G, 1.0, 2.0)], 4.0),
        JudgedClip([], [], 4.0),
    ]


def test_event_scores_have_the_hand_counted_values():
    scores = event_scores([c.match() for c in _clips()], [L, G, S])
    laughs, giggles, sighs = (scores["per_tag"][t] for t in (L, G, S))
    assert laughs["precision"] == pytest.approx(2 / 4) and laughs["recall"] == pytest.approx(2 / 3)
    # laughs found 4 times: at 1.1 and 2.3 (hits), at 3.9 (no request near) and at 3.2 (answered a giggle request)
    assert laughs["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert laughs["onset_error_ms"] == pytest.approx(200.0)  # median of 100 and 300
    assert giggles["precision"] == pytest.approx(1 / 2) and giggles["recall"] == pytest.approx(1 / 2)
    assert giggles["onset_error_ms"] == pytest.approx(0.0)
    assert sighs["precision"] is None and sighs["recall"] == 0.0 and sighs["f1"] is None
    assert scores["confusion"]["counts"][G] == {L: 1, G: 1, S: 0, "none": 0}
    assert scores["confusion"]["counts"][L] == {L: 2, G: 0, S: 0, "none": 1}
    assert scores["confusion"]["counts"][S]["none"] == 1
    assert scores["false_event_rate"] == pytest.approx(1 / 2)
    assert scores["overall"]["precision"] == pytest.approx(3 / 6)
    assert scores["overall"]["recall"] == pytest.approx(3 / 6)


def test_the_nearest_event_in_the_window_answers_and_the_window_grows_with_the_clip():
    assert tolerance_s(2.0) == 1.0 and tolerance_s(10.0) == 2.5
    clip = JudgedClip([Expected(L, 5.0)], [Event(G, 5.2, 6.0), Event(L, 4.5, 5.5)], 10.0).match()
    assert clip.answers[0].tag == G  # 0.2 s beats 0.5 s: a giggle where a laugh was asked
    far = JudgedClip([Expected(L, 5.0)], [Event(L, 7.6, 8.0)], 10.0).match()  # 2.6 s > 2.5 s
    assert far.answers == [None]


def test_perfect_and_empty_judgements():
    perfect = [JudgedClip([Expected(L, 1.0)], [Event(L, 1.0, 2.0)], 3.0).match() for _ in range(3)]
    s = event_scores(perfect, [L])["per_tag"][L]
    assert (s["precision"], s["recall"], s["f1"], s["onset_error_ms"]) == (1.0, 1.0, 1.0, 0.0)
    nothing = event_scores([JudgedClip([], [], 3.0).match()], [L])
    assert nothing["per_tag"][L]["recall"] is None and nothing["false_event_rate"] == 0.0


def test_word_and_character_error_rates():
    items = [Transcript("the cat sat", "the cat sat", True), Transcript("on the mat", "on a mat", False)]
    s = words_scores(items, "word", resamples=200)
    assert s["value"] == pytest.approx(1 / 6) and s["with_tags"] == 0.0 and s["without_tags"] == pytest.approx(1 / 3)
    assert 0.0 <= s["ci95"][0] <= s["value"] <= s["ci95"][1] <= 1 / 3
    zh = words_scores([Transcript("今天天气很好", "今天天气不好", True)], "char")
    assert zh["value"] == pytest.approx(1 / 6) and zh["ci95"] is None  # one clip: no interval


def test_intervals_come_from_resampling_and_cover_the_estimate():
    values = [0.1 * k for k in range(11)]
    lo, hi = interval(values, lambda v: sum(v) / len(v), resamples=500, seed=1)
    assert lo < 0.5 < hi and hi - lo < 0.6
    assert interval([1.0, 1.0, 1.0], lambda v: sum(v) / len(v)) == [1.0, 1.0]
    sims = similarity_scores([0.9, 0.7, 0.8, 0.6], [True, True, False, False], resamples=100)
    assert sims["value"] == pytest.approx(0.75) and sims["with_tags"] == pytest.approx(0.8)
    assert sims["without_tags"] == pytest.approx(0.7)


@pytest.mark.parametrize("text, language, expected", [
    ("Seriously? <giggles> That's the cutest thing I've ever heard!", "en",
     "seriously that's the cutest thing i've ever heard"),
    ("Well [sighs] let's  start OVER, ok?", "en", "well let's start over ok"),
    ("“Don’t” — she said.", "en", "don't she said"),
    ("'quoted' words", "en", "quoted words"),
    ("It costs 25 dollars.", "en", "it costs 25 dollars"),
    ("真的吗？<giggles> 这是我听过最可爱的东西！", "zh", "真的吗这是我听过最可爱的东西"),
    ("你 好 ， 世界", "zh", "你好世界"),
])
def test_normaliser(text, language, expected):
    from tagtune.evaluate.judges.text import normalize

    assert normalize(text, language) == expected


def test_shipped_suite_has_the_promised_shape():
    from tagtune.evaluate.judges.suite import read_prompts

    prompts = read_prompts()
    for lang in ("en", "zh"):
        mine = [p for p in prompts if p.language == lang]
        tagged = [p for p in mine if p.tags]
        assert len(mine) >= 40 and len(mine) - len(tagged) >= 8  # untagged controls
        assert {len(p.tags) for p in tagged} == {1, 2}
        places = [f for p in tagged for _, f in p.tags]
        assert min(places) == 0.0 and max(places) == 1.0 and any(0.2 < f < 0.8 for f in places)
    texts = {p.text for p in prompts}
    from tagtune.demo import SAMPLE_SENTENCES

    assert set(SAMPLE_SENTENCES) <= texts


def test_suite_positions_and_the_tags_a_model_knows(tmp_path):
    from tagtune.evaluate.judges.suite import for_tags, read_prompts
    from tagtune.tags.vocab import TagSet

    f = tmp_path / "p.txt"
    f.write_text("# comment\nab <Laugh> cd\n<sighs> abcd\nabcd <coughs>\nno tags here\n", encoding="utf-8")
    prompts = read_prompts([f])
    assert [p.tags for p in prompts] == [[("<Laugh>", 0.5)], [("<sighs>", 0.0)], [("<coughs>", 1.0)], []]
    assert prompts[0].plain == "ab cd" and prompts[0].expected(4.0) == [Expected("<Laugh>", 2.0)]
    kept, left_out = for_tags(prompts, TagSet(tags=["<laughs>", "<sighs>"]))
    assert left_out == 1 and [p.tags for p in kept] == [[(L, 0.5)], [(S, 0.0)], []]


def test_event_map_is_shipped_readable_and_extendable(tmp_path):
    from tagtune.evaluate.judges.events import EventMapError, class_columns, load_event_map

    shipped = load_event_map()
    assert "Giggle" in shipped["giggle"] and "Laughter" in shipped["laugh"] and shipped["sigh"][0] == "Sigh"
    extra = tmp_path / "map.yaml"
    extra.write_text("Giggle: [Music]\nyodels: [Yodeling]\n", encoding="utf-8")
    merged = load_event_map(extra)
    assert merged["giggle"] == ["Music"] and merged["yodel"] == ["Yodeling"]
    cols = class_columns([L, G, "<yodels>"], merged, {0: "Speech", 1: "Laughter", 2: "Music", 3: "Belly laugh"})
    assert cols == {L: [1, 3], G: [2]}  # no column knows Yodeling: not judged
    extra.write_text("giggles: Music\n", encoding="utf-8")
    with pytest.raises(EventMapError, match="list of AudioSet class names"):
        load_event_map(extra)
