"""Transfer evaluation: conditions, the report's ``transfer`` object and its checks, and an end-to-end run on a
transfer set of a fine-tune voice and unseen voices in English and Chinese, prepared by the real pipeline."""

from __future__ import annotations

import json
import shutil

import pytest

from tagtune.evaluate.report import (
    FAIL,
    MAX_SIMILARITY_DROP,
    MIN_TRANSFER_RATIO,
    PASS,
    acceptance,
    transfer_checks,
)
from tagtune.evaluate.transfer import CONDITIONS, by_condition, condition

FT_VOICE = "builtin-f1"  # a voice of the eval fixture's corpus: the "fine-tune" voice
UNSEEN = ("builtin-f4", "builtin-m3")


def test_conditions_follow_speaker_and_language():
    ft = {"alice"}
    assert condition("alice", "en", ft) == "ft_voice_en" and condition("alice", "zh", ft) == "ft_voice_zh"
    assert condition("bob", "en", ft) == "unseen_en" and condition("bob", "zh", ft) == "unseen_zh"
    items = [{"speaker": s, "language": lang} for s, lang in (("bob", "zh"), ("alice", "en"), ("bob", "en"))]
    groups = by_condition(items, ft)
    assert list(groups) == ["ft_voice_en", "unseen_en", "unseen_zh"]  # in CONDITIONS order, absent ones left out
    assert groups["unseen_zh"] == [items[0]]


def test_text_language():
    from tagtune.text.language import text_language

    assert text_language("真的吗？ <giggles> 这也太可爱了吧！") == "zh"
    assert text_language("Seriously? <giggles> That's the cutest!") == "en"
    assert text_language("") == "en"


def _entry(ratio, false, nll, tuned_sim, base_sim):
    return {"transfer_ratio": ratio, "false_event_rate": false, "untagged_nll_ratio": nll,
            "speaker_similarity": {"tuned": tuned_sim, "base": base_sim, "drop": base_sim - tuned_sim}}


def test_transfer_checks_judge_each_condition():
    transfer = {"ft_voice_en": _entry(1.0, 0.05, 1.01, 0.9, 0.9),
                "unseen_en": _entry(0.9, 0.10, 1.02, 0.70, 0.71),  # drop 0.01: passes
                "ft_voice_zh": _entry(0.5, 0.05, 1.01, 0.8, 0.8),  # ratio fails
                "unseen_zh": _entry(0.85, 0.30, 1.10, 0.50, 0.60)}  # false events, NLL and drop fail
    checks = {c["name"]: c for c in transfer_checks(transfer)}
    assert f"ft_voice_en transfer_ratio >= {MIN_TRANSFER_RATIO}" not in checks  # the reference condition
    assert checks[f"unseen_en transfer_ratio >= {MIN_TRANSFER_RATIO}"]["verdict"] == PASS
    assert checks[f"unseen_en speaker similarity drop <= {MAX_SIMILARITY_DROP}"]["verdict"] == PASS
    assert checks[f"ft_voice_zh transfer_ratio >= {MIN_TRANSFER_RATIO}"]["verdict"] == FAIL
    assert not any(n.startswith("ft_voice_zh speaker") for n in checks)  # drift is judged on unseen voices
    assert [checks[f"unseen_zh {k}"]["verdict"] for k in ("false_event_rate <= 0.15", "untagged_nll_ratio <= 1.05",
                                                           f"speaker similarity drop <= {MAX_SIMILARITY_DROP}")] \
        == [FAIL] * 3
    assert acceptance({}, {"untagged_nll_ratio": 1.0, "mean_hit_rate": 0.9, "false_event_rate": 0.0},
                      transfer=transfer)["passed"] is False
    good = {c: _entry(1.0, 0.0, 1.0, 0.8, 0.8) for c in CONDITIONS}
    assert acceptance({}, {"untagged_nll_ratio": 1.0, "mean_hit_rate": 0.9, "false_event_rate": 0.0},
                      transfer=good)["passed"] is True


