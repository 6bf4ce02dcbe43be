"""`tagtune train` on data prepared for an IndexTTS-2 base (the tiny v2 fixture): the shared loop through
``train.family.FamilyV2`` — LoRA and the tag rows train, the conditioning and emotion branches stay frozen unless
``lora.train_conditioning``, validation scores the v2 forward, the neutral tag-row fit reads the 34-position
prefix, and a run killed mid-way resumes exactly.

The corpus is test_v2_prepare's nine built-in babble clips with two held out for validation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tagtune.errors import UserError
from test_v2_prepare import _corpus
from train_fixtures import write_launcher
from v2_fixture import V2_CHECKPOINT, require_v2

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
TAG_ID = 224  # the fixture's vocabulary has 224 pieces: <giggles> gets the next id
RECIPE = {
    "seed": 5,
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.1, "tag_init": "neutral", "neutral_steps": 3},
    "optim": {"lr": 1e-2},
    "batch": {"batch_size": 2, "grad_accum": 1},
    "schedule": {"max_steps": 4, "warmup_steps": 1},
    "model": {"dropout": 0.1},  # the RNG state must be restored on resume too
    "eval": {"every_steps": 1, "save_every_steps": 2, "keep_last": 3},
    # fp32: the step-0 validation loss is checked against a hand-scored fp32 forward to 1e-5, finer than bf16
    # rounds (bf16 training is the default on CPUs with native bf16; test_train_bf16 bounds its loss)
    "runtime": {"log_every_steps": 1, "progress_bar": False, "report_to": "none", "precision": "fp32"},
}


@pytest.fixture(scope="module")
def v2_data(tmp_path_factory) -> Path:
    from tagtune.data.for_model import prepare_for_model

    require_v2()
    root = tmp_path_factory.mktemp("v2loop")
    prepare_for_model(V2_CHECKPOINT, str(_corpus(root / "corpus")), root / "data", device="cpu", progress=False,
                      shard_size=4, val_fraction=0.25, seed=1)
    return root / "data"


def _launch(data: Path, out: Path, recipe: dict, resume: bool, kill_at: int) -> subprocess.CompletedProcess:
    script = write_launcher(out.parent)
    args = [sys.executable, str(script), str(data), str(out), json.dumps(recipe), "1" if resume else "0",
            str(kill_at)]
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def v2_run(v2_data, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run in its own process (one thread, as the resumed run below)."""
    out = tmp_path_factory.mktemp("v2run") / "run"
    proc = _launch(v2_data, out, RECIPE, resume=False, kill_at=-1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_open_data_reads_v2_data_and_fingerprints_the_v2_base(v2_data):
    from tagtune.checkpoint import folder_fingerprint
    from tagtune.data.dataset import PreparedDatasetV2
    from tagtune.train.data import open_data
    from tagtune.train.family import FamilyV2, family_of

    data = open_data(v2_data)
    assert data.family == "v2" and isinstance(family_of(data), FamilyV2)
    assert isinstance(data.train, PreparedDatasetV2) and isinstance(data.val, PreparedDatasetV2)
    assert data.base_fingerprint == folder_fingerprint(V2_CHECKPOINT)
    assert data.tagset.token_ids == {"<giggles>": TAG_ID}
    # 7 training clips, 2 held out; the lone tagged clip of speaker C has no emotion clip and is left out
    assert (len(data.train), len(data.val)) == (6, 2)
    assert {data.val[i]["has_tag"] for i in range(2)} == {True, False}


def test_v2_run_lowers_the_loss_and_saves_lora_and_tag_rows_only(v2_run):
    from tagtune.checkpoint import read_model_config
    from tagtune.lora import PEFT_PREFIX

    records = _records(v2_run)
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [0, 1, 2, 3, 4]
    assert val[-1]["loss"] < 0.9 * val[0]["loss"] and val[-1]["loss_tag/<giggles>"] is not None
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    layers = read_model_config(V2_CHECKPOINT).gpt.layers
    assert set(_adapter(v2_run / "last")) == {PEFT_PREFIX + k for k in {
        "text_embedding.token_adapter.trainable_tokens_delta", "text_head.weight", "text_head.bias"} | {
        f"gpt.h.{i}.{m}.lora_{ab}.weight" for i in range(layers) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                          "mlp.c_proj") for ab in "AB"}}
    info = json.loads((v2_run / "run.json").read_text())
    assert info["new_token_ids"] == [TAG_ID] and info["number_text_tokens"] == TAG_ID + 1
    assert sorted(p.name for p in (v2_run / "checkpoints").iterdir()) == ["LATEST", "step-000002", "step-000003",
                                                                    "step-000004"]  # saved at each validation


