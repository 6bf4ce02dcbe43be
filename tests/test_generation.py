"""Generation against the official v1.5.0 outputs of the tiny fixture, plus the rules the parity rests on
(checked on the shipped base)."""

from __future__ import annotations

import pytest
import torch

from base_fixtures import load_plain_gpt
from tagtune.generation import (
    GenerationConfig,
    code_lengths,
    generate_codes,
    latents_for_vocoder,
    mel_position,
    prepare_prompt,
    remove_long_silence,
    sampling,
)

STOP, START = 129, 128  # the fixture's stop_mel / start_mel
MAX_NEW = 40  # max_generate_length of every fixture generation
INF = float("inf")




@pytest.fixture(scope="module")
def model(shipped_base):
    return load_plain_gpt(shipped_base)


@pytest.fixture(scope="module")
def official(fixture_dir):
    return load_plain_gpt(fixture_dir / "checkpoint")


def greedy(model, inputs, ids_key="gen_text_ids", **overrides):
    cfg = GenerationConfig.greedy(**{"max_new_tokens": MAX_NEW, **overrides})
    ids = inputs[ids_key].int()  # the official prompt was int32
    return generate_codes(model, ids, cfg, cond_mel=inputs["cond_mel"])


def flip_cache(settings: dict) -> dict:
    """The same run with the KV cache switched (the position mode kept)."""
    return settings | {"use_cache": not settings.get("use_cache", True),
                       "position_mode": settings.get("position_mode", "official")}


# ------------------------------------------------------------------------------------- official parity

# the fixture's plain greedy runs were made with repetition penalty 1.0, its rep10 runs with 10.0
GREEDY_RUNS = {
    "codes_greedy_cache": dict(repetition_penalty=1.0),
    "codes_greedy_nocache": dict(repetition_penalty=1.0, use_cache=False, position_mode="train"),
    "codes_greedy_rep10": dict(repetition_penalty=10.0),
    "codes_greedy_rep10_nocache": dict(repetition_penalty=10.0, use_cache=False, position_mode="train"),
}


@pytest.mark.parametrize("name", sorted(GREEDY_RUNS))
def test_greedy_matches_official(official, expected, name):
    codes, lengths = greedy(official, expected, **GREEDY_RUNS[name])
    assert codes.tolist() == expected[name].tolist()
    assert lengths.tolist() == [expected[name].shape[1] - 1]  # every run ends with its one stop code


@pytest.mark.parametrize("name", sorted(GREEDY_RUNS))
def test_cache_only_changes_the_arithmetic(official, expected, name):
    codes, _ = greedy(official, expected, **flip_cache(GREEDY_RUNS[name]))
    assert codes.tolist() == expected[name].tolist()


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_with_shared_cond_matches_official(official, expected, use_cache):
    codes, lengths = greedy(official, expected, "gen_batch_text_ids", use_cache=use_cache, repetition_penalty=1.0)
    assert codes.tolist() == expected["codes_greedy_batch_cache"].tolist()
    assert lengths.tolist() == [28, 32]
    assert codes[0, :29].tolist() == expected["codes_greedy_cache"][0].tolist()


def test_per_row_conds_equal_shared_conds(official, expected):
    ids = expected["gen_batch_text_ids"]
    cfg = GenerationConfig.greedy(max_new_tokens=MAX_NEW, repetition_penalty=1.0)
    conds = official.get_conditioning(expected["cond_mel"]).detach()
    shared, _ = generate_codes(official, ids, cfg, conds=conds)
    per_row, _ = generate_codes(official, ids, cfg, conds=conds.expand(2, -1, -1))
    assert per_row.tolist() == shared.tolist() == expected["codes_greedy_batch_cache"].tolist()


def test_max_new_tokens_cuts_without_stop(official, expected):
    codes, lengths = greedy(official, expected, max_new_tokens=5, repetition_penalty=1.0)
    assert codes.tolist() == [expected["codes_greedy_cache"][0, :5].tolist()]
    assert lengths.tolist() == [5]


@pytest.mark.parametrize("generator", [False, True])
def test_beam_sampling_reproduces_official_draws(official, expected, generator):
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)  # the official defaults: 3-beam sampling, R = 10
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(1234) if generator else None
    codes, lengths = generate_codes(official, expected["gen_text_ids"].int(), cfg, cond_mel=expected["cond_mel"],
                                    generator=gen)
    # RNG-dependent (torch CPU generator + HF 4.36 draw order); matches with torch 2.13
    assert codes.tolist() == expected["codes_beam3_sample_seed1234"].tolist()
    assert lengths.tolist() == [9]


