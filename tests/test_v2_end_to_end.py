"""IndexTTS-2 end to end through the command line, as a user runs it on the tiny v2 fixture: `prepare` a few
built-in babble clips, `tags add`, `train` a few steps, `export` (merged and adapter), `synth` with the export.

The exported folder must load strictly into our UnifiedVoiceV2 with the grown rows and give the logits of the
run's adapter applied to its base; the adapter export must speak exactly as the merged one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtune.cli import main
from test_v2_export import _assert_same_logits
from test_v2_prepare import _corpus
from v2_fixture import V2_CHECKPOINT, V2_FIXTURE, require_v2

TAG_ID = 224  # the fixture's 224 pieces, then the tag
TEXT = "Well <giggles> that is funny."
SYNTH = ["--greedy", "--max-new-tokens", "20", "--precision", "fp32", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict[str, Path]:
    """Every folder the commands wrote, by name."""
    require_v2()
    root = tmp_path_factory.mktemp("v2e2e")
    listing = _corpus(root / "corpus")
    p = {name: root / name for name in ("data", "tagged", "run", "model", "adapter")}
    steps = [
        ["prepare", "--model", str(V2_CHECKPOINT), "--data", str(listing), "--out", str(p["data"]), "--tags",
         "<giggles>", "--val-fraction", "0.25", "--seed", "1", "--shard-size", "4", "--device", "cpu"],
        ["tags", "add", "--model", str(V2_CHECKPOINT), "--tags", "<giggles>", "--out", str(p["tagged"])],
        ["train", "--data", str(p["data"]), "--out", str(p["run"]), "--max-steps", "3", "--batch-size", "2",
         "--lr", "1e-2", "--rank", "4", "--device", "cpu", "--report-to", "none", "--set", "batch.grad_accum=1",
         "--set", "schedule.warmup_steps=1", "--set", "eval.every_steps=3", "--set", "model.dropout=0"],
        ["export", "--run", str(p["run"]), "--out", str(p["model"])],
        ["export", "--run", str(p["run"]), "--out", str(p["adapter"]), "--adapter-only"],
    ]
    for args in steps:
        assert main(["--no-progress", *args]) == 0, args
    p["ref"] = V2_FIXTURE / "inputs" / "ref_a_24k.wav"  # the corpus clips are under the 1 s a reference needs
    return p


def _synth(model: Path, out: Path, ref: Path, *extra: str) -> tuple[np.ndarray, int]:
    assert main(["--no-progress", "synth", "--model", str(model), *extra, "--ref", str(ref), "--text", TEXT,
                 "--out", str(out), *SYNTH]) == 0
    return sf.read(out, dtype="int16")


def test_the_run_trained_on_v2_data(flow):
    info = json.loads((flow["run"] / "run.json").read_text())
    assert info["new_token_ids"] == [TAG_ID] and info["base"]["dir"] == str(V2_CHECKPOINT.resolve())
    records = [json.loads(x) for x in (flow["run"] / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 3] and val[1]["loss"] < val[0]["loss"]


def test_export_loads_strictly_with_the_run_adapters_logits(flow):
    from tagtune.loaders import LoadedModelV2, load_adapter_model, load_model

    m = load_model(flow["model"])
    assert isinstance(m, LoadedModelV2) and m.config.gpt.number_text_tokens == TAG_ID + 1
    m.check_vocabulary()
    assert m.tokenizer.encode(TEXT).count(TAG_ID) == 1
    tagged = load_model(flow["tagged"])  # `tags add` gave the same tag the same id
    assert tagged.tokenizer.encode(TEXT) == m.tokenizer.encode(TEXT)
    tuned, _ = load_adapter_model(V2_CHECKPOINT, flow["run"] / "best")
    _assert_same_logits(m.gpt, tuned)  # loaded strictly (load_into names any bad key)
    moved = (m.gpt.text_embedding.weight[TAG_ID] - tagged.gpt.text_embedding.weight[TAG_ID]).abs().max()
    assert moved > 1e-3  # the tag row trained away from the `tags add` start (the same "mean" formula)
    assert torch.equal(m.gpt.text_embedding.weight[:TAG_ID], tagged.gpt.text_embedding.weight[:TAG_ID])


def test_synth_speaks_with_the_export_and_the_adapter(flow, tmp_path):
    audio, rate = _synth(flow["model"], tmp_path / "merged.wav", flow["ref"])
    assert rate == 22050 and audio.ndim == 1 and len(audio) > 0 and np.abs(audio).max() > 0
    adapter, _ = _synth(V2_CHECKPOINT, tmp_path / "adapter.wav", flow["ref"], "--adapter", str(flow["adapter"]))
    assert np.array_equal(adapter, audio)  # the adapter merged in memory is the exported gpt.pth
    untrained, _ = _synth(flow["tagged"], tmp_path / "untrained.wav", flow["ref"])
    assert not np.array_equal(untrained, audio)  # three steps changed what the GPT says


def test_synth_with_tag_guidance_decodes_the_tagged_text_otherwise(flow, tmp_path):
    plain, _ = _synth(flow["model"], tmp_path / "plain.wav", flow["ref"], "--seed", "4")
    guided, _ = _synth(flow["model"], tmp_path / "guided.wav", flow["ref"], "--seed", "4", "--tag-guidance", "4")
    again, _ = _synth(flow["model"], tmp_path / "again.wav", flow["ref"], "--seed", "4", "--tag-guidance", "4")
    assert np.array_equal(guided, again) and not np.array_equal(guided, plain)


def test_synth_anchored_to_the_base_speaks_untagged_text_as_the_base(flow, tmp_path):
    from tagtune.generation.v2 import official_v2
    from tagtune.synthesis.tts import TTS

    anchored, _ = _synth(flow["model"], tmp_path / "anchored.wav", flow["ref"], "--base-anchor", str(V2_CHECKPOINT))
    plain, _ = _synth(flow["model"], tmp_path / "plain.wav", flow["ref"])
    assert not np.array_equal(anchored, plain)  # the tagged text starts from the base's distribution
    cfg = official_v2(do_sample=False, num_beams=1, max_new_tokens=20)
    text = "Well, that is funny."
    codes = {name: [c.tolist() for c in TTS.load(folder, precision="fp32", **extra).synthesize(
                 text, flow["ref"], generation=cfg, seed=3).codes]
             for name, folder, extra in (("base", V2_CHECKPOINT, {}), ("tuned", flow["model"], {}),
                                         ("anchored", flow["model"], {"base_anchor": V2_CHECKPOINT}))}
    assert codes["anchored"] == codes["base"] and codes["tuned"] != codes["base"]
