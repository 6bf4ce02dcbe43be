"""``tagtune eval --judges`` end to end with tiny random-init judges saved by ``save_pretrained`` and loaded
back through the real loading code (no download), the missing-model error, and the code-level detector as an
events judge giving the free-running check's numbers on the synthetic world.

Random judges give random verdicts: these tests check the plumbing and the report; the scoring itself is
checked on constructed inputs in test_judges_metrics.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tiny_judges import save_tiny_judges

PROMPTS = "Hello <laughs> world.\nThis is funny.\n你好 <giggles> 世界。\n"


@pytest.fixture(scope="module")
def tiny_judges(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_judges(tmp_path_factory.mktemp("judges"))


@pytest.fixture(scope="module")
def suite(eval_data, tmp_path_factory) -> tuple[Path, Path]:
    """(a 3-line prompt file, a folder with one reference voice from the corpus)."""
    model_dir, _ = eval_data
    root = tmp_path_factory.mktemp("suite")
    (root / "prompts.txt").write_text(PROMPTS, encoding="utf-8")
    (root / "voices").mkdir()
    shutil.copy(model_dir.parent / "corpus" / "clip001.wav", root / "voices" / "anna.wav")
    return root / "prompts.txt", root / "voices"


def _eval_args(eval_data, shipped_base, out: Path, tiny_judges, suite, *extra: str) -> list[str]:
    model_dir, data_dir = eval_data
    prompts, voices = suite
    return ["eval", "--model", str(model_dir), "--base", str(shipped_base), "--data", str(data_dir),
            "--out", str(out), "--n-free", "0", "--seed", "2", "--no-progress",
            "--event-model", str(tiny_judges["events"]), "--asr-model", str(tiny_judges["words"]),
            "--speaker-model", str(tiny_judges["voice"]), "--prompts", str(prompts), "--voices", str(voices),
            "--calibration-clips", "2", *extra]


@pytest.mark.slow
def test_eval_with_all_judges_writes_their_sections(eval_data, shipped_base, tiny_judges, suite, tmp_path,
                                                    monkeypatch):
    from tagtune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything comes from the saved folders
    out = tmp_path / "report"
    assert main(_eval_args(eval_data, shipped_base, out, tiny_judges, suite, "--judges", "events,words,voice")) == 0
    j = json.loads((out / "report.json").read_text(encoding="utf-8"))["judges"]
    # 3 prompts: one English and one Chinese line with a tag (each also spoken without it), one control
    assert j["settings"]["prompts"] == 3 and j["settings"]["clips"] == 5 and j["settings"]["voices"] == ["anna"]
    ev = j["events"]
    assert ev["tags_judged"] == ["<laughs>", "<giggles>", "<sighs>"]  # the tiny tagger knows their classes
    acc = ev["judge_accuracy"]["per_tag"]
    assert all(a["calibrated"] and a["positives"] == a["negatives"] == 2 for a in acc.values())
    assert all(0.0 <= a["balanced_accuracy"] <= 1.0 for a in acc.values())
    for model in ("tuned", "base"):
        scores = ev[model]
        assert scores["tagged_clips"] == 2 and scores["untagged_clips"] == 3
        assert scores["per_tag"]["<laughs>"]["asked"] == 1 and scores["per_tag"]["<sighs>"]["asked"] == 0
        for s in scores["per_tag"].values():
            assert set(s) >= {"precision", "recall", "f1", "onset_error_ms", "ci95"}
            assert s["recall"] is None or 0.0 <= s["recall"] <= 1.0
        words = j["words"]
        assert words["wer"][model]["clips"] == 3 and words["cer"][model]["clips"] == 2
        assert words["wer"][model]["value"] >= 0.0 and words["cer"][model]["value"] >= 0.0
        sim = j["voice"]["similarity"][model]
        assert sim["clips"] == 5 and -1.0 <= sim["value"] <= 1.0
        assert sim["value"] == pytest.approx(j["per_voice"]["anna"][model]["similarity"]["value"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Judges" in md and "### Words" in md and "| anna | tuned |" in md
    assert (out / "judges.png").stat().st_size > 1000


def test_missing_judge_model_is_one_line_naming_it(eval_data, shipped_base, tiny_judges, suite, tmp_path,
                                                  monkeypatch, capsys):
    from tagtune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = _eval_args(eval_data, shipped_base, tmp_path / "r", tiny_judges, suite, "--judges", "words")
    args[args.index("--asr-model") + 1] = "nobody/no-such-asr-model"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "nobody/no-such-asr-model" in err and "huggingface-cli download nobody/no-such-asr-model" in err
    assert "HF_HUB_OFFLINE" in err


def test_bad_judge_flags_are_one_line(eval_data, shipped_base, tiny_judges, suite, tmp_path, capsys):
    from tagtune.cli import main

    args = _eval_args(eval_data, shipped_base, tmp_path / "r", tiny_judges, suite, "--judges", "events,smell")
    assert main(args) == 2
    assert "unknown judge 'smell'" in capsys.readouterr().err
    args = _eval_args(eval_data, shipped_base, tmp_path / "r", tiny_judges, suite, "--judges", "voice")
    args[args.index("--voices") + 1] = str(tmp_path)  # an empty folder
    assert main(args) == 2
    assert "holds no audio file" in capsys.readouterr().err


def test_judges_load_back_through_the_auto_classes(tiny_judges):
    from tagtune.evaluate.judges.base import Speech
    from tagtune.evaluate.judges.events import AudioSetEventJudge, load_event_map
    from tagtune.evaluate.judges.voice import XVectorVoiceJudge
    from tagtune.evaluate.judges.words import AsrWordsJudge

    rng = np.random.default_rng(0)
    clips = [Speech((0.1 * rng.standard_normal(n)).astype(np.float32)) for n in (24000, 60000)]
    events = AudioSetEventJudge.load(str(tiny_judges["events"]), ["<laughs>", "<coughs>", "<yodels>"],
                                     load_event_map(), batch_size=3)
    assert events.tags == ["<laughs>", "<coughs>"] and events.columns == {"<laughs>": [1], "<coughs>": [7]}
    probs = events.frame_probs(clips)
    assert [p.shape for p in probs] == [(1, 2), (7, 2)]  # windows of 1 s every 0.25 s over 1 s and 2.5 s
    assert all(((0 <= p) & (p <= 1)).all() for p in probs)
    texts = AsrWordsJudge.load(str(tiny_judges["words"]), batch_size=2).transcribe(clips, "en")
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    voice = XVectorVoiceJudge.load(str(tiny_judges["voice"]), batch_size=2)
    same = voice.similarity(clips, clips)
    assert same == pytest.approx([1.0, 1.0], abs=1e-5)


def test_code_detector_through_the_judges_interface_gives_the_free_running_numbers(eval_data, shipped_base):
    """On the synthetic world, the code-level detector as an events judge scores generated codes exactly as the
    free-running check does: recall = hit rate, onset error = placement error, same confusion and false events."""
    from tagtune.evaluate import FreeRunSettings, load_models
    from tagtune.evaluate.freerun import generate, make_prompts, score_clips, summarize_free
    from tagtune.evaluate.judges.base import Expected, Speech
    from tagtune.evaluate.judges.events import CodeEventJudge
    from tagtune.evaluate.judges.metrics import JudgedClip, event_scores
    from tagtune.evaluate.prepared import codebook_of, split_items, train_detector
    from tagtune.tags.occurrences import occurrences

    model_dir, data_dir = eval_data
    tuned, _, tags, space_id = load_models(model_dir)
    val, train = split_items(data_dir, "val"), split_items(data_dir, "train")
    det, report = train_detector(codebook_of(model_dir, None), train, val, tags, tuned.tag_ids, 0)
    tagged = [it for it in val if it["has_tag"]][:8]
    untagged = [it for it in val if not it["has_tag"]][:4]
    items = tagged + untagged
    prompts = make_prompts(tagged, untagged, set(tuned.tag_ids.values()), space_id)
    codes = generate(tuned, prompts, items, FreeRunSettings(batch_size=8), 4)
    today = summarize_free(score_clips(det, prompts, codes, items, tags, tuned.tag_ids), list(tags.tags))

    judge = CodeEventJudge(det, report["held_out"])
    speech = [Speech(np.zeros(0, dtype=np.float32), codes=c) for c in codes]
    clips = []
    for p, s, found in zip(prompts, speech, judge.events(speech)):
        expected = [Expected(o.tag, o.onset_fraction * s.seconds)
                    for o in occurrences(items[p.item], p.item, tags, tuned.tag_ids)] if p.tagged else []
        clips.append(JudgedClip(expected, found, s.seconds).match())
    new = event_scores(clips, list(tags.tags))

    assert sum(s["asked"] for s in new["per_tag"].values()) > 0
    assert sum(s["found"] for s in new["per_tag"].values()) > 0  # the detector did fire: the comparison has teeth
    for tag in tags.tags:
        assert new["per_tag"][tag]["recall"] == today["per_tag"][tag]["hit_rate"]
        assert new["per_tag"][tag]["asked"] == today["per_tag"][tag]["trials"]
        old_err, new_err = today["per_tag"][tag]["placement_error_ms"], new["per_tag"][tag]["onset_error_ms"]
        assert (old_err is None and new_err is None) or new_err == pytest.approx(old_err, abs=1e-6)
    assert new["confusion"] == today["confusion"]
    assert new["false_event_rate"] == today["false_event_rate"]
    assert new["any_event_rate"] == today["any_event_rate"]
    assert judge.accuracy()["balanced_accuracy"] == report["held_out"]["balanced_accuracy"]


def test_code_detector_judges_the_suite_through_the_panel(eval_data, suite):
    """``event_model="codes"``: the suite's speech judged by its codes, scored per tag, with the detector's held-out
    accuracy as the judge's; asking for it without a detector is one clear error."""
    from tagtune.evaluate import EvaluationError, load_models
    from tagtune.evaluate.judges import JudgeSettings, judge_models, open_judges
    from tagtune.evaluate.prepared import codebook_of, split_items, train_detector
    from tagtune.loaders import load_model

    model_dir, data_dir = eval_data
    prompts, voices = suite
    tuned, _, tags, _ = load_models(model_dir)
    val, train = split_items(data_dir, "val"), split_items(data_dir, "train")
    det, report = train_detector(codebook_of(model_dir, None), train, val, tags, tuned.tag_ids, 0)
    settings = JudgeSettings(judges=("events",), event_model="codes", prompts=[prompts], voices=voices,
                             resamples=20, progress=False)
    panel = open_judges(settings, tags, load_model(model_dir))
    assert panel.judges == {} and [v.name for v in panel.voices] == ["anna"]  # the detector comes later
    j = judge_models(panel, [tuned], val, train, seed=1, detector=(det, report["held_out"]))
    assert j["events"]["judge"] == "codes" and set(j) == {"settings", "events", "per_voice"}
    assert j["events"]["judge_accuracy"]["balanced_accuracy"] == report["held_out"]["balanced_accuracy"]
    scores = j["events"]["tuned"]
    assert scores["per_tag"]["<laughs>"]["asked"] == 1 and scores["per_tag"]["<giggles>"]["asked"] == 1
    assert scores["tagged_clips"] == 2 and scores["untagged_clips"] == 3
    with pytest.raises(EvaluationError, match="needs a corpus with event boundaries"):
        judge_models(panel, [tuned], val, train, seed=1, detector=None)


