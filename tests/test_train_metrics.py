"""Forgetting guard, metric files and the run-folder checkpoint mechanics (no training)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tagtune.checkpoint import CheckpointError
from tagtune.train import state as ts
from tagtune.train.config import TrainConfig
from tagtune.train.loop import _scheduler, _warn_forgetting
from tagtune.train.metrics import MetricsLog, forgetting


def test_forgetting_percent_and_warning(caplog):
    assert forgetting(2.2, 2.0) == pytest.approx(10.0)
    assert forgetting(None, 2.0) is None and forgetting(2.0, None) is None
    with caplog.at_level(logging.WARNING):
        _warn_forgetting(4.9, 5.0, step=10)
        assert not caplog.records
        _warn_forgetting(10.0, 5.0, step=20)
    assert "step 20: untagged validation loss is 10.0% worse" in caplog.text


def test_metrics_files_and_truncation_on_resume(tmp_path):
    log = MetricsLog(tmp_path, True, None)
    for step in (1, 2, 3):
        log.add("train", step, {"loss": 3.0 - step, "lr": 1e-4})
    log.add("val", 3, {"loss": 1.5, "loss_tag/<laughs>": None})
    log.close()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "kind,step,loss,lr,loss_tag/<laughs>" and len(rows) == 5
    resumed = MetricsLog(tmp_path, True, resume_step=2)  # lines of steps 3+ are replayed by the resumed run
    assert [r["step"] for r in resumed.records] == [1, 2]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig.from_dict({"schedule": {"warmup_steps": 4, "min_lr_ratio": 0.1}})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _scheduler(opt, cfg, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] > 0.1


def test_checkpoint_state_round_trip_and_latest_pointer(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    sched = _scheduler(opt, TrainConfig(), total_steps=10)
    progress = ts.Progress(step=7, epoch=1, batch_in_epoch=2, best_val_loss=1.25, best_step=5, kept=[7])
    assert ts.latest_checkpoint(tmp_path) is None
    staged = ts.staging_dir(tmp_path, 7)
    ts.write_rng(staged, 0)
    ts.write_state(staged, {"w": p.detach().clone()}, opt, sched, progress)
    ts.publish(tmp_path, 7)
    folder = ts.latest_checkpoint(tmp_path)
    assert folder.name == "step-000007" and not staged.exists()
    ckpt = ts.read_checkpoint(folder, 0)
    assert ckpt.progress == progress and torch.equal(ckpt.trainable["w"], p.detach())
    assert torch.equal(ckpt.optimizer["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert json.loads((folder / "state.json").read_text())["scheduler"]["last_epoch"] == 0
    assert set(ckpt.rng) == {"cpu"} and torch.equal(ckpt.rng["cpu"], torch.get_rng_state())  # written on a CPU
    with pytest.raises(CheckpointError, match="rng-1.safetensors: missing .*same number of processes"):
        ts.read_checkpoint(folder, 1)


def _draws(device="cpu") -> torch.Tensor:
    """What dropout would draw next on ``device``."""
    return torch.rand(8, device=device)


def test_rng_states_round_trip_through_a_checkpoint_file(tmp_path):
    torch.manual_seed(3)
    ts.write_rng(tmp_path, 0, "cpu")
    expected = _draws()
    _draws()  # the run goes on, then is killed; the resumed run restores the saved state
    from tagtune.checkpoint import read_state_dict

    ts.set_rng_state(read_state_dict(tmp_path / "rng-0.safetensors"), "cpu")
    assert torch.equal(_draws(), expected)


class _FakeCudaGenerator:
    """torch.cuda's RNG calls on a machine without a GPU: a state that set_rng_state puts back."""

    def __init__(self):
        self.state = torch.arange(16, dtype=torch.uint8)
        self.set_calls: list[tuple[torch.Tensor, torch.device]] = []

    def get_rng_state(self, device):
        assert torch.device(device).type == "cuda"
        return self.state.clone()

    def set_rng_state(self, state, device):
        self.set_calls.append((state.clone(), torch.device(device)))


def test_cuda_rng_state_is_saved_and_restored_beside_the_cpu_one(tmp_path, monkeypatch, caplog):
    fake = _FakeCudaGenerator()
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    from tagtune.checkpoint import read_state_dict

    ts.write_rng(tmp_path, 1, torch.device("cuda", 1))
    saved = read_state_dict(tmp_path / "rng-1.safetensors")
    assert set(saved) == {"cpu", "cuda"} and torch.equal(saved["cuda"], fake.state)
    ts.set_rng_state(saved, torch.device("cuda", 1))
    assert len(fake.set_calls) == 1 and torch.equal(fake.set_calls[0][0], fake.state)
    assert fake.set_calls[0][1] == torch.device("cuda", 1)
    with caplog.at_level(logging.WARNING):
        ts.set_rng_state(saved, "cpu")  # a GPU checkpoint resumed without a GPU: not exact, and said so
        assert "dropout differs" in caplog.text and len(fake.set_calls) == 1
        caplog.clear()
        ts.set_rng_state({"cpu": saved["cpu"]}, torch.device("cuda", 0))
        assert "dropout differs" in caplog.text and len(fake.set_calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the generator dropout uses there)")
def test_cuda_rng_round_trip_on_a_gpu(tmp_path):
    from tagtune.checkpoint import read_state_dict

    torch.cuda.manual_seed(5)
    ts.write_rng(tmp_path, 0, "cuda")
    expected = _draws("cuda")
    _draws("cuda")
    ts.set_rng_state(read_state_dict(tmp_path / "rng-0.safetensors"), "cuda")
    assert torch.equal(_draws("cuda"), expected)