def test_similarities_split_by_prompt_kind():
    from tagtune.evaluate.transfer import _paired_drop_se, _similarities, _similarity_means

    class Embedding:  # cosine stand-in: the first code of each sequence, too short below 2 codes
        def similarity(self, a, b):
            if len(a) < 2:
                raise ValueError("too short")
            return float(a[0] == b[0])

    import torch

    codes = [torch.tensor([1, 1]), torch.tensor([2, 2]), torch.tensor([3]), torch.tensor([4, 4])]
    refs = [torch.tensor([1]), torch.tensor([9]), torch.tensor([3]), torch.tensor([4])]
    sims = _similarities(Embedding(), codes, refs)
    assert sims == [1.0, 0.0, None, 1.0]  # the short one has no voice
    means = _similarity_means(sims, ["tagged", "tag_free", "tag_free", "tag_free"])
    assert means == {"all": pytest.approx(2 / 3), "tagged": 1.0, "tag_free": 0.5}
    # the drop's standard error pairs the prompts both models answered: diffs 0.5, 0.0, -0.5 (the None left out)
    se = _paired_drop_se([0.5, 0.5, None, 1.0], [1.0, 0.5, 0.2, 0.5])
    assert se == {"drop_se": pytest.approx(0.5 / 3 ** 0.5), "paired_prompts": 3}
    assert _paired_drop_se([0.5, None], [0.2, 0.1]) == {"drop_se": None, "paired_prompts": 1}


@pytest.fixture(scope="module")
def transfer_set(eval_data, tmp_path_factory):
    """A transfer set for the eval fixture's model: its voice builtin-f1 and two unseen voices, both languages."""
    from tagtune.data.for_model import prepare_for_model
    from tagtune.synthetic import generate_corpus
    from tagtune.tags.vocab import read_tagset

    model_dir, _ = eval_data
    root = tmp_path_factory.mktemp("transfer")
    generate_corpus(root / "corpus", n_clips=96, seed=3, tags=("giggles", "laughs", "sighs"), untagged_fraction=0.3,
                    voices=[FT_VOICE, *UNSEEN], engine="builtin", chinese_fraction=0.5)
    order = [t.strip("<>") for t in read_tagset(model_dir).tags]
    prepare_for_model(model_dir, str(root / "corpus"), root / "data", tags=order, progress=False, seed=0,
                      val_fraction=0.5)
    return root / "data"


