"""bf16 autocast training against fp32: the same 50 LoRA steps on the shipped tiny base, loss for loss.

bf16 is the training default on a CPU with native bf16 arithmetic (``tagtune.precision``); this is the loss
equality it rests on. Both runs train the tiny prepared corpus with the same seed, batches and schedule
(``train_fixtures.RUN_CONFIG``, 50 steps); bf16 runs the matmuls of the loss forward in bf16 (accelerate's
autocast), with weights, adapters, tag rows and optimizer state in fp32. The tolerance:

    every step's training loss within 1 % of fp32, their mean relative gap within 0.25 %,
    validation loss after the last step within 0.25 %

Measured (seed 11; seeds 0-2 alike): max gap 0.34 % (step 24), mean 0.069 %, last training loss 1.8281 fp32
vs 1.8290 bf16 (+0.05 %), validation loss 2.1968 vs 2.1978 (+0.05 %). A bf16 run at 1.05x the learning rate
misses it (max 1.8 %, mean 0.54 %, validation -0.51 %), and so does one whose logits are rounded to fp8
(max 22 %).
"""

from __future__ import annotations

import json

import pytest

from train_fixtures import RUN_CONFIG

pytestmark = pytest.mark.slow
STEPS = 50
MAX_STEP_GAP = 0.01  # relative, any single step
MAX_MEAN_GAP = 0.0025  # relative, averaged over the 50 steps
MAX_VAL_GAP = 0.0025  # relative, validation loss after the last step


def _losses(tiny_data, run_dir, precision: str, steps: int = STEPS, **runtime) -> tuple[list[float], float]:
    """(training loss of each step, validation loss after the last) of a ``steps``-step run in ``precision``."""
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    recipe = json.loads(json.dumps(RUN_CONFIG))
    recipe["schedule"]["max_steps"] = steps
    recipe["eval"] = {"every_steps": steps, "save_every_steps": steps, "keep_last": 1}
    recipe["runtime"] |= {"precision": precision, "report_to": "none", **runtime}
    result = train(tiny_data, run_dir, TrainConfig.from_dict(recipe))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"], result.last_val["loss"]


def _gap(ours: float, ref: float) -> float:
    return abs(ours - ref) / ref


def test_bf16_training_follows_fp32_over_50_steps(tiny_data, tmp_path):
    # one process, two precisions: the second run's Accelerator replaces the first one's mixed precision
    fp32, fp32_val = _losses(tiny_data, tmp_path / "fp32", "fp32")
    bf16, bf16_val = _losses(tiny_data, tmp_path / "bf16", "bf16")
    assert len(fp32) == len(bf16) == STEPS
    gaps = [_gap(b, a) for a, b in zip(fp32, bf16)]
    assert max(gaps) > 0  # the bf16 run did round: an fp32 run under another name would pass trivially
    worst = max(range(STEPS), key=gaps.__getitem__)
    assert gaps[worst] <= MAX_STEP_GAP, f"step {worst + 1}: bf16 {bf16[worst]:.4f} vs fp32 {fp32[worst]:.4f}"
    assert sum(gaps) / STEPS <= MAX_MEAN_GAP
    assert _gap(bf16_val, fp32_val) <= MAX_VAL_GAP, f"validation loss bf16 {bf16_val:.4f} vs fp32 {fp32_val:.4f}"
    assert fp32[-1] < 0.5 * fp32[0]  # the steps trained: the curves compared are not two flat lines


def test_a_base_held_in_bf16_trains_exactly_as_fp32_weights_under_bf16_autocast(tiny_data, tmp_path, caplog):
    """``runtime.base_weights: bf16`` (the default under bf16 autocast) rounds the frozen block matrices once,
    as autocast rounds fp32 ones at every forward: the same losses and adapters, bit for bit."""
    import logging

    from safetensors.torch import load_file

    with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
        held, held_val = _losses(tiny_data, tmp_path / "held", "bf16", 12, base_weights="bf16")
    assert "frozen base blocks held in bf16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
        plain, plain_val = _losses(tiny_data, tmp_path / "plain", "bf16", 12, base_weights="fp32")
    assert "held in bf16" not in caplog.text
    assert held == plain and held_val == plain_val
    a, b = (load_file(tmp_path / r / "last" / "adapter_model.safetensors") for r in ("held", "plain"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_base_weights_bf16_needs_bf16_autocast(tiny_data, tmp_path):
    from tagtune.train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="base_weights bf16 needs training under bf16 autocast"):
        _losses(tiny_data, tmp_path / "r", "fp32", 2, base_weights="bf16")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_held_blocks_compute_as_their_fp32_weights_would():
    """Frozen block matrices in bf16: under autocast the output is the fp32 weights' bit for bit; outside it, the
    fp32 forward of the weights rounded to bf16. Trainable layers stay fp32."""
    import copy

    import torch

    from tagtune.models.gpt2 import GPT2Backbone
    from tagtune.train.accel import HeldConv1D, hold_frozen_weights

    torch.manual_seed(0)
    gpt = GPT2Backbone(32, 2, 4).eval()
    gpt.requires_grad_(False)
    gpt.h[1].mlp.c_fc.weight.requires_grad_(True)  # a trained layer keeps its fp32 weight
    ref = copy.deepcopy(gpt)
    owner = torch.nn.Module()
    owner.gpt = gpt
    frozen = [m for m in gpt.h.modules() if type(m).__name__ == "Conv1D" and not m.weight.requires_grad]
    assert hold_frozen_weights(owner, torch.bfloat16) == 2 * sum(m.weight.numel() for m in frozen) > 0
    assert all(type(m) is HeldConv1D and m.weight.dtype == torch.bfloat16 for m in frozen)
    assert gpt.h[1].mlp.c_fc.weight.dtype == torch.float32
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(gpt(x), ref(x))
    rounded = copy.deepcopy(ref)
    for m in rounded.h.modules():
        if type(m).__name__ == "Conv1D" and not m.weight.requires_grad:
            m.weight.data = m.weight.data.bfloat16().float()
    with torch.no_grad():
        assert torch.equal(gpt(x), rounded(x)) and not torch.equal(gpt(x), ref(x))