def test_the_models_own_ecapa_is_a_voice_judge(shipped_base):
    from tagtune.evaluate.judges.base import Speech
    from tagtune.evaluate.judges.voice import EcapaVoiceJudge
    from tagtune.loaders import load_model

    m = load_model(shipped_base)
    rng = np.random.default_rng(1)
    t = np.arange(36000) / 24000
    hum = Speech((0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))).astype(np.float32))
    noise = Speech((0.1 * rng.standard_normal(36000)).astype(np.float32))
    same, other = EcapaVoiceJudge(m.vocoder, m.mel).similarity([hum, noise], [hum, hum])
    assert same == pytest.approx(1.0, abs=1e-5) and other < same


def test_without_a_voice_folder_the_validation_speakers_are_the_voices(eval_data, suite):
    """The default voices: one per validation speaker, its reference the speaker's clip resynthesised."""
    from eval_fixtures import VOICES
    from tagtune.evaluate import load_models
    from tagtune.evaluate.judges import JudgeSettings, judge_models, open_judges
    from tagtune.evaluate.prepared import split_items
    from tagtune.loaders import load_model

    model_dir, data_dir = eval_data
    prompts, _ = suite
    tuned, _, tags, _ = load_models(model_dir)
    settings = JudgeSettings(judges=("voice",), speaker_model="ecapa", prompts=[prompts], resamples=20,
                             progress=False)
    panel = open_judges(settings, tags, load_model(model_dir))
    j = judge_models(panel, [tuned], split_items(data_dir, "val"), split_items(data_dir, "train"), seed=1)
    assert sorted(j["settings"]["voices"]) == sorted(VOICES) and "validation speakers" in j["settings"]["voice_source"]
    sims = [j["per_voice"][v]["tuned"]["similarity"] for v in VOICES]
    assert all(s["clips"] == 5 and -1.0 <= s["value"] <= 1.0 for s in sims)
    pooled = j["voice"]["similarity"]["tuned"]
    assert pooled["clips"] == 10 and pooled["value"] == pytest.approx(sum(s["value"] for s in sims) / 2)
