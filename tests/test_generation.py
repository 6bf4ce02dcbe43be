"""Generation against the official v1.5.0 outputs of the tiny fixture, plus the rules the parity rests on."""

from __future__ import annotations

import pytest
import torch
import yaml

from tagtune.config import ModelConfig
from tagtune.generation import (
    GenerationConfig,
    code_lengths,
    generate_codes,
    latents_for_vocoder,
    mel_position,
    prepare_prompt,
    remove_long_silence,
)
from tagtune.generation import sampling
from tagtune.models.unified_voice import UnifiedVoice

STOP, START = 129, 128  # the fixture's stop_mel / start_mel
MAX_NEW = 40  # max_generate_length of every fixture generation
INF = float("inf")




@pytest.fixture(scope="module")
def model(fixture_dir):
    cfg = ModelConfig.from_dict(yaml.safe_load((fixture_dir / "checkpoint" / "config.yaml").read_text()))
    gpt = UnifiedVoice(cfg.gpt)
    gpt.load_state_dict(torch.load(fixture_dir / "checkpoint" / "gpt.pth", weights_only=True), strict=True)
    return gpt.eval()


def greedy(model, expected, ids_key="gen_text_ids", **overrides):
    cfg = GenerationConfig.greedy(**{"max_new_tokens": MAX_NEW, **overrides})
    ids = expected[ids_key].int()  # the official prompt was int32
    return generate_codes(model, ids, cfg, cond_mel=expected["cond_mel"])


# ------------------------------------------------------------------------------------- official parity

GREEDY_RUNS = {
    "codes_greedy_cache": dict(),
    "codes_greedy_nocache": dict(use_cache=False, position_mode="train"),
    "codes_greedy_rep10": dict(repetition_penalty=10.0),
    "codes_greedy_rep10_nocache": dict(repetition_penalty=10.0, use_cache=False, position_mode="train"),
}


@pytest.mark.parametrize("name", sorted(GREEDY_RUNS))
def test_greedy_matches_official(model, expected, name):
    codes, lengths = greedy(model, expected, **GREEDY_RUNS[name])
    assert codes.tolist() == expected[name].tolist()
    assert lengths.tolist() == [expected[name].shape[1] - 1]  # every run ends with its one stop code


@pytest.mark.parametrize("name", sorted(GREEDY_RUNS))
def test_cache_only_changes_the_arithmetic(model, expected, name):
    flipped = dict(GREEDY_RUNS[name])
    flipped["use_cache"] = not flipped.get("use_cache", True)
    flipped.setdefault("position_mode", "official")
    codes, _ = greedy(model, expected, **flipped)
    assert codes.tolist() == expected[name].tolist()


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_with_shared_cond_matches_official(model, expected, use_cache):
    codes, lengths = greedy(model, expected, "gen_batch_text_ids", use_cache=use_cache)
    assert codes.tolist() == expected["codes_greedy_batch_cache"].tolist()
    assert lengths.tolist() == [28, 32]
    assert codes[0, :29].tolist() == expected["codes_greedy_cache"][0].tolist()


def test_per_row_conds_equal_shared_conds(model, expected):
    ids = expected["gen_batch_text_ids"]
    cfg = GenerationConfig.greedy(max_new_tokens=MAX_NEW)
    conds = model.get_conditioning(expected["cond_mel"]).detach()
    shared, _ = generate_codes(model, ids, cfg, conds=conds)
    per_row, _ = generate_codes(model, ids, cfg, conds=conds.expand(2, -1, -1))
    assert per_row.tolist() == shared.tolist() == expected["codes_greedy_batch_cache"].tolist()


def test_max_new_tokens_cuts_without_stop(model, expected):
    codes, lengths = greedy(model, expected, max_new_tokens=5)
    assert codes.tolist() == [expected["codes_greedy_cache"][0, :5].tolist()]
    assert lengths.tolist() == [5]


