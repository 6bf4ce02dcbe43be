"""Replay: untagged clips of another prepared folder (same base) mixed into a fine-tune, and the Elise-like
tag frequencies of the corpus generator."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

REPLAY_VOICES = ["builtin-f2", "builtin-m2"]


@pytest.fixture(scope="module")
def replay_dir(shipped_base, tmp_path_factory):
    """An untagged two-voice corpus prepared for the shipped base."""
    from tagtune.data.for_model import prepare_for_model
    from tagtune.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("replay")
    generate_corpus(root / "corpus", n_clips=24, seed=2, untagged_fraction=1.0, voices=REPLAY_VOICES,
                    engine="builtin")
    prepare_for_model(shipped_base, str(root / "corpus"), root / "data", progress=False, seed=0, val_fraction=0.0)
    return root / "data"


@pytest.fixture(scope="module")
def events_data(shipped_base, tmp_path_factory):
    """A tagged one-voice corpus with recorded event boundaries, prepared for the shipped base."""
    from tagtune.data.for_model import prepare_for_model
    from tagtune.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("events")
    generate_corpus(root / "corpus", n_clips=24, seed=5, untagged_fraction=0.25, voices=["builtin-f3"],
                    engine="builtin")
    prepare_for_model(shipped_base, str(root / "corpus"), root / "data", tags="auto", progress=False, seed=0,
                      val_fraction=0.0)
    return root / "data"


def test_replay_mix_adds_untagged_clips_of_other_voices(tiny_data, replay_dir):
    from tagtune.train.data import mix_replay, open_data

    data = open_data(tiny_data)
    n = len(data.train)
    mix = mix_replay(data, replay_dir, 0.25, seed=0)
    assert len(mix.picks) == round(n * 0.25 / 0.75) and len(mix) == n + len(mix.picks)
    assert [mix[i]["id"] for i in range(n)] == [data.train[i]["id"] for i in range(n)]
    replayed = [mix[i] for i in range(n, len(mix))]
    assert all(not it["has_tag"] and it["speaker"] in REPLAY_VOICES for it in replayed)
    assert mix.lengths()[n:] == [e["n_text"] + e["n_codes"] for e in mix.examples[n:]]
    assert mix_replay(data, replay_dir, 0.25, seed=0).picks == mix.picks  # seeded
    capped = mix_replay(data, replay_dir, 0.9, seed=0)
    held = sum(not e["has_tag"] for e in mix.replay.examples)
    assert len(capped.picks) == held >= 20  # no more than the replay folder holds


def test_spliced_replay_clips_carry_a_fine_tune_event_and_its_tag(events_data, replay_dir):
    from tagtune.audio import SAMPLES_PER_CODE as PER_CODE
    from tagtune.train.data import mix_replay, open_data
    from tagtune.train.splice import BETWEEN, END, START

    data = open_data(events_data)
    n = len(data.train)
    plain = mix_replay(data, replay_dir, 0.5, seed=0)
    mix = mix_replay(data, replay_dir, 0.5, seed=0, events=1.0)
    assert not plain.splices and mix.picks == plain.picks  # the same replay clips, some of them spliced
    assert len(mix.splices) >= len(mix.picks) // 2 and {s.layout for s in mix.splices.values()} >= {END, START}
    assert mix_replay(data, replay_dir, 0.5, seed=0, events=1.0).splices == mix.splices  # seeded
    tag_ids = {t: pieces[-1] for t, pieces in mix.tag_pieces.items()}
    for k, splice in mix.splices.items():
        item, own, donor = mix[n + k], plain[n + k], mix.primary[splice.donor]
        assert item["has_tag"] and item["speaker"] == own["speaker"] and mix.examples[n + k]["has_tag"]
        assert len(item["text_ids"]) == mix.examples[n + k]["n_text"]
        assert len(item["codes"]) == mix.examples[n + k]["n_codes"] == -(-item["wav_len"] // PER_CODE)
        (tag,) = item["tags"]
        assert item["text_ids"].tolist().count(tag_ids[tag]) == 1 and tag == donor["tags"][splice.event]
        event = sorted(donor["events"], key=lambda e: e["start_sample"])[splice.event]
        cut = donor["codes"][event["start_sample"] // PER_CODE :][: len(item["codes"]) - len(own["codes"])]
        (placed,) = item["events"]
        at = placed["start_sample"] // PER_CODE
        if splice.layout == START:
            assert at == 0 and item["text_ids"][0] == tag_ids[tag]
            assert item["codes"][len(cut):].equal(own["codes"])
        else:
            assert at == len(own["codes"]) and item["codes"][:at].equal(own["codes"])
            assert item["text_ids"][: len(own["text_ids"])].equal(own["text_ids"])
        if splice.layout == BETWEEN:
            partner = mix.replay[splice.partner]
            assert partner["speaker"] == own["speaker"] and item["codes"][-len(partner["codes"]):].equal(
                partner["codes"])
            cut = cut[: len(item["codes"]) - len(own["codes"]) - len(partner["codes"])]
        elif splice.layout == END:
            assert item["text_ids"][-1] == tag_ids[tag]
        assert item["codes"][at : at + len(cut)].equal(cut) and len(cut) >= 1


def test_events_at_end_put_that_share_of_the_spliced_events_after_their_clip(events_data, replay_dir):
    from tagtune.train.data import mix_replay, open_data
    from tagtune.train.splice import END

    data = open_data(events_data)
    alike = mix_replay(data, replay_dir, 0.5, seed=0, events=1.0)
    layouts = {share: [s.layout for s in mix_replay(data, replay_dir, 0.5, seed=0, events=1.0,
                                                      events_at_end=share).splices.values()]
               for share in (0.0, 1.0)}
    assert layouts[1.0] and set(layouts[1.0]) == {END}  # every splice after its clip
    assert layouts[0.0] and END not in layouts[0.0]
    assert {s.layout for s in alike.splices.values()} - {END}  # without the setting, other layouts too
    n = len(data.train)
    at_end = mix_replay(data, replay_dir, 0.5, seed=0, events=1.0, events_at_end=1.0)
    for k in at_end.splices:  # the tag ends the text, the event the codes
        item = at_end[n + k]
        assert item["text_ids"][-1] == at_end.tag_pieces[item["tags"][0]][-1]
        assert item["events"][0]["start_sample"] // 1024 == len(at_end.replay[at_end.picks[k]]["codes"])


def test_event_pairs_keep_each_spliced_clip_as_recorded_beside_it(events_data, replay_dir):
    from tagtune.train.data import mix_replay, open_data

    data = open_data(events_data)
    n = len(data.train)
    replaced = mix_replay(data, replay_dir, 0.5, seed=0, events=1.0)
    paired = mix_replay(data, replay_dir, 0.5, seed=0, events=1.0, event_pairs=True)
    assert paired.splices == replaced.splices and paired.splices
    assert len(paired) == n + len(paired.picks) + len(paired.splices) == len(paired.examples)
    plain = [paired[n + k] for k in range(len(paired.picks))]  # every pick as recorded, spliced or not
    assert all(not it["has_tag"] and "spliced" not in paired.examples[n + k] for k, it in enumerate(plain))
    assert [it["id"] for it in plain] == [replaced.replay[j]["id"] for j in paired.picks]
    spliced = range(n + len(paired.picks), len(paired))
    assert [k for k, _ in paired.slots[len(paired.picks):]] == sorted(paired.splices)
    for i, k in zip(spliced, sorted(paired.splices), strict=True):  # then each splice, as without pairs
        item, alone = paired[i], replaced[n + k]
        assert item["has_tag"] and item["codes"].equal(alone["codes"]) and item["text_ids"].equal(alone["text_ids"])
        assert paired.examples[i] == replaced.examples[n + k]
    assert paired.lengths() == [e["n_text"] + e["n_codes"] for e in paired.examples]


def test_event_cuts_add_tagged_clips_without_their_events(events_data):
    from tagtune.audio import SAMPLES_PER_CODE as PER_CODE
    from tagtune.train.data import add_event_cuts, open_data, tag_text_pieces

    data = open_data(events_data)
    n = len(data.train)
    cuts = add_event_cuts(data, 1.0, seed=0)
    tagged = [i for i, e in enumerate(data.train.examples) if e["has_tag"]]
    assert cuts.picks == tagged and len(cuts) == n + len(tagged)
    assert [cuts[i]["id"] for i in range(n)] == [data.train[i]["id"] for i in range(n)]
    assert add_event_cuts(data, 0.5, seed=0).picks == add_event_cuts(data, 0.5, seed=0).picks  # seeded
    assert 0 < len(add_event_cuts(data, 0.5, seed=0).picks) < len(tagged)
    tag_ids = {pieces[-1] for pieces in tag_text_pieces(data).values()}
    for k, i in enumerate(cuts.picks):
        own, cut = data.train[i], cuts[n + k]
        assert not cut["has_tag"] and not cut["tags"] and not cuts.examples[n + k]["has_tag"]
        assert not tag_ids & set(cut["text_ids"].tolist())
        assert [t for t in own["text_ids"].tolist() if t not in tag_ids] == cut["text_ids"].tolist()
        keep = torch.ones(len(own["codes"]), dtype=torch.bool)
        for e in own["events"]:
            keep[e["start_sample"] // PER_CODE : -(-e["end_sample"] // PER_CODE)] = False
        assert cut["codes"].equal(own["codes"][keep]) and len(cut["codes"]) < len(own["codes"])
        assert (len(cut["codes"]), len(cut["text_ids"])) == (cuts.examples[n + k]["n_codes"],
                                                              cuts.examples[n + k]["n_text"])
    assert cuts.lengths()[:n] == data.train.lengths()


def test_replay_from_another_base_is_refused(tiny_data, replay_dir, tmp_path):
    from tagtune.train.data import DataError, mix_replay, open_data

    other = tmp_path / "other"
    shutil.copytree(replay_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_checkpoint"]["hash"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="fingerprint"):
        mix_replay(open_data(tiny_data), other, 0.3, seed=0)


def test_training_with_replay_records_it(events_data, replay_dir, tmp_path, caplog):
    import logging

    from tagtune.train import train
    from tagtune.train.config import TrainConfig
    from train_fixtures import RUN_CONFIG

    cfg = TrainConfig.from_dict({**RUN_CONFIG, "schedule": {"max_steps": 2, "warmup_steps": 1},
                                 "replay": {"data": str(replay_dir), "fraction": 0.3, "events": 0.5},
                                 "augment": {"event_cuts": 0.5}})
    with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
        result = train(events_data, tmp_path / "run", cfg)
    assert result.steps == 2
    assert any("replay:" in r.getMessage() for r in caplog.records)
    assert any("event cuts:" in r.getMessage() for r in caplog.records)
    recorded = (tmp_path / "run" / "train_config.yaml").read_text()
    assert str(replay_dir) in recorded and "fraction: 0.3" in recorded and "events: 0.5" in recorded
    assert "event_cuts: 0.5" in recorded


def test_base_distributions_are_the_base_models_own(events_data, replay_dir):
    from tagtune.tags.rows import grow_base
    from tagtune.train.base_kl import attach, base_log_probs, recorded_replay_rows
    from tagtune.train.data import add_event_cuts, collate, mix_replay, open_data, pad_spec
    from tagtune.train.loss import row_kl

    data = open_data(events_data)
    n = len(data.train)
    data.train = mix_replay(data, replay_dir, 0.3, seed=0, events=0.5)
    mix = data.train
    rows = recorded_replay_rows(mix)
    assert rows and len(rows) == len(mix.picks) - len(mix.splices)
    assert all(i >= n and not mix.slots[i - n][1] for i in rows)
    data.train = add_event_cuts(data, 0.5, seed=0)
    assert recorded_replay_rows(data.train) == rows  # the cut copies come after the mix's own indices
    assert recorded_replay_rows(open_data(events_data).train) == []  # no replay, nothing to hold

    gpt, _, _ = grow_base(data.base_dir, data.tag_names)
    store = base_log_probs(gpt, data.train, rows, "cpu", batch_size=3)
    for i in rows[:2]:  # equal to the clip scored alone: its batch-mates do not matter
        b = collate(data.train, [i], pad_spec(gpt))
        with torch.no_grad():
            out = gpt.logits(b.cond_mels, b.text_ids, b.text_lengths, b.codes, b.wav_lengths, b.cond_lengths,
                             mask_padding=True, mask_loss=True)
        alone = torch.log_softmax(out.mel_logits.float(), dim=1)[0, :, : store[i].shape[1]]
        torch.testing.assert_close(store[i], alone, atol=1e-4, rtol=1e-4)
        assert store[i].shape[1] == int((out.mel_targets != -100).sum())  # the positions its CE reads

    picked = [rows[0], 0, rows[1]]  # a fine-tune clip between two replay clips
    b = attach(collate(data.train, picked, pad_spec(gpt)), store, picked)
    assert b.base_rows.tolist() == [True, False, True] and b.base_log_probs.shape[2] == b.codes.shape[1] + 2
    with torch.no_grad():
        out = gpt.logits(b.cond_mels, b.text_ids, b.text_lengths, b.codes, b.wav_lengths, b.cond_lengths,
                         mask_padding=True, mask_loss=True)
    same = row_kl(out.mel_logits, b.base_log_probs, out.mel_targets)
    assert float(same[0]) < 1e-4 and float(same[2]) < 1e-4  # the base against itself
    moved = row_kl(out.mel_logits + torch.randn_like(out.mel_logits), b.base_log_probs, out.mel_targets)
    assert float(moved[0]) > 0.05 and float(moved[2]) > 0.05


def test_base_kl_holds_replay_clips_to_the_base(events_data, replay_dir, tmp_path, caplog):
    """The first step is the base's own (adapters start as the identity: KL 0 and no gradient from it), so the
    second step's weights are the same with and without the term, and its loss is higher by the KL alone."""
    import logging

    from tagtune.train import train
    from tagtune.train.config import TrainConfig
    from train_fixtures import RUN_CONFIG

    def losses(base_kl: float) -> list[float]:
        cfg = TrainConfig.from_dict({**RUN_CONFIG, "schedule": {"max_steps": 2, "warmup_steps": 1},
                                     "eval": {"every_steps": 10, "save_every_steps": 10},
                                     "replay": {"data": str(replay_dir), "fraction": 0.5, "base_kl": base_kl}})
        run = tmp_path / f"run-{base_kl}"
        with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
            train(events_data, run, cfg)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if r["kind"] == "train"]

    plain, held = losses(0.0), losses(1.0)
    assert any("replay.base_kl: the base's distributions of" in r.getMessage() for r in caplog.records)
    assert held[0] == pytest.approx(plain[0], abs=1e-4)
    assert held[1] > plain[1] + 1e-5


