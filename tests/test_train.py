"""End-to-end training on the shipped tiny base and a corpus prepared by the real pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import N_CLIPS, RUN_CONFIG, TAGS, write_launcher

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_few_steps_lower_the_loss(trained_run):
    run_dir, result = trained_run
    train_losses = [r["loss"] for r in _records(run_dir) if r["kind"] == "train"]
    assert len(train_losses) == 8 and result.steps == 8
    assert train_losses[-1] < 0.75 * train_losses[0]
    assert result.best_val_loss < 0.75 * _records(run_dir)[0]["loss"]  # step-0 record = base model
    assert result.base_untagged_loss == pytest.approx(_records(run_dir)[0]["loss_untagged"])
    assert set(result.last_val) >= {"loss_untagged", "loss_tagged", "loss_tag/<laughs>", "loss_tag/<sighs>"}


def _vocab(base_dir: Path) -> int:
    """The base tokenizer's size: the tags get the ids right after it."""
    from tagtune.checkpoint import read_config

    return read_config(base_dir).gpt.number_text_tokens


def test_run_dir_describes_itself(trained_run, tiny_data, shipped_base):
    from tagtune.checkpoint import folder_fingerprint

    run_dir, result = trained_run
    names = {p.name for p in run_dir.iterdir()}
    assert names >= {"run.json", "train_config.yaml", "bpe.model", "tags.json", "checkpoints", "best", "last",
                     "metrics.jsonl", "metrics.csv", "loss_curve.png"}
    info, vocab = json.loads((run_dir / "run.json").read_text()), _vocab(shipped_base)
    assert info["base"]["fingerprint"] == folder_fingerprint(shipped_base)
    assert info["tag_names"] == ["<laughs>", "<sighs>"] and info["new_token_ids"] == [vocab, vocab + 1]
    assert info["number_text_tokens"] == vocab + 2 and info["processes"] == 1
    assert set(info["versions"]) >= {"torch", "peft", "accelerate", "tagtune"}
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["LATEST", "step-000004", "step-000008"]
    assert (run_dir / "checkpoints" / "LATEST").read_text() == "step-000008"
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"kind", "step", "loss", "loss_tagged", "loss_untagged", "positions_per_s"} <= set(header)
    assert (run_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_reach_tensorboard_through_accelerate(trained_run):
    pytest.importorskip("tensorboard", reason="TensorBoard is the tensorboard extra (in dev)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = trained_run
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # the run's "auto" tracker
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for kind, key in (("train", "loss"), ("val", "loss_untagged"), ("train", "lr")):
        logged = [(e.step, e.value) for e in events.Scalars(f"{kind}/{key}")]
        written = [(r["step"], r[key]) for r in _records(run_dir) if r["kind"] == kind]
        assert [s for s, _ in logged] == [s for s, _ in written] and len(logged) >= 2
        assert [v for _, v in logged] == pytest.approx([v for _, v in written], rel=1e-6)  # float32 in events


def test_only_adapters_and_tag_rows_are_saved(trained_run, shipped_base):
    from tagtune.checkpoint import read_config
    from tagtune.lora import PEFT_PREFIX

    run_dir, result = trained_run
    keys, layers, vocab = set(_adapter(run_dir / "best")), read_config(shipped_base).gpt.layers, _vocab(shipped_base)
    assert keys == {PEFT_PREFIX + k for k in {
        "text_embedding.token_adapter.trainable_tokens_delta", "text_head.weight", "text_head.bias"} | {
        f"gpt.h.{i}.{m}.lora_{ab}.weight" for i in range(layers) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                          "mlp.c_proj") for ab in "AB"}}
    meta = json.loads((run_dir / "best" / "tagtune_adapter.json").read_text())
    assert meta["step"] == result.best_step and meta["new_token_ids"] == [vocab, vocab + 1]
    for folder in ("best", "last", "checkpoints/step-000008/weights"):  # each names the base: stock PEFT finds it
        config = json.loads((run_dir / folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(shipped_base.resolve()), folder


def _launch(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_data, tmp_path):
    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["model"]["dropout"], cfg["lora"]["dropout"] = 0.1, 0.1  # RNG state must be restored too
    cfg["eval"] |= {"every_steps": 1, "save_every_steps": 2, "keep_last": 3}
    script, c = write_launcher(tmp_path), json.dumps(cfg)
    full = _launch([sys.executable, str(script), str(tiny_data), str(tmp_path / "a"), c, "0", "-1"])
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _launch([sys.executable, str(script), str(tiny_data), str(tmp_path / "b"), c, "0", "5"])
    assert killed.returncode == -9  # SIGKILL at step 5: the last complete checkpoint is step 4
    assert (tmp_path / "b" / "checkpoints" / "LATEST").read_text() == "step-000004"
    assert not (tmp_path / "b" / "last").exists()
    resumed = _launch([sys.executable, str(script), str(tiny_data), str(tmp_path / "b"), c, "1", "-1"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _adapter(tmp_path / "a" / "last"), _adapter(tmp_path / "b" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps_a = [r["step"] for r in _records(tmp_path / "a")]
    assert [r["step"] for r in _records(tmp_path / "b")] == steps_a  # replayed lines were not duplicated
    losses = lambda d: [r["loss"] for r in _records(d) if r["kind"] == "train"]  # noqa: E731
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_two_processes_on_cpu_match_one_process(tiny_data, tmp_path):
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    # fp32 on both sides: bf16 (the default on some CPUs) rounds a batch of 2 and a batch of 4 differently
    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["runtime"]["precision"] = "fp32"
    train(tiny_data, tmp_path / "one", TrainConfig.from_dict(cfg))
    cfg["batch"]["batch_size"] = 2  # 2 processes x 2 clips = the single run's global batch of 4
    script, out = write_launcher(tmp_path), tmp_path / "ddp"
    proc = _launch([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    str(script), str(tiny_data), str(out), json.dumps(cfg), "0", "-1"], timeout=400)
    assert (out / "last").is_dir(), proc.stderr[-3000:]  # a rank may rarely abort at exit: check outputs
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2
    assert {p.name for p in (out / "checkpoints" / "step-000008").glob("rng-*")} == {"rng-0.safetensors",
                                                                                      "rng-1.safetensors"}
    single, ddp = _adapter(tmp_path / "one" / "last"), _adapter(out / "last")
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4, msg=k)
    moved = max(float(single[k].abs().max()) for k in single if "lora_B" in k)
    assert moved > 1e-3  # the comparison is not between two untouched adapters


def test_corpus_has_tagged_and_untagged_clips_in_both_splits(tiny_data, shipped_base):
    from tagtune.checkpoint import read_config
    from tagtune.train.data import open_data

    data, cfg = open_data(tiny_data), read_config(shipped_base)
    vocab = cfg.gpt.number_text_tokens
    assert data.tag_names == TAGS
    assert data.tagset.token_ids == {"<laughs>": vocab, "<sighs>": vocab + 1}
    for split in (data.train, data.val):
        flags = [split[i]["has_tag"] for i in range(len(split))]
        assert any(flags) and not all(flags)
    assert len(data.train) + len(data.val) == N_CLIPS
    example = data.train[0]
    assert example["cond_mel"].shape[0] == 100 and example["codes"].max() < cfg.vqvae.num_tokens


# --------------------------------------------------------------------------------- a trained run


def test_two_processes_hold_the_base_in_bf16_as_one_would(tiny_data, tmp_path):
    """Two processes under bf16 autocast (gloo on a CPU) with the frozen base held in bf16 train bit for bit as
    with it held in fp32: the bf16 weights survive DDP's start-up broadcast and round as autocast would."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    script = write_launcher(tmp_path)
    adapters = {}
    for held in ("bf16", "fp32"):
        cfg = json.loads(json.dumps(RUN_CONFIG))
        cfg["batch"]["batch_size"] = 2
        cfg["runtime"] |= {"precision": "bf16", "base_weights": held}
        out = tmp_path / held
        proc = _launch([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
                        "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
                        str(script), str(tiny_data), str(out), json.dumps(cfg), "0", "-1"], timeout=400)
        assert (out / "last").is_dir(), proc.stderr[-3000:]
        assert json.loads((out / "run.json").read_text())["processes"] == 2
        assert ("frozen base blocks held in bf16" in proc.stderr) == (held == "bf16")
        adapters[held] = _adapter(out / "last")
    a, b = adapters["bf16"], adapters["fp32"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-3  # the adapters did train