@pytest.mark.parametrize("generator", [False, True])
def test_beam_sampling_reproduces_official_draws(model, expected, generator):
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)  # the official defaults: 3-beam sampling, R = 10
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(1234) if generator else None
    codes, lengths = generate_codes(model, expected["gen_text_ids"].int(), cfg, cond_mel=expected["cond_mel"],
                                    generator=gen)
    # RNG-dependent (torch CPU generator + HF 4.36 draw order); matches with torch 2.13
    assert codes.tolist() == expected["codes_beam3_sample_seed1234"].tolist()
    assert lengths.tolist() == [9]


def test_latents_for_vocoder_match_official(model, expected):
    latents = latents_for_vocoder(model, expected["conds"], expected["latent_text_ids"],
                                  expected["latent_codes"], torch.tensor([40]))
    assert latents.shape == (1, 40, 64)
    torch.testing.assert_close(latents, expected["latents"], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------ sampling rules

def test_sampling_with_top_k_1_is_greedy(model, expected):
    for rep, name in [(1.0, "codes_greedy_cache"), (10.0, "codes_greedy_rep10")]:
        codes, _ = greedy(model, expected, do_sample=True, top_k=1, top_p=1.0, repetition_penalty=rep)
        assert codes.tolist() == expected[name].tolist()


@pytest.mark.parametrize("beams", [1, 3])
def test_sampling_is_reproducible_and_valid(model, expected, beams):
    cfg = GenerationConfig(num_beams=beams, max_new_tokens=MAX_NEW)
    ids, cond = expected["gen_batch_text_ids"], expected["conds"]
    runs = [generate_codes(model, ids, cfg, conds=cond, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    torch.manual_seed(7)
    global_rng, _ = generate_codes(model, ids, cfg, conds=cond)
    assert runs[0][0].tolist() == runs[1][0].tolist() == global_rng.tolist()
    assert runs[0][0].tolist() != runs[2][0].tolist()
    for codes, lengths in runs:
        assert codes.shape[0] == 2 and codes.shape[1] <= MAX_NEW
        for row, n in zip(codes, lengths):
            assert ((row[:n] >= 0) & (row[:n] < START)).all()  # real codes only: no start, no stop
            assert (row[n:] == STOP).all()


def test_beam_sampling_cache_and_recompute_agree(model, expected):
    cfg = dict(max_new_tokens=MAX_NEW)
    ids, cond = expected["gen_batch_text_ids"], expected["conds"]
    with_cache, _ = generate_codes(model, ids, GenerationConfig(**cfg), conds=cond,
                                   generator=torch.Generator().manual_seed(3))
    without, _ = generate_codes(model, ids, GenerationConfig(use_cache=False, **cfg), conds=cond,
                                generator=torch.Generator().manual_seed(3))
    assert with_cache.tolist() == without.tolist()


def test_beam_search_rows_are_independent_of_batching(model, expected):
    cfg = GenerationConfig(do_sample=False, num_beams=3, repetition_penalty=1.0, max_new_tokens=MAX_NEW)
    ids, cond = expected["gen_batch_text_ids"], expected["conds"]
    batch, lengths = generate_codes(model, ids, cfg, conds=cond)
    for r in range(2):
        alone, _ = generate_codes(model, ids[r:r + 1], cfg, conds=cond)
        assert batch[r, : alone.shape[1]].tolist() == alone[0].tolist()
        assert (batch[r, alone.shape[1]:] == STOP).all()
    assert lengths.tolist() == [17, 23]


# ------------------------------------------------------------------------------- prompt and positions

def test_prompt_strips_padding_and_left_pads(model, expected):
    ids = expected["gen_batch_text_ids"]  # row 1 = [30, 2] then thirteen stop_text (1) ids
    prompt = prepare_prompt(model, expected["conds"], ids)
    S = 32 + 15 + 2
    assert prompt.embeds.shape == (2, S, 64)
    assert prompt.key_mask.sum(dim=1).tolist() == [S, 32 + 4]
    assert not prompt.key_mask[1, : S - 36].any() and (prompt.embeds[1, : S - 36] == 0).all()
    alone = prepare_prompt(model, expected["conds"], torch.tensor([[30, 2]]))
    torch.testing.assert_close(prompt.embeds[1, S - 36:], alone.embeds[0], rtol=0, atol=0)
    assert prompt.history.tolist() == [[1, START], [1, START]]


def test_mel_positions():
    assert [mel_position(i, "official") for i in range(5)] == [0, 2, 3, 4, 5]
    assert [mel_position(i, "train") for i in range(5)] == [0, 1, 2, 3, 4]


def test_position_table_limit(model, expected):
    ok = GenerationConfig.greedy(max_new_tokens=62)  # needs positions 0..62 of the 63-row table
    generate_codes(model, expected["gen_text_ids"], ok, conds=expected["conds"])
    with pytest.raises(ValueError, match="mel positions"):
        generate_codes(model, expected["gen_text_ids"], GenerationConfig.greedy(max_new_tokens=63),
                       conds=expected["conds"])


def test_config_defaults_and_checks():
    cfg = GenerationConfig()
    assert (cfg.do_sample, cfg.num_beams, cfg.top_k, cfg.top_p, cfg.temperature) == (True, 3, 30, 0.8, 1.0)
    assert (cfg.repetition_penalty, cfg.max_new_tokens, cfg.position_mode, cfg.use_cache) == (
        10.0, 600, "official", True)
    for bad in [dict(num_beams=0), dict(top_p=0.0), dict(temperature=0.0), dict(position_mode="shifted")]:
        with pytest.raises(ValueError):
            GenerationConfig(**bad)


# ---------------------------------------------------------------------------------------- processors

def test_repetition_penalty_divides_positive_and_multiplies_negative():
    scores = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    out = sampling.repetition_penalty(scores, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, 0.5]]


def test_top_k_keeps_ties_and_min_keep():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0]])
    assert sampling.top_k(scores, 1).tolist() == [[-INF, 3.0, -INF, 3.0]]
    assert sampling.top_k(scores, 1, min_keep=3).tolist() == [[-INF, 3.0, 2.0, 3.0]]
    assert sampling.top_k(scores, 0).tolist() == scores.tolist()