def test_tag_contrast_trains_with_replay_and_cuts_and_resumes_on_the_same_texts(events_data, replay_dir, tmp_path,
                                                                                   caplog):
    """With replay, spliced events and event cuts in the mix, the contrast term raises the loss of the first
    step (the base knows no tag: its events are as likely under any text), and a resumed run, whose contrast
    texts are chosen afresh from seed, epoch and clip, ends on the same weights as the uninterrupted one."""
    import logging

    from tagtune.train import train
    from tagtune.train.config import TrainConfig
    from train_fixtures import RUN_CONFIG

    class Stop(Exception):
        pass

    def stop_at_4(step: int, **_):
        if step == 4:
            raise Stop

    def run(name: str, contrast: float, resume: bool = False, hook=None) -> list[float]:
        cfg = TrainConfig.from_dict({**RUN_CONFIG, "schedule": {"max_steps": 4, "warmup_steps": 1},
                                     "eval": {"every_steps": 2, "save_every_steps": 2, "keep_last": 2},
                                     "replay": {"data": str(replay_dir), "fraction": 0.3, "events": 0.5},
                                     "augment": {"event_cuts": 0.5},
                                     "loss": {"tag_contrast": contrast, "contrast_margin": 3.0}})
        with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
            train(events_data, tmp_path / name, cfg, resume=resume, on_validate=hook)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if r["kind"] == "train"]

    plain, contrasted = run("plain", 0.0), run("contrast", 0.5)
    assert any("tag contrast:" in r.getMessage() for r in caplog.records)
    assert contrasted[0] > plain[0] + 1e-3
    with pytest.raises(Stop):  # stopped after step 4's loss, before its checkpoint: resumes from step 2
        run("resumed", 0.5, hook=stop_at_4)
    assert run("resumed", 0.5, resume=True) == contrasted
    a, b = (load_file(tmp_path / name / "last" / "adapter_model.safetensors") for name in ("contrast", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_event_options_on_data_without_event_boundaries_warn(tiny_data, replay_dir, tmp_path, caplog):
    import logging

    from tagtune.train import train
    from tagtune.train.config import TrainConfig
    from train_fixtures import RUN_CONFIG

    cfg = TrainConfig.from_dict({**RUN_CONFIG, "schedule": {"max_steps": 1, "warmup_steps": 1},
                                 "replay": {"data": str(replay_dir), "events": 0.5}, "augment": {"event_cuts": 0.5},
                                 "loss": {"tag_contrast": 0.5}})
    with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
        assert train(tiny_data, tmp_path / "run", cfg).steps == 1
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "replay.events" in warned and "augment.event_cuts" in warned and "loss.tag_contrast" in warned


def test_replay_fraction_is_checked():
    from tagtune.train.config import TrainConfig, TrainConfigError

    with pytest.raises(TrainConfigError, match="replay.fraction"):
        TrainConfig.from_dict({"replay": {"data": "x", "fraction": 0.95}})
    with pytest.raises(TrainConfigError, match="replay.events"):
        TrainConfig.from_dict({"replay": {"data": "x", "events": 1.5}})
    with pytest.raises(TrainConfigError, match="augment.event_cuts"):
        TrainConfig.from_dict({"augment": {"event_cuts": -0.1}})
    with pytest.raises(TrainConfigError, match="replay.events_at_end"):
        TrainConfig.from_dict({"replay": {"data": "x", "events_at_end": 1.2}})
    with pytest.raises(TrainConfigError, match="replay.base_kl"):
        TrainConfig.from_dict({"replay": {"data": "x", "base_kl": -1.0}})


def test_tag_weights_skew_the_corpus(tmp_path):
    from tagtune.synthetic import generate_corpus

    info = generate_corpus(tmp_path / "c", n_clips=80, seed=0, untagged_fraction=0.0, voices=["builtin-f3"],
                           engine="builtin", tag_weights={"laughs": 0.8, "sighs": 0.2, "giggles": 0.0})
    counts = Counter(info.tag_counts)
    assert counts["giggles"] == 0 and counts["laughs"] > 2 * counts["sighs"] > 0
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["settings"]["tag_weights"]["laughs"] == 0.8
    with pytest.raises(ValueError, match="tag_weights"):
        generate_corpus(tmp_path / "d", n_clips=4, engine="builtin", tag_weights={"chuckles": 1.0})


def test_voice_weights_give_one_voice_its_share(tmp_path):
    from tagtune.synthetic import generate_corpus, make_plans
    from tagtune.synthetic.voices import select_voices

    voices = select_voices("builtin", ["builtin-f3", "builtin-f4", "builtin-m3"])
    plans = make_plans(600, 3, ("laughs",), 0.5, voices, voice_weights=[0.5, 0.25, 0.25])
    counts = Counter(p.voice for p in plans)
    assert 260 <= counts["builtin-f3"] <= 340 and 110 <= counts["builtin-m3"] <= 190
    unweighted = Counter(p.voice for p in make_plans(600, 3, ("laughs",), 0.5, voices))
    assert unweighted["builtin-f3"] < 240  # a third each without weights
    info = generate_corpus(tmp_path / "c", n_clips=12, seed=0, voices=["builtin-f3", "builtin-m3"],
                           engine="builtin", voice_weights={"builtin-f3": 1.0})
    assert info.speaker_counts == {"builtin-f3": 12}
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["settings"]["voice_weights"]["builtin-m3"] == 0.0
    with pytest.raises(ValueError, match="voice_weights"):
        generate_corpus(tmp_path / "d", n_clips=4, engine="builtin", voices=["builtin-f3"],
                        voice_weights={"builtin-m3": 1.0})


def test_a_donor_event_is_read_at_its_own_sample_rate():
    """Boundaries recorded at another sample rate (``sample_rate`` of the event) give the same codes as at 24 kHz."""
    from tagtune.train.splice import _span

    at_24k = {"tag": "<laughs>", "start_sample": 2400, "end_sample": 7200}
    at_16k = {"tag": "<laughs>", "start_sample": 1600, "end_sample": 4800, "sample_rate": 16000}
    assert _span(at_16k, 100, 256) == _span(at_24k, 100, 256) == (9, 29)