def test_validation_is_the_v2_teacher_forced_loss_of_the_start(v2_run, v2_data):
    """The step-0 record is the grown base with the run's start rows, scored clip by clip by hand."""
    from tagtune.data.dataset import PreparedDatasetV2
    from tagtune.models.v2.objective import RowLossesV2, collate_v2
    from tagtune.tags.rows import TagInit, grow_base
    from tagtune.train.config import LossSettings
    from tagtune.train.loss import combine

    gpt, _, _ = grow_base(V2_CHECKPOINT, ["<giggles>"], TagInit("mean", 0, rows_file=v2_run / "tag_init.safetensors"))
    val = PreparedDatasetV2(v2_data, "val")
    with torch.no_grad():
        losses = [RowLossesV2(gpt)(collate_v2([val[i]], gpt.cfg)) for i in range(len(val))]
    per_clip = [float(combine(t, c, LossSettings())[0]) for t, c in losses]  # text CE x 0.1 + code CE
    first = _records(v2_run)[0]
    assert first["loss"] == pytest.approx(sum(per_clip) / 2, rel=1e-5)
    untagged = [x for i, x in enumerate(per_clip) if not val[i]["has_tag"]]
    assert first["loss_untagged"] == pytest.approx(untagged[0], rel=1e-5)


def test_the_neutral_tag_row_is_fitted_on_the_v2_prefix(v2_run):
    with safe_open(str(v2_run / "tag_init.safetensors"), "pt") as f:
        meta = f.metadata()
    report = json.loads(meta["report"])
    assert meta["init"] == "neutral" and report["steps"] == 3 and report["clips"] == 2  # the untagged training clips
    assert report["kl_per_code_after"] < report["kl_per_code_before"]


def test_resume_after_sigkill_equals_uninterrupted_run(v2_run, v2_data, tmp_path):
    out = tmp_path / "killed"
    killed = _launch(v2_data, out, RECIPE, resume=False, kill_at=3)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL at step 3: the last checkpoint is step 2
    assert (out / "checkpoints" / "LATEST").read_text() == "step-000002" and not (out / "last").exists()
    resumed = _launch(v2_data, out, RECIPE, resume=True, kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _adapter(v2_run / "last"), _adapter(out / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _records(out)] == [r["step"] for r in _records(v2_run)]
    losses = lambda d: [r["loss"] for r in _records(d) if r["kind"] == "train"]  # noqa: E731
    assert losses(out) == losses(v2_run)


def test_train_conditioning_trains_the_speaker_and_emotion_branches(v2_data, tmp_path):
    from tagtune.checkpoint import read_state_dict
    from tagtune.lora import PEFT_PREFIX
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    recipe = json.loads(json.dumps(RECIPE))
    recipe["lora"] |= {"train_conditioning": True, "tag_init": "mean", "dropout": 0.0}
    recipe["schedule"]["max_steps"] = 1
    recipe["runtime"]["precision"] = "auto"  # the device default: bf16 autocast on a CPU with native bf16
    train(v2_data, tmp_path / "run", TrainConfig.from_dict(recipe))
    saved = {k.removeprefix(PEFT_PREFIX).split(".")[0] for k in _adapter(tmp_path / "run" / "last")}
    assert saved == {"gpt", "text_embedding", "text_head", "conditioning_encoder", "perceiver_encoder",
                     "emo_conditioning_encoder", "emo_perceiver_encoder", "emovec_layer", "emo_layer"}
    base = read_state_dict(V2_CHECKPOINT / "gpt.pth", "model")["emo_layer.weight"]
    trained = _adapter(tmp_path / "run" / "last")[PEFT_PREFIX + "emo_layer.weight"]
    assert not torch.equal(trained, base)  # the emotion branch moved in one step


def test_conditioning_modules_of_each_family(shipped_base):
    from tagtune.checkpoint import build_gpt, read_model_config
    from tagtune.lora import LoraSpec, conditioning_modules, lora_config

    require_v2()
    v1 = conditioning_modules(build_gpt(read_model_config(shipped_base).gpt))
    assert v1 == ("conditioning_encoder", "perceiver_encoder")
    assert lora_config(LoraSpec(train_conditioning=True), [5], v1).modules_to_save == ["text_head", *v1]
    assert conditioning_modules(build_gpt(read_model_config(V2_CHECKPOINT).gpt)) == v1 + (
        "emo_conditioning_encoder", "emo_perceiver_encoder", "emovec_layer", "emo_layer")


def test_replay_of_1x_data_is_refused_for_v2_data(v2_data, tiny_data, tmp_path):
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    recipe = json.loads(json.dumps(RECIPE)) | {"replay": {"data": str(tiny_data)}}
    with pytest.raises(UserError, match="prepared for IndexTTS 1.x, the fine-tune data .* for IndexTTS-2"):
        train(v2_data, tmp_path / "run", TrainConfig.from_dict(recipe))
    assert not (tmp_path / "run").exists()