def test_latents_for_vocoder_match_official(official, expected):
    latents = latents_for_vocoder(official, expected["conds"], expected["latent_text_ids"],
                                  expected["latent_codes"], torch.tensor([40]))
    assert latents.shape == (1, 40, 64)
    torch.testing.assert_close(latents, expected["latents"], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------ sampling rules

def test_sampling_with_top_k_1_is_greedy(official, expected):
    for rep, name in [(1.0, "codes_greedy_cache"), (10.0, "codes_greedy_rep10")]:
        codes, _ = greedy(official, expected, do_sample=True, top_k=1, top_p=1.0, repetition_penalty=rep)
        assert codes.tolist() == expected[name].tolist()


# ---------------------------------------------------------------------- the same rules on the shipped base

@pytest.mark.parametrize("name", sorted(GREEDY_RUNS))
def test_cache_leaves_the_codes_alone(model, base_inputs, name):
    codes, lengths = greedy(model, base_inputs, **GREEDY_RUNS[name])
    flipped, flipped_lengths = greedy(model, base_inputs, **flip_cache(GREEDY_RUNS[name]))
    assert flipped.tolist() == codes.tolist() and flipped_lengths.tolist() == lengths.tolist()


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_rows_equal_their_lone_runs(model, base_inputs, use_cache):
    cfg = GenerationConfig.greedy(max_new_tokens=MAX_NEW, use_cache=use_cache)
    ids, mel = base_inputs["gen_batch_text_ids"], base_inputs["cond_mel"]
    codes, lengths = generate_codes(model, ids, cfg, cond_mel=mel)
    for r in range(2):
        alone, alone_lengths = generate_codes(model, ids[r:r + 1], cfg, cond_mel=mel)
        assert codes[r, : alone.shape[1]].tolist() == alone[0].tolist()
        assert (codes[r, alone.shape[1]:] == model.cfg.stop_mel_token).all() and lengths[r] == alone_lengths[0]


def test_per_row_conds_give_the_shared_conds_codes(model, base_inputs):
    ids = base_inputs["gen_batch_text_ids"]
    cfg = GenerationConfig.greedy(max_new_tokens=MAX_NEW)
    conds = model.get_conditioning(base_inputs["cond_mel"]).detach()
    shared, _ = generate_codes(model, ids, cfg, conds=conds)
    per_row, _ = generate_codes(model, ids, cfg, conds=conds.expand(2, -1, -1))
    assert per_row.tolist() == shared.tolist() == greedy(model, base_inputs, "gen_batch_text_ids")[0].tolist()


def test_max_new_tokens_cuts_a_prefix_without_stop(model, base_inputs):
    full, full_lengths = greedy(model, base_inputs)
    assert full_lengths[0] > 5  # the cut falls inside the full run
    codes, lengths = greedy(model, base_inputs, max_new_tokens=5)
    assert codes.tolist() == [full[0, :5].tolist()] and lengths.tolist() == [5]


def test_top_k_1_sampling_is_greedy(model, base_inputs):
    for rep in (1.0, 10.0):
        codes, _ = greedy(model, base_inputs, do_sample=True, top_k=1, top_p=1.0, repetition_penalty=rep)
        assert codes.tolist() == greedy(model, base_inputs, repetition_penalty=rep)[0].tolist()


def test_greedy_keeps_the_official_repetition_penalty(model, base_inputs):
    """``--greedy`` (jobs.generation_config) is the official do_sample=False, num_beams=1 call: penalty 10 kept."""
    from tagtune.synthesis.jobs import generation_config

    longest = model.cfg.max_mel_tokens + 2  # room for a run that never stops
    cfg = generation_config(greedy=True, max_new_tokens=longest)
    assert (cfg.do_sample, cfg.num_beams, cfg.repetition_penalty) == (False, 1, 10.0)
    official = GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=10.0, max_new_tokens=longest)
    ids, mel = base_inputs["gen_text_ids"], base_inputs["cond_mel"]
    codes, lengths = generate_codes(model, ids, cfg, cond_mel=mel)
    want, want_lengths = generate_codes(model, ids, official, cond_mel=mel)
    assert codes.tolist() == want.tolist() and lengths.tolist() == want_lengths.tolist()
    plain = generation_config(greedy=True, repetition_penalty=1.0, max_new_tokens=longest)  # the old behaviour
    assert plain.repetition_penalty == 1.0
    unpenalised, _ = generate_codes(model, ids, plain, cond_mel=mel)
    assert lengths.item() < longest and unpenalised.tolist() != codes.tolist()


