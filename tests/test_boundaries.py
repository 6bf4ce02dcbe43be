"""Event boundaries for corpora that do not record them: the ordered placement of a clip's tags on an events
judge's window probabilities, ``find_boundaries`` end to end on a synthetic corpus whose true boundaries are
known, the events file laid onto a corpus by ``prepare --events``, and ``tagtune events``."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tagtune.evaluate.judges.events import HOP_S, WINDOW_S
from tiny_judges import tiny_ast

COLUMNS = ["<giggles>", "<laughs>"]
THRESHOLDS = {"<giggles>": 0.5, "<laughs>": 0.5}
CLIP_SECONDS = 5.0
CLIP_WINDOWS = 17  # windows of WINDOW_S every HOP_S over 5 s


def _table(runs: dict[str, list[tuple[int, int]]], n: int = CLIP_WINDOWS) -> np.ndarray:
    """(windows, columns) probabilities: 0.9 inside the given (first, stop) window runs, 0.1 elsewhere."""
    probs = np.full((n, len(COLUMNS)), 0.1)
    for tag, spans in runs.items():
        for first, stop in spans:
            probs[first:stop, COLUMNS.index(tag)] = 0.9
    return probs


def _place(probs: np.ndarray, tags: list[str], expected: list[float]):
    from tagtune.evaluate.judges.boundaries import place_tags

    return place_tags(probs, tags, COLUMNS, THRESHOLDS, expected, CLIP_SECONDS)


def _seconds(first: int, stop: int) -> tuple[float, float]:
    """What a run of windows inside the clip stands for: the HOP_S around each window's centre."""
    return first * HOP_S + (WINDOW_S - HOP_S) / 2, (stop - 1) * HOP_S + (WINDOW_S + HOP_S) / 2


# ------------------------------------------------------------------------------------ placement on tables


def test_two_tags_take_their_runs_in_text_order():
    probs = _table({"<giggles>": [(2, 5)], "<laughs>": [(10, 14)]})
    placed = _place(probs, ["<giggles>", "<laughs>"], [1.0, 3.5])
    assert placed.missed is None and placed.spans == [_seconds(2, 5), _seconds(10, 14)]
    # the text says laughs first: giggles then has no run after the laugh, so it is missed
    placed = _place(probs, ["<laughs>", "<giggles>"], [1.0, 3.5])
    assert placed.missed == 1 and placed.spans == []


def test_a_tag_without_a_sustained_run_is_missed():
    probs = _table({"<giggles>": [(2, 5)], "<laughs>": [(9, 10)]})  # one window is no run
    assert _place(probs, ["<giggles>", "<laughs>"], [1.0, 3.0]).missed == 1
    assert _place(probs, ["<laughs>"], [3.0]).missed == 0
    assert _place(probs, ["<giggles>", "<sighs>"], [1.0, 3.0]).missed == 1  # the judge cannot hear sighs
    assert _place(probs, ["<giggles>", "<giggles>"], [1.0, 3.0]).missed == 1  # one run cannot serve two tags


def test_the_run_nearest_the_tags_place_in_the_text_wins():
    probs = _table({"<giggles>": [(1, 3), (12, 15)]})
    assert _place(probs, ["<giggles>"], [3.6]).spans == [_seconds(12, 15)]
    assert _place(probs, ["<giggles>"], [0.4]).spans == [_seconds(1, 3)]
    both = _place(probs, ["<giggles>", "<giggles>"], [2.0, 2.2])
    assert both.spans == [_seconds(1, 3), _seconds(12, 15)]
    ends = _table({"<laughs>": [(0, 3), (15, 17)]})  # at the clip's edges too: around the windows' centres
    assert _place(ends, ["<laughs>", "<laughs>"], [0.0, 5.0]).spans == [(0.375, 1.125), (4.125, 4.625)]


def test_ordered_assignment_minimises_the_total_distance_not_each_tag_greedily():
    from tagtune.evaluate.judges.boundaries import ordered_assignment

    spans = [(0.0, 1.0), (2.0, 3.0), (6.0, 7.0)]
    # greedily the first tag takes (2, 3) and the second (6, 7): 0 + 3.4; in order, (0, 1) then (2, 3) costs 1.4
    assert ordered_assignment([spans, spans], [2.4, 2.6]) == [0, 1]
    assert ordered_assignment([spans, spans], [0.5, 6.5]) == [0, 2]
    assert ordered_assignment([spans, [(0.0, 0.5)]], [0.5, 0.2]) == 1  # nothing of the second tag follows