@pytest.mark.slow
def test_transfer_report_end_to_end(eval_data, transfer_set, shipped_base, tmp_path):
    from tagtune.evaluate import evaluate
    from tagtune.evaluate.transfer import TransferSettings

    model_dir, data_dir = eval_data
    # the fine-tune data's clips as more voices for the speaker embedding: builtin-m1 is not in the transfer set
    report = evaluate(model_dir, data_dir, tmp_path / "report", base_dir=shipped_base, n_free=4, seed=0,
                      progress=False, transfer_dir=transfer_set,
                      transfer_settings=TransferSettings(4, 2, 16, voices_dir=data_dir))
    t = report["transfer"]
    assert [c for c in CONDITIONS if c in t] == list(CONDITIONS)
    assert t["fine_tune_voices"] == sorted({FT_VOICE, "builtin-m1"}) and t["voices"]["ft_voice_zh"] == [FT_VOICE]
    assert t["voices"]["unseen_en"] == sorted(UNSEEN)
    for c in CONDITIONS:
        e = t[c]
        assert set(e["hit_rate"]) == {"<giggles>", "<laughs>", "<sighs>", "mean"}
        assert set(e["reliance_gap"]) == {"<giggles>", "<laughs>", "<sighs>"}
        assert e["reliance_gap"] == e["tuned"]["reliance_gap"]
        assert set(e["base"]["reliance_gap"]) == set(e["reliance_gap"]) and e["onset_gap"] == e["tuned"]["onset_gap"]
        # every tagged prompt's tag is one confusion trial: found as itself, as another tag, or not near it
        trials = sum(sum(row.values()) for row in e["tuned"]["confusion"].values())
        assert trials >= e["clips"]["tagged"] and 0.0 <= e["tuned"]["any_event_rate"] <= 1.0
        by_edge = e["tuned"]["hit_rate_by_edge"]
        assert sum(v["trials"] for v in by_edge.values()) <= trials  # trials with recorded boundaries only
        hits = {tag: row[tag] / sum(row.values()) for tag, row in e["tuned"]["confusion"].items() if sum(row.values())}
        assert all(e["hit_rate"][tag] == pytest.approx(h) for tag, h in hits.items())
        sims = e["speaker_similarity"]
        assert -1.0 <= sims["tuned"] <= 1.0 and sims["drop"] == pytest.approx(sims["base"] - sims["tuned"])
        tagged, tag_free = sims["by_prompt"]["tagged"], sims["by_prompt"]["tag_free"]
        assert tagged["drop"] == pytest.approx(tagged["base"] - tagged["tuned"])
        assert sims["paired_prompts"] <= min(e["tuned"]["similarity_clips"], e["base"]["similarity_clips"])
        assert sims["drop_se"] is None or sims["drop_se"] >= 0.0
        n = e["clips"]["tagged"]  # the mean over all prompts is the count-weighted mean of the two kinds
        total = n + n + e["clips"]["untagged"]
        if e["tuned"]["similarity_clips"] == total:
            assert sims["tuned"] == pytest.approx((n * tagged["tuned"] + (total - n) * tag_free["tuned"]) / total)
        nll = e["untagged_nll"]
        assert e["untagged_nll_ratio"] == pytest.approx(nll["tuned"] / nll["base"])
        reference = t["ft_voice_en"]["hit_rate"]["mean"]
        mean = e["hit_rate"]["mean"]
        assert e["transfer_ratio"] == (pytest.approx(mean / reference) if reference and mean is not None else None)
        real, real_reference = e["real_clips"]["hit_rate"]["mean"], t["ft_voice_en"]["real_clips"]["hit_rate"]["mean"]
        assert real is None or 0.0 <= real <= 1.0
        assert e["real_clips"]["transfer_ratio"] == (pytest.approx(real / real_reference)
                                                     if real_reference and real is not None else None)
    assert t["judges"]["speaker_embedding"]["speakers"] == 4  # f1 and two unseen voices, plus m1 from data_dir
    assert t["judges"]["speaker_embedding"]["extra_voice_clips"] > 0 and t["settings"]["voices_dir"] == str(data_dir)
    assert t["judges"]["detector"]["available"] is True
    names = [c["name"] for c in report["acceptance"]["checks"]]
    assert f"unseen_zh speaker similarity drop <= {MAX_SIMILARITY_DROP}" in names
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["transfer"]["unseen_zh"]["transfer_ratio"] == t["unseen_zh"]["transfer_ratio"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Transfer to unseen voices and to Chinese" in md and "unseen voices, Chinese" in md
    assert "Speaker-similarity drop (base - tuned) split by prompt" in md and "recordings: hit (ratio)" in md
    assert "Reliance gap per tag (tuned, teacher-forced" in md
    assert "transfer.png" in written["figures"] and (tmp_path / "report" / "transfer.png").stat().st_size > 0


def test_a_transfer_set_with_other_tag_ids_is_refused(eval_data, transfer_set, tmp_path):
    from tagtune.evaluate.loading import EvaluationError, load_models
    from tagtune.evaluate.transfer import open_transfer_set

    model_dir, _ = eval_data
    moved = tmp_path / "moved"
    shutil.copytree(transfer_set, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    ids = manifest["tag_ids"]
    first, second = sorted(ids)[:2]
    ids[first], ids[second] = ids[second], ids[first]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    tuned, _, _, _ = load_models(model_dir, None, None, "cpu", "mean", 0)
    with pytest.raises(EvaluationError, match="--tags"):
        open_transfer_set(moved, [tuned])


def test_voices_from_another_dvae_are_refused(eval_data, transfer_set, tmp_path):
    from tagtune.evaluate.loading import EvaluationError
    from tagtune.evaluate.transfer import open_voice_set

    _, data_dir = eval_data
    assert {it["speaker"] for it in open_voice_set(data_dir, transfer_set)} == {FT_VOICE, "builtin-m1"}
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["encoders"]["clip"] = "dvae:0000000000000000"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvaluationError, match="another DVAE"):
        open_voice_set(other, transfer_set)
    with pytest.raises(EvaluationError, match="not a prepared data folder"):
        open_voice_set(tmp_path / "missing", transfer_set)


def test_more_voices_without_a_transfer_set_are_refused_before_any_work(tmp_path):
    from tagtune.evaluate import evaluate
    from tagtune.evaluate.loading import EvaluationError
    from tagtune.evaluate.transfer import TransferSettings

    with pytest.raises(EvaluationError, match="need a transfer set"):
        evaluate(tmp_path / "no-model", tmp_path / "no-data", tmp_path / "report", progress=False,
                 transfer_settings=TransferSettings(voices_dir=tmp_path))
    assert not (tmp_path / "report").exists()
