"""``evaluate`` end to end on the shipped tiny base and a prepared corpus with exact event boundaries."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from eval_fixtures import N_CLIPS, TAGS

RUN_CONFIG = {
    "seed": 11,
    "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
    "optim": {"lr": 1e-2},
    "batch": {"batch_size": 8, "grad_accum": 1},
    "schedule": {"max_steps": 80, "warmup_steps": 2},  # several passes over the training clips
    "model": {"dropout": 0.0},
    "eval": {"every_steps": 80, "save_every_steps": 80, "keep_last": 1},
    "runtime": {"log_every_steps": 10, "progress_bar": False},
}




@pytest.fixture(scope="module")
def untrained_report(eval_data, shipped_base, tmp_path_factory):
    """The tag-extended base (tag rows never trained) against the plain base."""
    from tagtune.evaluate import evaluate

    model_dir, data_dir = eval_data
    out = tmp_path_factory.mktemp("report")
    return out, evaluate(model_dir, data_dir, out, base_dir=shipped_base, n_free=6, seed=3)


def _val_tag_count(data_dir: Path, tag: str) -> int:
    from tagtune.data import PreparedDataset

    val = PreparedDataset(data_dir, "val")
    return sum(val[i]["tags"].count(tag) for i in range(len(val)))


def test_report_files_and_structure(untrained_report, eval_data):
    out, report = untrained_report
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "reliance.png", "free_running.png",
                                                "confusion.png"}
    assert json.loads((out / "report.json").read_text())["tags"].keys() == set(TAGS)
    assert (out / "reliance.png").read_bytes()[:4] == b"\x89PNG"
    for tag, entry in report["tags"].items():
        assert entry["trials"] == _val_tag_count(eval_data[1], tag) > 0 and entry["unit"] == "event"
        assert set(entry["reliance_gap"]) == {"tuned", "base"} and 0.0 <= entry["clip_win_rate"] <= 1.0
        assert entry["hit_rate"] is not None and entry["real_clips_hit_rate"] is not None
    assert set(report["overall"]) >= {"untagged_nll_ratio", "false_event_rate", "any_event_rate", "mean_hit_rate",
                                      "placement_error_ms", "detector_accuracy"}
    names = [c["name"] for c in report["acceptance"]["checks"]]
    assert len(names) == 4 * len(TAGS) + 3 and report["acceptance"]["not_measured"] == []
    md = (out / "report.md").read_text()
    assert "| `<laughs>` |" in md and "## Acceptance" in md


def test_untrained_tag_rows_score_the_same_as_the_grown_base(untrained_report):
    # tags add and the evaluator's grown base build the same rows: both models must get identical numbers
    _, report = untrained_report
    for entry in report["tags"].values():
        assert entry["reliance_gap"]["tuned"] == pytest.approx(entry["reliance_gap"]["base"], abs=1e-5)
        assert entry["clip_win_rate"] == entry["base"]["clip_win_rate"]
    assert report["overall"]["untagged_nll_ratio"] == pytest.approx(1.0, abs=1e-6)
    free = report["details"]["free"]
    assert free["tuned"]["confusion"] == free["base"]["confusion"]  # same weights, same seeds, same samples


def test_detector_is_trained_and_checked_on_the_corpus(untrained_report):
    _, report = untrained_report
    det = report["details"]["detector"]
    assert det["available"] and set(det["train_windows"]) == {"none", "generated_none", *TAGS}
    from tagtune.data import PreparedDataset
    from tagtune.evaluate.prepared import GENERATED_NEGATIVES

    # the base spoke tag-free training prompts as negatives; its held-out generations measure false positives
    n_train = len(PreparedDataset(report["meta"]["data"], "train"))
    assert det["generated_negatives"] == min(GENERATED_NEGATIVES, n_train) > 0
    assert det["train_windows"]["generated_none"] > 0 and det["min_run_windows"] >= 2
    fp = report["details"]["free"]["detector_on_base"]
    base_free = report["details"]["free"]["base"]
    assert fp["sequences"] == base_free["tagged_prompts"] + base_free["untagged_prompts"]  # every base generation
    assert report["overall"]["detector_false_positive_rate"] == fp["sequence_rate"]
    assert det["held_out"]["windows"] > 100 and det["held_out"]["accuracy"] > 0.85
    real = report["details"]["free"]["real_clips"]  # the detector on the reference clips themselves
    assert real["mean_hit_rate"] >= 0.8 and real["false_event_rate"] <= 0.2


class TagBlind(nn.Module):
    """A model that cannot see tags: every tag (and its space piece) is removed before the real model runs."""

    def __init__(self, gpt: nn.Module, tag_ids: set[int], space_id: int | None):
        super().__init__()
        self.inner, self.cfg, self.tag_ids, self.space_id = gpt, gpt.cfg, tag_ids, space_id

    def get_conditioning(self, *args, **kwargs):
        return self.inner.get_conditioning(*args, **kwargs)

    def logits(self, cond_mel, text_ids, text_lengths, codes, wav_lengths, *args, **kwargs):
        from tagtune.evaluate.freerun import strip_tags

        rows = [strip_tags(t[:n], self.tag_ids, self.space_id) for t, n in zip(text_ids, text_lengths)]
        padded = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.cfg.stop_text_token)
        lengths = torch.tensor([len(r) for r in rows])
        return self.inner.logits(cond_mel, padded, lengths, codes, wav_lengths, *args, **kwargs)


def test_a_model_that_ignores_tags_has_no_reliance_gap(eval_data):
    from tagtune.evaluate import load_models
    from tagtune.evaluate.loading import EvalModel
    from tagtune.evaluate.prepared import split_items
    from tagtune.evaluate.reliance import score_reliance, summarize

    model_dir, data_dir = eval_data
    tuned, _, tags, space_id = load_models(model_dir)
    blind = EvalModel("base", TagBlind(tuned.gpt, set(tuned.tag_ids.values()), space_id), "blind", tuned.tag_ids)
    tagged = [it for it in split_items(data_dir, "val") if it["has_tag"]]
    trials = score_reliance(blind, tagged, tags, space_id)
    assert len(trials) == len(tagged)
    assert max(abs(t.gap) for t in trials) < 1e-3 and max(abs(t.wrong_gap) for t in trials) < 1e-3
    assert max(abs(t.onset_gap) for t in trials if t.onset_gap is not None) < 1e-3
    seen = score_reliance(tuned, tagged, tags, space_id)  # the same model reading the tags does differ
    assert max(abs(t.gap) for t in seen) > 0.05
    onsets = [t for t in seen if t.onset_gap is not None]
    assert onsets and max(abs(t.onset_gap) for t in onsets) > 1e-3
    # the onset's sums run over the first codes of the event's own: never more NLL than the whole event's
    assert all(t.onset_with_tag <= t.with_tag and t.onset_without_tag <= t.without_tag for t in onsets)
    summary = summarize(trials, list(tags.tags))
    assert all(s["clip_win_rate"] == 0.0 for s in summary.values())  # ties are no wins


@pytest.mark.slow
def test_a_tuned_adapter_relies_on_its_tags(eval_data, shipped_base, tmp_path):
    from tagtune.evaluate import evaluate
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    _, data_dir = eval_data
    run = train(data_dir, tmp_path / "run", TrainConfig.from_dict(RUN_CONFIG))
    report = evaluate(None, data_dir, tmp_path / "report", base_dir=shipped_base,
                      adapter=run.run_dir / "last", n_free=0, plots=False)
    gaps = {m: [e["wrong_tag_gap"][m] for e in report["tags"].values()] for m in ("tuned", "base")}
    assert sum(gaps["tuned"]) / 3 > sum(gaps["base"]) / 3 + 0.5  # the true tag beats a wrong one after training
    # untrained "mean" rows differ only by their 10 % noise, so the base barely tells tags apart (max |gap|:
    # 0.20 on the English-only tiny base, 0.46 on the bilingual one, whose mean row lies among the CJK rows)
    assert max(abs(g) for g in gaps["base"]) < 0.5
    assert report["details"]["free"] is None and report["overall"]["mean_hit_rate"] is None
    assert "mean hit_rate >= 0.5" in report["acceptance"]["not_measured"]
    assert not (tmp_path / "report" / "reliance.png").exists() and (tmp_path / "report" / "report.json").is_file()


def test_sampling_is_reproducible_with_a_seed(eval_data):
    from tagtune.evaluate import FreeRunSettings, load_models
    from tagtune.evaluate.freerun import generate, make_prompts
    from tagtune.evaluate.prepared import split_items

    model_dir, data_dir = eval_data
    tuned, _, _, space_id = load_models(model_dir)
    items = [it for it in split_items(data_dir, "val") if it["has_tag"]][:2]
    prompts = make_prompts(items, [], set(tuned.tag_ids.values()), space_id)
    settings = FreeRunSettings(batch_size=4)
    a, b = generate(tuned, prompts, items, settings, 5), generate(tuned, prompts, items, settings, 5)
    c = generate(tuned, prompts, items, settings, 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))
    assert max(len(x) for x in a) <= int(1.5 * max(len(it["codes"]) for it in items)) + 8


def test_tag_guidance_guides_the_tagged_prompts_only(eval_data):
    """With tag guidance the tagged prompts decode otherwise and their tag-free twins exactly as before."""
    from tagtune.evaluate import FreeRunSettings, load_models
    from tagtune.evaluate.freerun import generate, make_prompts
    from tagtune.evaluate.prepared import split_items

    model_dir, data_dir = eval_data
    tuned, _, _, space_id = load_models(model_dir)
    items = [it for it in split_items(data_dir, "val") if it["has_tag"]][:3]
    prompts = make_prompts(items, [], set(tuned.tag_ids.values()), space_id)
    plain = generate(tuned, prompts, items, FreeRunSettings(batch_size=8, top_k=1), 5)  # greedy-like: top-k 1
    guided = generate(tuned, prompts, items, FreeRunSettings(batch_size=8, top_k=1, tag_guidance=4.0), 5)
    same = [torch.equal(a, b) for a, b in zip(plain, guided, strict=True)]
    assert all(s for s, p in zip(same, prompts, strict=True) if not p.tagged)  # the twins decode as before
    assert not all(s for s, p in zip(same, prompts, strict=True) if p.tagged)  # guidance moved the tagged ones
    with pytest.raises(ValueError, match="tag_guidance must be in"):
        FreeRunSettings(tag_guidance=0.0)
    with pytest.raises(ValueError, match="anchor_share must be in"):
        FreeRunSettings(anchor_share=1.5)
    with pytest.raises(ValueError, match="needs base_anchor"):  # a share of nothing
        FreeRunSettings(anchor_share=0.5)
    assert FreeRunSettings(anchor_share=0.5, base_anchor=True).generation_config(10).anchor_share == 0.5


def test_anchored_to_the_base_tag_free_prompts_decode_as_the_base(eval_data, shipped_base):
    """Anchored, the tuned model's tag-free prompts give exactly the base's codes, and its tagged ones do not."""
    from tagtune.evaluate import EvaluationError, FreeRunSettings, load_models
    from tagtune.evaluate.freerun import anchor_for, generate, make_prompts
    from tagtune.evaluate.prepared import split_items

    model_dir, data_dir = eval_data
    tuned, base, _, space_id = load_models(model_dir, shipped_base)
    with torch.no_grad():  # a tuned model that speaks otherwise than its base
        for block in tuned.gpt.gpt.h:
            block.mlp.c_proj.weight.mul_(1.5)
    items = [it for it in split_items(data_dir, "val") if it["has_tag"]][:3]
    prompts = make_prompts(items, [], set(tuned.tag_ids.values()), space_id)
    settings = FreeRunSettings(batch_size=8, base_anchor=True)
    anchor = anchor_for(tuned, [tuned, base], settings)
    assert anchor is base and anchor_for(base, [tuned, base], settings) is None
    anchored = generate(tuned, prompts, items, settings, 5, anchor=anchor)
    alone, by_base = (generate(m, prompts, items, FreeRunSettings(batch_size=8), 5) for m in (tuned, base))
    free = [k for k, p in enumerate(prompts) if not p.tagged]
    assert all(torch.equal(anchored[k], by_base[k]) for k in free)
    assert not all(torch.equal(alone[k], by_base[k]) for k in free)  # the tuned model alone speaks otherwise
    assert not all(torch.equal(anchored[k], by_base[k]) for k, p in enumerate(prompts) if p.tagged)
    # a share of the tuned model's own scores in the start moves the tagged prompts only
    shared = generate(tuned, prompts, items, dataclasses.replace(settings, anchor_share=0.5), 5, anchor=anchor)
    assert all(torch.equal(shared[k], by_base[k]) for k in free)
    assert not all(torch.equal(shared[k], anchored[k]) for k, p in enumerate(prompts) if p.tagged)
    with pytest.raises(EvaluationError, match="needs the base model"):
        anchor_for(tuned, [tuned], settings)


def test_bad_inputs_are_explained(eval_data, shipped_base, tmp_path):
    from tagtune.evaluate import EvaluationError, evaluate

    model_dir, data_dir = eval_data
    with pytest.raises(EvaluationError, match="needs its base"):
        evaluate(None, data_dir, tmp_path, adapter=tmp_path)
    with pytest.raises(EvaluationError, match="no tags.json"):
        evaluate(shipped_base, data_dir, tmp_path)
    with pytest.raises(EvaluationError, match="run `tagtune prepare` first"):
        evaluate(model_dir, tmp_path / "nothing", tmp_path)
    with pytest.raises(EvaluationError, match="anchored to the base needs the base model"):
        evaluate(model_dir, data_dir, tmp_path, base_anchor=True)


def test_corpus_keeps_every_clip_with_its_event_boundaries(eval_data, shipped_base):
    from tagtune.checkpoint import read_config
    from tagtune.data import PreparedDataset

    _, data_dir = eval_data
    vocab = read_config(shipped_base).gpt.number_text_tokens  # tag ids start here
    every = PreparedDataset(data_dir, "all")
    assert len(every) == N_CLIPS  # nothing rejected: all clips fit 60 codes
    tagged = [every[i] for i in range(len(every)) if every[i]["has_tag"]]
    assert len(tagged) == N_CLIPS - N_CLIPS // 3
    for item in tagged:
        (event,) = item["events"]
        assert 0 < event["start_sample"] < event["end_sample"] <= item["wav_len"]
        assert f"<{event['tag']}>" in item["tags"] and sum(int(i) >= vocab for i in item["text_ids"]) == 1
    val = PreparedDataset(data_dir, "val")
    assert {t for i in range(len(val)) for t in val[i]["tags"]} == set(TAGS)
