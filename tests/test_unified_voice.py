"""UnifiedVoice against the official v1.5.0 outputs of the tiny fixture, plus layout and padding rules (checked
on the shipped base)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from base_fixtures import load_plain_gpt
from conftest import official_param_count, read_key_list
from tagtune.config import v1_0, v1_5
from tagtune.generation import GenerationConfig, generate_codes
from tagtune.models.unified_voice import IGNORE_INDEX, UnifiedVoice

ATOL = 1e-5  # reached: mel_logits 3.8e-6, latents 2.6e-6; losses agree to ~1e-7 relative




@pytest.fixture(scope="module")
def tiny(shipped_base) -> UnifiedVoice:
    return load_plain_gpt(shipped_base)


@pytest.fixture(scope="module")
def official(fixture_dir) -> UnifiedVoice:
    return load_plain_gpt(fixture_dir / "checkpoint")


def _batch(inputs):
    keys = ("batch_cond_mel", "batch_text_ids", "batch_text_lengths", "batch_codes", "batch_wav_lengths",
            "batch_cond_mel_lengths")
    return tuple(inputs[k].clone() for k in keys)


# ------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("name, make, params", [("sd_gpt_v10.txt", v1_0, 345_632_311),
                                                ("sd_gpt_v15.txt", v1_5, 582_975_115)])
def test_full_size_state_dict_matches_official_keys(official_keys_dir, name, make, params):
    with torch.device("meta"):
        model = UnifiedVoice(make().gpt)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: shape for k, (shape, _dtype) in read_key_list(official_keys_dir / name).items()}
    assert sorted(set(official) - set(ours)) == [] and sorted(set(ours) - set(official)) == []
    assert {k: s for k, s in ours.items() if official[k] != s} == {}
    assert sum(p.numel() for p in model.parameters()) == params == official_param_count(official_keys_dir / name)
    assert dict(model.named_buffers()).keys() == {"conditioning_encoder.embed.pos_enc.pe"}


def test_heads_are_plain_linears_with_bias():
    with torch.device("meta"):
        model = UnifiedVoice(v1_0().gpt)
    assert type(model.text_head) is torch.nn.Linear and model.text_head.bias.shape == (12001,)
    assert type(model.mel_head) is torch.nn.Linear and model.mel_head.bias.shape == (8194,)
    assert model.gpt.drop.p == 0.1 and model.gpt.h[0].attn.attn_dropout == 0.1  # official GPT-2 dropout


# ------------------------------------------------------------------------------------- parity


@torch.no_grad()
def test_training_forward_matches_official(official, expected):
    loss_text, loss_mel, mel_logits = official(*_batch(expected))
    torch.testing.assert_close(loss_text, expected["loss_text"], rtol=1e-5, atol=0)
    torch.testing.assert_close(loss_mel, expected["loss_mel"], rtol=1e-5, atol=0)
    assert mel_logits.shape == (2, 130, 32)
    torch.testing.assert_close(mel_logits, expected["mel_logits"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_latents_match_official(official, expected):
    text, codes, mel = expected["latent_text_ids"], expected["latent_codes"], expected["cond_mel"]
    n = codes.shape[1]
    lat = official(mel, text, torch.tensor([text.shape[1]]), codes, torch.tensor([n * 1024]), torch.tensor([235]),
                   return_latent=True)
    assert lat.shape == (1, 40, 64)
    torch.testing.assert_close(lat, expected["latents"], atol=ATOL, rtol=0)
    conds = official.get_conditioning(mel, torch.tensor([235]))
    torch.testing.assert_close(official.latents(conds, text, codes), expected["latents"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_forward_latents_equal_latents_from_conds(tiny, base_inputs):
    text, codes, mel = base_inputs["latent_text_ids"], base_inputs["latent_codes"], base_inputs["cond_mel"]
    n = codes.shape[1]
    lat = tiny(mel, text, torch.tensor([text.shape[1]]), codes, torch.tensor([n * 1024]), torch.tensor([235]),
               return_latent=True)
    assert lat.shape == (1, n, tiny.cfg.model_dim)
    conds = tiny.get_conditioning(mel, torch.tensor([235]))
    torch.testing.assert_close(tiny.latents(conds, text, codes), lat, atol=ATOL, rtol=0)


@torch.no_grad()
def test_forward_does_not_modify_inputs(tiny, base_inputs):
    args = _batch(base_inputs)
    tiny(*args)
    tiny(*args, return_latent=True)
    tiny.logits(*args, mask_padding=True, mask_loss=True)
    for got, want in zip(args, _batch(base_inputs)):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------- layout


def test_training_tokens_follow_the_official_padding_rules(tiny):
    start, stop = tiny.cfg.start_mel_token, tiny.cfg.stop_mel_token
    tok = tiny.training_tokens(torch.tensor([[5, 6, 7, 9]]), torch.tensor([2]),
                               torch.tensor([[10, 11, 12, 13, 14]]), torch.tensor([2 * 1024 + 1]))
    assert tok.text_inputs.tolist() == [[0, 5, 6, 1, 1, 1]]
    assert tok.text_targets.tolist() == [[5, 6, 1, 1, 1, 1]]
    assert tok.text_mask.tolist() == [[True] * 4 + [False] * 2]
    # ceil(2049 / 1024) + 1 = 4 codes kept, the 5th becomes stop
    assert tok.mel_inputs.tolist() == [[start, 10, 11, 12, 13, stop, stop]]
    assert tok.mel_targets.tolist() == [[10, 11, 12, 13, stop, stop, stop]]
    assert tok.mel_mask.tolist() == [[True] * 6 + [False]]
    exact = tiny.training_tokens(torch.tensor([[5]]), torch.tensor([1]), torch.tensor([[10, 11, 12, 13, 14]]),
                                 torch.tensor([3 * 1024]))
    assert exact.mel_inputs.tolist() == [[start, 10, 11, 12, 13, stop, stop]]


@torch.no_grad()
def test_logits_with_precomputed_conds_equal_forward(tiny, base_inputs):
    mel, text, text_len, codes, wav_len, mel_len = _batch(base_inputs)
    out = tiny.logits(mel, text, text_len, codes, wav_len, mel_len)
    conds = tiny.get_conditioning(mel, mel_len)
    again = tiny.logits(None, text, text_len, codes, wav_len, conds=conds)
    torch.testing.assert_close(again.mel_logits, out.mel_logits, atol=1e-6, rtol=0)
    loss_text, _, _ = tiny(*_batch(base_inputs))
    torch.testing.assert_close(F.cross_entropy(out.text_logits, out.text_targets), loss_text, rtol=1e-5, atol=0)
    assert out.text_logits.shape == (2, tiny.cfg.text_rows, 34) and out.text_targets.shape == (2, 34)
    with pytest.raises(ValueError, match="exactly one"):
        tiny.logits(mel, text, text_len, codes, wav_len, mel_len, conds=conds)


@torch.no_grad()
def test_mask_loss_ignores_exactly_the_padding(tiny, base_inputs):
    out = tiny.logits(*_batch(base_inputs), mask_loss=True)
    # text lengths 15 / 32 of width 32 -> 17 / 34 real targets of 34; codes 30 / 23 of 30 -> 32 / 25 of 32
    assert (out.text_targets != IGNORE_INDEX).sum(1).tolist() == [17, 34]
    assert (out.mel_targets != IGNORE_INDEX).sum(1).tolist() == [32, 25]
    stop = tiny.cfg.stop_mel_token
    assert out.mel_targets[1, 22:25].tolist() == [base_inputs["batch_codes"][1, 22].item(), stop, stop]


@torch.no_grad()
def test_masked_padding_rows_equal_their_unpadded_runs(tiny, base_inputs):
    mel, text, text_len, codes, wav_len, mel_len = _batch(base_inputs)
    text[0, 15:] = 7  # garbage ids past the length must not matter
    batch = tiny.logits(mel, text, text_len, codes, wav_len, mel_len, mask_padding=True, mask_loss=True)
    rows = [(mel[:1], text[:1, :15], codes[:1], wav_len[:1], 235, 17, 32),
            (mel[1:, :, :185], text[1:], codes[1:, :23], wav_len[1:], 185, 34, 25)]
    for b, (m, t, c, w, n_mel, n_text, n_code) in enumerate(rows):
        alone = tiny.logits(m, t, torch.tensor([t.shape[1]]), c, w, torch.tensor([n_mel]))
        torch.testing.assert_close(batch.text_logits[b, :, :n_text], alone.text_logits[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(batch.mel_logits[b, :, :n_code], alone.mel_logits[0], atol=ATOL, rtol=0)
        loss_row = F.cross_entropy(batch.mel_logits[b:b + 1], batch.mel_targets[b:b + 1])
        loss_alone = F.cross_entropy(alone.mel_logits, alone.mel_targets)
        torch.testing.assert_close(loss_row, loss_alone, rtol=1e-5, atol=0)
    # the official layout (padding visible) does change row 0
    official = tiny.logits(mel, text, text_len, codes, wav_len, mel_len)
    assert (official.mel_logits[0] - batch.mel_logits[0]).abs().max() > 1e-2


@torch.no_grad()
def test_batched_latents_with_lengths_equal_unpadded_runs(tiny, base_inputs):
    conds = tiny.get_conditioning(base_inputs["cond_mel"], torch.tensor([235])).expand(2, -1, -1)
    text = torch.tensor([[40, 41, 42, 43, 44, 45], [50, 51, 52, 9, 9, 9]])
    codes = base_inputs["latent_codes"][0, :12].repeat(2, 1)
    codes[1, 7:] = 3  # garbage past row 1's 7 codes
    lat = tiny.latents(conds, text, codes, torch.tensor([6, 3]), torch.tensor([12, 7]))
    assert lat.shape == (2, 12, tiny.cfg.model_dim)
    torch.testing.assert_close(lat[0], tiny.latents(conds[:1], text[:1], codes[:1])[0], atol=ATOL, rtol=0)
    alone = tiny.latents(conds[:1], text[1:, :3], codes[1:, :7])
    torch.testing.assert_close(lat[1, :7], alone[0], atol=ATOL, rtol=0)


def test_too_long_text_names_the_position_table(tiny):
    rows = tiny.cfg.max_text_tokens + 2
    with pytest.raises(ValueError, match=f"{rows}-row position table"):
        tiny.embed_text(torch.zeros(1, rows + 1, dtype=torch.long))


# ------------------------------------------------------------------- inference helpers + KV cache


def _greedy(model: UnifiedVoice, conds, text_ids, max_new: int, shifted: bool) -> list[int]:
    """Greedy decode through the KV cache; ``shifted`` feeds code k at mel position k+1 (official cache)."""
    text = F.pad(F.pad(text_ids.long(), (1, 0), value=0), (0, 1), value=1)
    prefix = torch.cat([conds, model.embed_text(text)], dim=1)
    cache = model.gpt.new_cache(1, prefix.shape[1] + max_new + 1)
    start = model.embed_mel(torch.tensor([[model.cfg.start_mel_token]]), 0)
    h = model.gpt(torch.cat([prefix, start], dim=1), cache=cache)
    codes = []
    for k in range(1, max_new + 1):
        nxt = model.mel_logits_from_hidden(h[:, -1]).argmax(-1)  # (1,)
        codes.append(int(nxt))
        if codes[-1] == model.cfg.stop_mel_token:
            break
        h = model.gpt(model.embed_mel(nxt[:, None], k + 1 if shifted else k), cache=cache)
    return codes


@torch.no_grad()
@pytest.mark.parametrize("key, shifted", [("codes_greedy_cache", True), ("codes_greedy_nocache", False)])
def test_helpers_reproduce_official_greedy_codes(official, expected, key, shifted):
    conds = official.get_conditioning(expected["cond_mel"], torch.tensor([235]))
    codes = _greedy(official, conds, expected["gen_text_ids"], 40, shifted)
    assert codes == expected[key][0].tolist()


@torch.no_grad()
@pytest.mark.parametrize("mode, shifted", [("official", True), ("train", False)])
def test_helpers_reproduce_generate_codes(tiny, base_inputs, mode, shifted):
    conds, text = base_inputs["conds"], base_inputs["gen_text_ids"]
    cfg = GenerationConfig.greedy(max_new_tokens=40, position_mode=mode, repetition_penalty=1.0)  # plain argmax
    want, lengths = generate_codes(tiny, text, cfg, conds=conds)
    codes = _greedy(tiny, conds, text, 40, shifted)
    assert len(codes) == min(int(lengths[0]) + 1, 40)  # the real codes and the stop code, if it came
    assert codes == want[0, : len(codes)].tolist()


@torch.no_grad()
def test_left_padded_batch_reproduces_official_batch_codes(official, expected):
    """Official batch layout: [conds || 0, text, 1] left-padded with zero vectors and masked, KV cache on."""
    conds = official.get_conditioning(expected["cond_mel"], torch.tensor([235]))
    rows = [r[(r != 0) & (r != 1)] for r in expected["gen_batch_text_ids"]]  # strip start/stop padding
    wrapped = [F.pad(F.pad(r[None], (1, 0), value=0), (0, 1), value=1) for r in rows]  # [0, text, 1]
    prompts = [torch.cat([conds[0], official.embed_text(w)[0]]) for w in wrapped]  # (32 + n + 2, D) each
    width = max(len(p) for p in prompts)
    x = torch.stack([F.pad(p, (0, 0, width - len(p), 0)) for p in prompts])  # (2, width, D), left-padded
    key_mask = torch.ones(2, width + 41, dtype=torch.bool)
    for b, p in enumerate(prompts):
        key_mask[b, : width - len(p)] = False
    cache = official.gpt.new_cache(2, width + 41)
    start = official.embed_mel(torch.full((2, 1), official.cfg.start_mel_token), 0)
    h = official.gpt(torch.cat([x, start], dim=1), key_mask=key_mask, cache=cache)
    codes = []
    for k in range(1, 41):
        nxt = official.mel_logits_from_hidden(h[:, -1]).argmax(-1)  # (2,)
        codes.append(nxt)
        h = official.gpt(official.embed_mel(nxt[:, None], k + 1), key_mask=key_mask, cache=cache)
    want, stop = expected["codes_greedy_batch_cache"], official.cfg.stop_mel_token
    for b in range(2):
        row = torch.stack(codes, dim=1)[b].tolist()
        row = row[: row.index(stop) + 1]
        assert row == want[b, : len(row)].tolist() and set(want[b, len(row):].tolist()) <= {stop}


def _sharp_backbone(seed: int = 0):
    """A small backbone with weights large enough that attention is far from uniform."""
    from tagtune.models.gpt2 import GPT2Backbone

    torch.manual_seed(seed)
    gpt = GPT2Backbone(32, 2, 4).eval()
    for name, p in gpt.named_parameters():
        if "ln" not in name:
            torch.nn.init.normal_(p, std=0.3)
    return gpt


@torch.no_grad()
def test_cache_prefill_and_steps_equal_one_full_pass():
    gpt = _sharp_backbone()
    x = torch.randn(2, 12, 32)
    full = gpt(x)
    cache = gpt.new_cache(2, 16)
    parts = [gpt(x[:, :7], cache=cache)] + [gpt(x[:, t:t + 1], cache=cache) for t in range(7, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padded_cache_rows_equal_their_unpadded_runs():
    gpt = _sharp_backbone(1)
    x = torch.randn(2, 10, 32)
    lengths = [10, 6]  # row 1: its 6-position prompt is left-padded by 4 garbage vectors
    key_mask = torch.ones(2, 14, dtype=torch.bool)
    key_mask[1, :4] = False
    cache = gpt.new_cache(2, 14)
    steps = torch.randn(2, 4, 32)
    outs = [gpt(x, key_mask=key_mask, cache=cache)[:, -1:]]
    outs += [gpt(steps[:, t:t + 1], key_mask=key_mask, cache=cache) for t in range(4)]
    got = torch.cat(outs, dim=1)  # (2, 5, D): last prompt position, then 4 decode steps
    for b, n in enumerate(lengths):
        alone = gpt(torch.cat([x[b:b + 1, 10 - n:], steps[b:b + 1]], dim=1))[:, n - 1:]
        torch.testing.assert_close(got[b:b + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", [[2, 2, 0], [0, 2, 1], [0, 0, 2], [0, 1, 2], [1, 2, 0], [0, 0, 1], [2, 0, 0]])
@torch.no_grad()
def test_cache_reorder_follows_the_selected_rows(order):
    gpt = _sharp_backbone(2)
    x, step = torch.randn(3, 5, 32), torch.randn(3, 1, 32)
    cache = gpt.new_cache(3, 8)
    gpt(x, cache=cache)
    order = torch.tensor(order)
    cache.reorder(order)
    got = gpt(step, cache=cache)
    want = gpt(torch.cat([x[order], step], dim=1))[:, -1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_dropout_is_active_only_in_train_mode(tiny, base_inputs):
    model = _load_tiny_copy(tiny)
    args = _batch(base_inputs)
    with torch.no_grad():
        model.train()
        a, b = model(*args)[1], model(*args)[1]
        model.eval()
        c = model(*args)[1]
        want = tiny(*args)[1]  # the model it was copied from, in eval mode
    assert a != b
    torch.testing.assert_close(c, want, rtol=1e-5, atol=0)


def _load_tiny_copy(tiny) -> UnifiedVoice:
    model = UnifiedVoice(tiny.cfg)
    model.load_state_dict(tiny.state_dict())
    return model


def test_copy_plan_moves_every_row_map_of_four_rows_in_place():
    """Replaying the plan on a list gives the gather's result for each of the 4**4 maps; no row is copied
    that keeps its place, and each changed row is written once."""
    from itertools import product

    from tagtune.models.gpt2 import copy_plan

    rows = list(range(4))
    for index in product(rows, repeat=4):
        kept, plan = copy_plan(rows, list(index))
        state = [f"row{r}" for r in rows]
        copies = {r: state[r] for r in kept}
        for d, s in plan:
            state[d] = state[s] if s >= 0 else copies[-1 - s]
        assert state == [f"row{index[r]}" for r in rows], index
        assert sorted(d for d, _ in plan) == [r for r in rows if index[r] != r], index


def test_reorder_from_a_start_leaves_the_positions_before_it():
    from tagtune.models.gpt2 import KVCache

    cache = KVCache(2, 3, 2, 8, 4, dtype=torch.float32, device="cpu")
    for t in cache.k + cache.v:
        t.copy_(torch.randn_like(t))
    cache.length = 6
    before = [t.clone() for t in cache.k + cache.v]
    index = torch.tensor([2, 0, 0])
    cache.reorder(index, start=3)
    for old, new in zip(before, cache.k + cache.v):
        assert torch.equal(new[:, :, :3], old[:, :, :3])  # the shared prompt: not moved
        assert torch.equal(new[:, :, 3:6], old[index, :, 3:6])
        assert torch.equal(new[:, :, 6:], old[:, :, 6:])  # past the filled length: untouched