@pytest.mark.parametrize("text, tags, positions", [
    ("Seriously? <giggles> That's cute!", ["<giggles>"], [10 / 21]),
    ("<laughs> Oh no.", ["<laughs>"], [0.0]),
    ("Oh no. <laughs>", ["<laughs>"], [1.0]),
    ("No <Giggle> way! <laughs>", ["<giggles>", "<laughs>"], [2 / 6, 1.0]),
    ("Plain text.", [], []),
])
def test_tag_positions_are_shares_of_the_spoken_characters(text, tags, positions):
    from tagtune.evaluate.judges.boundaries import tag_positions
    from tagtune.tags import TagSet

    found, where = tag_positions(text, TagSet(["<giggles>", "<laughs>"]))
    assert found == tags and where == pytest.approx(positions)


# ------------------------------------------------------------------------------------ a synthetic corpus


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tagged one-voice corpus (giggles, laughs; a third untagged) with its true boundaries, and a tiny AST."""
    from tagtune.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("boundaries")
    generate_corpus(root / "corpus", n_clips=24, seed=3, tags=("giggles", "laughs"), untagged_fraction=0.3,
                    voices=["builtin-f3"], engine="builtin")
    tiny_ast(root / "ast")
    return root


def _truth(world: Path) -> dict[str, dict]:
    """The corpus's listing by clip id (a manifest's id is its audio path)."""
    lines = (world / "corpus" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["audio"]: row for row in map(json.loads, lines)}


def _listing_without_events(world: Path, keep=lambda row: True) -> Path:
    """A manifest of the corpus's clips (the same ids) that lists no events, as a real corpus would."""
    path = world / "corpus" / f"listing-{len(list(world.glob('corpus/listing-*')))}.jsonl"
    rows = [{k: v for k, v in row.items() if k != "events"} for row in _truth(world).values() if keep(row)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _true_frame_probs(truth: dict[str, dict]):
    """A stand-in for the tagger's ``frame_probs``: a window is 0.9 for a tag when the HOP_S around its centre
    overlaps a true event of that tag, else 0.05. Clips are recognised by their duration."""
    durations = sorted(row["duration"] for row in truth.values())
    assert min(np.diff(durations)) > 2e-3  # every clip's duration names it

    def frame_probs(judge, clips):
        out = []
        for clip in clips:
            seconds = len(clip.audio) / clip.rate
            row = min(truth.values(), key=lambda r: abs(r["duration"] - seconds))
            assert abs(row["duration"] - seconds) < 1e-3
            centres = np.arange(len(judge._windows(clip.audio))) * HOP_S + WINDOW_S / 2
            probs = np.full((len(centres), len(judge.tags)), 0.05)
            for event in row["events"]:
                start, end = event["start_sample"] / row["sample_rate"], event["end_sample"] / row["sample_rate"]
                hears = (centres + HOP_S / 2 > start) & (centres - HOP_S / 2 < end)
                probs[hears, judge.tags.index(f"<{event['tag']}>")] = 0.9
            out.append(probs)
        return out

    return frame_probs


def _events_file(path: Path) -> dict[str, list[dict]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {row["id"]: row["events"] for row in map(json.loads, lines)}


def test_boundaries_found_from_window_probabilities_match_the_true_ones(world, tmp_path, monkeypatch):
    from tagtune.evaluate.judges.boundaries import find_boundaries
    from tagtune.evaluate.judges.events import AudioSetEventJudge

    truth = _truth(world)
    stand_in, judged = _true_frame_probs(truth), Counter()

    def counted(judge, clips):
        judged.update(len(c.audio) for c in clips)
        return stand_in(judge, clips)

    monkeypatch.setattr(AudioSetEventJudge, "frame_probs", counted)
    listing = _listing_without_events(world)
    summary = find_boundaries(listing, tmp_path / "events.jsonl", event_model=str(world / "ast"), progress=False)
    assert max(judged.values()) == 1  # the clips that calibrate the thresholds are not judged a second time
    assert len(judged) == len(truth)  # every tagged clip, and the untagged ones of the calibration

    tagged = {cid: row for cid, row in truth.items() if row["events"]}
    assert summary["tagged"] == len(tagged) >= 12 and summary["with_boundaries"] == len(tagged)
    carrying = {t: sum(any(e["tag"] == t[1:-1] for e in row["events"]) for row in tagged.values()) for t in COLUMNS}
    assert summary["per_tag"] == {t: {"clips": n, "found": n, "not_found": 0} for t, n in carrying.items()}
    calibration = summary["calibration"]["per_tag"]
    assert all(calibration[t]["calibrated"] and calibration[t]["balanced_accuracy"] == 1.0 for t in COLUMNS)
    assert all(0.05 < summary["thresholds"][t] < 0.9 for t in COLUMNS)

    found = _events_file(tmp_path / "events.jsonl")
    assert sorted(found) == sorted(tagged)
    for cid, events in found.items():
        true = tagged[cid]["events"]
        assert [e["tag"] for e in events] == [f"<{e['tag']}>" for e in true]
        for got, want in zip(events, true):
            assert got["sample_rate"] == 16000  # the tagger's rate: the clip was decoded once, at it
            for key in ("start_sample", "end_sample"):
                error = abs(got[key] / got["sample_rate"] - want[key] / tagged[cid]["sample_rate"])
                assert error <= 2 * HOP_S, (cid, key, got, want)


def test_a_tag_the_tagger_does_not_hear_is_not_found(world, tmp_path, monkeypatch):
    """Laughs never pass their threshold: only the clips whose tags are all giggles get boundaries."""
    from tagtune.evaluate.judges.boundaries import find_boundaries
    from tagtune.evaluate.judges.events import AudioSetEventJudge

    truth = _truth(world)
    giggles_only = {cid: {**row, "events": [e for e in row["events"] if e["tag"] == "giggles"]}
                    for cid, row in truth.items()}
    monkeypatch.setattr(AudioSetEventJudge, "frame_probs", _true_frame_probs(giggles_only))
    summary = find_boundaries(world / "corpus", tmp_path / "events.jsonl", event_model=str(world / "ast"),
                              progress=False)
    only_giggles = [cid for cid, row in truth.items() if row["events"] and
                    all(e["tag"] == "giggles" for e in row["events"])]
    with_laughs = [cid for cid, row in truth.items() if any(e["tag"] == "laughs" for e in row["events"])]
    assert sorted(_events_file(tmp_path / "events.jsonl")) == sorted(only_giggles)
    assert summary["per_tag"]["<laughs>"] == {"clips": len(with_laughs), "found": 0, "not_found": len(with_laughs)}


# ------------------------------------------------------------------------------------ prepare --events


def test_prepare_lays_an_events_file_onto_a_corpus_without_events(world, shipped_base, tmp_path, caplog):
    from tagtune.data.for_model import prepare_for_model
    from tagtune.data.prepare import DataDirMismatch

    truth = _truth(world)
    listing = _listing_without_events(world)
    rows = [{"id": cid, "events": [{**e, "tag": f"<{e['tag']}>", "sample_rate": row["sample_rate"]}
                                   for e in row["events"]]} for cid, row in truth.items() if row["events"]]
    rows.append({"id": "wavs/no-such-clip.wav", "events": rows[0]["events"]})
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="tagtune.data.sources"):
        manifest = prepare_for_model(shipped_base, str(listing), tmp_path / "data", events=events, progress=False,
                                     seed=0, val_fraction=0.0)
    assert [r.getMessage() for r in caplog.records if "name no clip" in r.getMessage()] == [
        f"events file {events}: 1 of its {len(rows)} ids name no clip of {listing} (left out)"]
    assert manifest["events_file"] == {"path": str(events.resolve()), "clips": len(rows) - 1}
    examples = [json.loads(line) for line in (tmp_path / "data" / "examples.jsonl").read_text().splitlines()]
    tagged = [e for e in examples if truth[e["source_id"]]["events"]]
    assert len(tagged) == len(rows) - 1
    for example in tagged:  # 24 kHz recordings prepared at 24 kHz without trimming: the same samples
        want = [(f"<{e['tag']}>", e["start_sample"], e["end_sample"]) for e in truth[example["source_id"]]["events"]]
        assert [(e["tag"], e["start_sample"], e["end_sample"]) for e in example["events"]] == want
        assert example["tags"] == [tag for tag, _, _ in want]  # one event per tag, in order: splice.py uses them
    assert all(e["events"] is None for e in examples if not truth[e["source_id"]]["events"])

    with pytest.raises(DataDirMismatch, match="records differ"):  # other events are other data: no resume
        prepare_for_model(shipped_base, str(listing), tmp_path / "data", progress=False, seed=0, val_fraction=0.0)


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not JSON"),
    ('["wavs/00001.wav"]', "not a JSON object"),
    ('{"events": [{"tag": "<laughs>", "start_sample": 0, "end_sample": 10, "sample_rate": 24000}]}', 'no "id"'),
    ('{"id": "wavs/00001.wav", "events": {}}', 'no "events" list'),
    ('{"id": "wavs/00001.wav", "events": [{"tag": "<laughs>", "start_sample": 10, "end_sample": 5, '
     '"sample_rate": 24000}]}', "start_sample < end_sample"),
    ('{"id": "wavs/00001.wav", "events": [{"tag": "<laughs>", "start_sample": 0, "end_sample": 5}]}',
     "sample_rate > 0"),
])
def test_a_malformed_events_file_is_a_source_error_naming_the_line(world, tmp_path, line, problem):
    from tagtune.data.sources import SourceError, open_source, with_events

    path = tmp_path / "events.jsonl"
    path.write_text("\n" + line + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=f"events file {re.escape(str(path))} line 2: .*{re.escape(problem)}"):
        with_events(open_source(world / "corpus"), path)


