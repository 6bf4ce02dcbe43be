"""The quality bar for reduced-precision decoding: KL, NLL change and top-1 agreement against fp32."""

from __future__ import annotations

import math

import pytest
import torch

from tagtune.checkpoint import load_gpt
from tagtune.evaluate.quality import (
    MAX_KL_NATS,
    MAX_NLL_CHANGE,
    Quality,
    compare_logits,
    teacher_forced_quality,
    teacher_forced_quality_over,
)
from tagtune.synthesis.fast_gpt import prepare_gpt


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_known_distributions():
    p = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]
    q = [[0.2, 0.5, 0.3], [0.25, 0.25, 0.5]]
    targets = torch.tensor([0, 2])
    logp, logq = torch.tensor(p, dtype=torch.double).log(), torch.tensor(q, dtype=torch.double).log()
    got = compare_logits(logp, logq + 3.0, targets)  # a shift of the logits changes nothing
    assert got.positions == 2
    assert got.kl == pytest.approx((_kl(p[0], q[0]) + 0.0) / 2, rel=1e-9)
    assert got.nll_reference == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2, rel=1e-9)
    assert got.nll_candidate == pytest.approx(-(math.log(0.2) + math.log(0.5)) / 2, rel=1e-9)
    assert got.top1_agreement == 0.5  # row 0: 0 vs 1; row 1: both 2
    assert not got.passes and got.nll_change > 0


def test_kl_is_zero_only_for_equal_distributions():
    logits = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 8, (50,))
    same = compare_logits(logits, logits.clone(), targets)
    assert same.kl == 0.0 and same.nll_change == 0.0 and same.top1_agreement == 1.0 and same.passes
    nudged = compare_logits(logits, logits + 0.01 * torch.randn(50, 8), targets)
    assert 0.0 < nudged.kl < MAX_KL_NATS


def test_bar_is_on_kl_and_nll():
    at_bar = Quality(kl=MAX_KL_NATS, nll_reference=2.0, nll_candidate=2.0 * (1 + MAX_NLL_CHANGE),
                     top1_agreement=0.5, positions=10)
    assert at_bar.passes  # top-1 agreement is reported, not required
    assert not Quality(MAX_KL_NATS * 1.5, 2.0, 2.0, 1.0, 10).passes
    assert not Quality(0.0, 2.0, 2.0 * (1 - 2 * MAX_NLL_CHANGE), 1.0, 10).passes
    assert "fails" in Quality(1.0, 2.0, 2.0, 1.0, 10).summary()


@pytest.fixture(scope="module")
def gpt(shipped_base):
    return load_gpt(shipped_base)


def _prompt(base_inputs):
    return base_inputs["conds"], base_inputs["latent_text_ids"], base_inputs["latent_codes"]


def test_fp32_against_itself_is_exact(gpt, base_inputs):
    q = teacher_forced_quality(gpt, gpt, *_prompt(base_inputs))
    assert q["kl"] == 0.0 and q["nll_candidate"] == q["nll_reference"] and q["top1_agreement"] == 1.0
    assert q["positions"] == base_inputs["latent_codes"].shape[1] + 2  # codes, stop, stop


def test_int8_differs_and_meets_the_bar_on_the_shipped_base(gpt, base_inputs):
    q = teacher_forced_quality(gpt, prepare_gpt(gpt, "int8"), *_prompt(base_inputs))
    assert q["kl"] > 0.0 and q["nll_candidate"] != q["nll_reference"]
    assert q["passes"], q


def test_pooled_over_prompts_weights_by_codes(gpt, base_inputs):
    conds, text, codes = _prompt(base_inputs)
    int8 = prepare_gpt(gpt, "int8")
    parts = [(conds, text, codes[:, :10]), (conds, text, codes[:, 10:])]
    pooled = teacher_forced_quality_over(gpt, int8, parts)
    each = [teacher_forced_quality_over(gpt, int8, [p]) for p in parts]
    assert pooled.positions == sum(e.positions for e in each) == codes.shape[1] + 4
    expected = sum(e.kl * e.positions for e in each) / pooled.positions
    assert pooled.kl == pytest.approx(expected, rel=1e-9)