def test_top_p_drops_the_unlikely_tail():
    logp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = sampling.top_p(logp, 0.8).isfinite().tolist()
    assert kept == [[True, True, False, False]]  # cumulative from the tail: 0.05, 0.2 <= 0.2 are dropped
    assert sampling.top_p(logp, 0.1, min_keep=2).isfinite().tolist() == [[True, True, False, False]]


# ------------------------------------------------------------------------------- remove_long_silence

def test_remove_long_silence_matches_official(expected):
    codes, lens = remove_long_silence(expected["rls_codes_in"], 52, 30, stop_token=STOP)
    assert codes.tolist() == expected["rls_codes_out"].tolist()
    assert lens.tolist() == expected["rls_lens_out"].tolist()
    codes, lens = remove_long_silence(expected["rls_codes_in"][:1], stop_token=STOP)
    assert codes.tolist() == expected["rls1_codes_out"].tolist()
    assert lens.tolist() == expected["rls1_lens_out"].tolist()


def test_remove_long_silence_of_greedy_codes_is_e2e_codes(expected):
    codes, lens = remove_long_silence(expected["codes_greedy_cache"], stop_token=STOP)
    assert codes.tolist() == expected["e2e_codes"].tolist() and lens.tolist() == [28]


def test_remove_long_silence_without_fix_keeps_rows():
    # no row needs the fix: the official code only clips, so row 0 keeps the 7 after its stop
    codes = torch.tensor([[5, STOP, 7, 8], [5, 6, 9, STOP]])
    out, lens = remove_long_silence(codes, stop_token=STOP)
    assert out.tolist() == [[5, STOP, 7], [5, 6, 9]] and lens.tolist() == [1, 3]


def test_code_lengths():
    assert code_lengths(torch.tensor([[1, STOP, STOP], [1, 2, 3]]), STOP).tolist() == [1, 3]