def test_prepare_with_a_bad_events_file_is_one_line(world, shipped_base, tmp_path, capsys):
    from tagtune.cli import main

    (tmp_path / "events.jsonl").write_text('{"id": 1}\n', encoding="utf-8")
    code = main(["prepare", "--model", str(shipped_base), "--data", str(world / "corpus"), "--out",
                 str(tmp_path / "data"), "--events", str(tmp_path / "events.jsonl"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert 'line 1: no "events" list' in err and not (tmp_path / "data").exists()
    code = main(["prepare", "--model", str(shipped_base), "--data", str(world / "corpus"), "--out",
                 str(tmp_path / "data"), "--events", str(tmp_path / "missing.jsonl"), "--no-progress"])
    assert code == 2 and "cannot read it" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ tagtune events


def test_events_command_writes_the_file_and_one_summary_line(world, tmp_path, capsys, monkeypatch):
    """The real (random) tiny AST: whatever it hears, the file and the summary line agree with each other."""
    from tagtune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    truth = _truth(world)
    out = tmp_path / "events.jsonl"
    code = main(["events", "--data", str(world / "corpus"), "--out", str(out), "--event-model", str(world / "ast"),
                 "--device", "cpu", "--calibration-clips", "6", "--no-progress"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[1] == f"wrote {out}"
    found = _events_file(out)
    n_tagged = sum(bool(row["events"]) for row in truth.values())
    assert lines[0].startswith(f"event boundaries for {len(found)} of {n_tagged} tagged clips (<")
    for tag in COLUMNS:
        carrying = [cid for cid, row in truth.items() if any(e["tag"] == tag[1:-1] for e in row["events"])]
        assert f"{tag} {sum(cid in found for cid in carrying)} found, " in lines[0]
    for cid, events in found.items():
        assert [e["tag"] for e in events] == [f"<{e['tag']}>" for e in truth[cid]["events"]]
        starts = [e["start_sample"] for e in events]
        assert starts == sorted(starts) and all(0 <= e["start_sample"] < e["end_sample"] for e in events)


def test_events_command_errors_are_one_line(world, tmp_path, capsys, monkeypatch):
    from tagtune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    untagged = _listing_without_events(world, keep=lambda row: not row["events"])
    cases = [
        (["--data", str(world / "corpus"), "--event-model", "nobody/no-such-tagger"],
         "huggingface-cli download nobody/no-such-tagger"),
        (["--data", str(untagged), "--event-model", str(world / "ast")], "no text carries a tag"),
        (["--data", str(world / "corpus"), "--event-model", str(world / "ast"), "--calibration-clips", "1"],
         "(--calibration-clips)"),
    ]
    for args, message in cases:
        code = main(["events", *args, "--out", str(tmp_path / "events.jsonl"), "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("tagtune events: error: ") and message in err
    assert not (tmp_path / "events.jsonl").exists()