@pytest.mark.parametrize("beams", [1, 3])
def test_sampling_is_reproducible_and_valid(model, base_inputs, beams):
    cfg = GenerationConfig(num_beams=beams, max_new_tokens=MAX_NEW)
    ids, cond = base_inputs["gen_batch_text_ids"], base_inputs["conds"]
    runs = [generate_codes(model, ids, cfg, conds=cond, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    torch.manual_seed(7)
    global_rng, _ = generate_codes(model, ids, cfg, conds=cond)
    assert runs[0][0].tolist() == runs[1][0].tolist() == global_rng.tolist()
    assert runs[0][0].tolist() != runs[2][0].tolist()
    for codes, lengths in runs:
        assert codes.shape[0] == 2 and codes.shape[1] <= MAX_NEW
        for row, n in zip(codes, lengths):
            assert ((row[:n] >= 0) & (row[:n] < model.cfg.start_mel_token)).all()  # real codes: no start, no stop
            assert (row[n:] == model.cfg.stop_mel_token).all()


def test_beam_sampling_cache_and_recompute_agree(model, base_inputs):
    cfg = dict(max_new_tokens=MAX_NEW)
    ids, cond = base_inputs["gen_batch_text_ids"], base_inputs["conds"]
    with_cache, _ = generate_codes(model, ids, GenerationConfig(**cfg), conds=cond,
                                   generator=torch.Generator().manual_seed(3))
    without, _ = generate_codes(model, ids, GenerationConfig(use_cache=False, **cfg), conds=cond,
                                generator=torch.Generator().manual_seed(3))
    assert with_cache.tolist() == without.tolist()


def test_beam_search_rows_are_independent_of_batching(model, base_inputs):
    cfg = GenerationConfig(do_sample=False, num_beams=3, repetition_penalty=1.0, max_new_tokens=MAX_NEW)
    ids, cond = base_inputs["gen_batch_text_ids"], base_inputs["conds"]
    batch, lengths = generate_codes(model, ids, cfg, conds=cond)
    for r in range(2):
        alone, alone_lengths = generate_codes(model, ids[r:r + 1], cfg, conds=cond)
        assert batch[r, : alone.shape[1]].tolist() == alone[0].tolist()
        assert (batch[r, alone.shape[1]:] == model.cfg.stop_mel_token).all()
        assert lengths[r] == alone_lengths[0]


# ------------------------------------------------------------------------------- prompt and positions

def test_prompt_strips_padding_and_left_pads(model, base_inputs):
    ids = base_inputs["gen_batch_text_ids"]  # row 1 = the two ids of "a", then stop_text (1) ids
    n = ids.shape[1]
    assert (ids[0] != 1).all() and ids[1, 2:].eq(1).all()
    prompt = prepare_prompt(model, base_inputs["conds"], ids)
    S = 32 + n + 2
    assert prompt.embeds.shape == (2, S, model.cfg.model_dim)
    assert prompt.key_mask.sum(dim=1).tolist() == [S, 32 + 4]
    assert not prompt.key_mask[1, : S - 36].any() and (prompt.embeds[1, : S - 36] == 0).all()
    alone = prepare_prompt(model, base_inputs["conds"], ids[1:, :2])
    torch.testing.assert_close(prompt.embeds[1, S - 36:], alone.embeds[0], rtol=0, atol=0)
    assert prompt.history.tolist() == [[1, model.cfg.start_mel_token]] * 2


def test_mel_positions():
    assert [mel_position(i, "official") for i in range(5)] == [0, 2, 3, 4, 5]
    assert [mel_position(i, "train") for i in range(5)] == [0, 1, 2, 3, 4]


def test_position_table_limit(model, base_inputs):
    rows = model.cfg.max_mel_tokens + 3
    ok = GenerationConfig.greedy(max_new_tokens=rows - 1)  # needs positions 0..rows-1 of the table
    generate_codes(model, base_inputs["gen_text_ids"], ok, conds=base_inputs["conds"])
    with pytest.raises(ValueError, match="mel positions"):
        generate_codes(model, base_inputs["gen_text_ids"], GenerationConfig.greedy(max_new_tokens=rows),
                       conds=base_inputs["conds"])


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


# ------------------------------------------------------------------------------ one prefill per prompt

@torch.no_grad()
def test_beams_prefilled_once_per_prompt_decode_as_the_repeated_prompt(model, base_inputs):
    """``MelDecoder(repeat=3)`` prefills each text once and copies its keys to its beams: the logits and the
    filled cache equal those of the prompt repeated row by row, through steps that send rows apart."""
    from tagtune.generation import MelDecoder

    c = model.cfg
    conds = model.get_conditioning(base_inputs["cond_mel"])
    text = torch.tensor([[5, 9, 14, 7, 22, 3], [11, 4, 8, c.stop_text_token, c.stop_text_token,
                                                 c.stop_text_token]])  # row 1 left-padded in the prompt
    prompt = prepare_prompt(model, conds, text)
    once = MelDecoder(model, prompt, use_cache=True, position_mode="official", max_new_tokens=8, repeat=3)
    each = MelDecoder(model, prompt.repeat_rows(3), use_cache=True, position_mode="official", max_new_tokens=8)
    assert torch.equal(once.history, prompt.repeat_rows(3).history)
    torch.testing.assert_close(once.start(), each.start(), atol=1e-5, rtol=0)
    assert once.cache.length == each.cache.length == prompt.length + 1
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        order = torch.arange(6) // 3 * 3 + torch.randint(0, 3, (6,), generator=g)  # each text's own beams
        tokens = torch.randint(0, c.start_mel_token, (6,), generator=g)
        once.reorder(order)
        each.reorder(order)
        torch.testing.assert_close(once.step(tokens), each.step(tokens), atol=1e-5, rtol=0)
    for a, b in zip(once.cache.k + once.cache.v, each.cache.k + each.cache.v):
        torch.testing.assert_close(a[:, :, : once.cache.length], b[:, :, : each.cache.length], atol=1e-5, rtol=0)
