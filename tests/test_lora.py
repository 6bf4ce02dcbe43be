"""LoRA wiring on the shipped base GPT: what trains, what stays bit-identical, merging, adapter files."""

from __future__ import annotations

import json

import pytest
import torch

from tagtune import lora
from tagtune.loaders import load_adapter_model
from tagtune.lora import LoraSpec
from tagtune.tags.rows import grow_base

TAGS = ["<laughs>", "<sighs>"]
TEXT_KEYS = ("text_embedding.weight", "text_head.weight", "text_head.bias")
BLOCK_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture(scope="module")
def vocab(shipped_base) -> int:
    """The base tokenizer's size: the tags get the ids right after it."""
    from tagtune.checkpoint import read_config

    return read_config(shipped_base).gpt.number_text_tokens


@pytest.fixture(scope="module")
def new_ids(vocab) -> list[int]:
    return [vocab, vocab + 1]


@pytest.fixture()
def grown(shipped_base):
    torch.manual_seed(0)
    gpt, cfg, new_ids = grow_base(shipped_base, TAGS, dropout=0.0)
    return gpt, cfg, new_ids, {k: v.clone() for k, v in gpt.state_dict().items()}


def _batch(inputs, new_ids):
    text = inputs["batch_text_ids"].clone()
    text[0, 2], text[1, 4] = new_ids  # both tags inside the real text of each row
    return (inputs["batch_cond_mel"], text, inputs["batch_text_lengths"], inputs["batch_codes"],
            inputs["batch_wav_lengths"], inputs["batch_cond_mel_lengths"])


def _train(gpt, batch, new_ids, steps=4, settings=None):
    lora.apply_lora(gpt, settings or LoraSpec(rank=4, alpha=8), new_ids)
    opt = torch.optim.AdamW(lora.param_groups(gpt, lr=1e-2, weight_decay=0.1, tag_lr_scale=5.0))
    gpt.train()
    for _ in range(steps):
        loss_text, loss_mel, _ = gpt(*batch)
        opt.zero_grad()
        (0.1 * loss_text + loss_mel).backward()
        opt.step()
    return gpt.eval(), opt


def test_grown_rows_sit_before_the_spare_row(grown, shipped_base, vocab, new_ids):
    from tagtune.checkpoint import read_state_dict

    gpt, cfg, grown_ids, _ = grown
    base = read_state_dict(shipped_base / "gpt.pth")
    assert grown_ids == new_ids and cfg.gpt.number_text_tokens == vocab + 2
    for key in TEXT_KEYS:
        t, old = gpt.state_dict()[key], base[key].to(torch.float32)
        assert t.shape[0] == vocab + 3
        assert torch.equal(t[:vocab], old[:vocab]) and torch.equal(t[vocab + 2], old[vocab])  # spare row last


def test_trainable_tensors_and_param_groups(grown, new_ids):
    gpt, _, _, _ = grown
    lora.apply_lora(gpt, LoraSpec(rank=4, layers=(1,)), new_ids)
    names = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert names == {"text_embedding.token_adapter.trainable_tokens_delta.default",
                     "text_head.modules_to_save.default.weight", "text_head.modules_to_save.default.bias"} | {
        f"gpt.h.1.{m}.lora_{ab}.default.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        for ab in "AB"}
    groups = lora.param_groups(gpt, lr=1e-4, weight_decay=0.01, tag_lr_scale=5.0)
    assert [(g["name"], len(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == [
        ("adapters", 8, 1e-4, 0.01), ("tag_rows", 3, pytest.approx(5e-4), 0.0)]


def test_only_lora_and_tag_rows_change_and_base_stays_bit_identical(grown, base_inputs, new_ids):
    gpt, _, _, before = grown
    gpt, _ = _train(gpt, _batch(base_inputs, new_ids), new_ids)
    wrapped = gpt.state_dict()
    for key, value in wrapped.items():  # every frozen base tensor, wrapped or not, is untouched
        official = lora.official_key(key)
        if official is not None and ".modules_to_save." not in key and "token_adapter" not in key:
            assert torch.equal(value, before[official]), key
    merged = lora.merge(gpt)
    assert set(merged) == set(before)
    changed = {k for k in merged if not torch.equal(merged[k], before[k])}
    assert changed == set(TEXT_KEYS) | {
        f"gpt.h.{i}.{m}.weight" for i in range(gpt.cfg.layers) for m in BLOCK_WEIGHTS}
    old = [i for i in range(before[TEXT_KEYS[0]].shape[0]) if i not in new_ids]  # all but the tags, spare included
    for key in TEXT_KEYS:
        assert torch.equal(merged[key][old], before[key][old]), key
        assert not torch.equal(merged[key][new_ids], before[key][new_ids]), key  # weight AND bias moved


def test_merged_weights_give_the_adapter_model_logits(grown, base_inputs, new_ids):
    from tagtune.models.unified_voice import UnifiedVoice

    gpt, cfg, _, _ = grown
    batch = _batch(base_inputs, new_ids)
    gpt, _ = _train(gpt, batch, new_ids)
    plain = UnifiedVoice(cfg.gpt)
    plain.load_state_dict(lora.merge(gpt), strict=True)
    with torch.no_grad():
        a, b = gpt.logits(*batch), plain.eval().logits(*batch)
    torch.testing.assert_close(b.text_logits, a.text_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.mel_logits, a.mel_logits, atol=1e-4, rtol=0)


def test_untrained_adapter_changes_nothing(grown, base_inputs, new_ids):
    gpt, _, _, before = grown
    batch = _batch(base_inputs, new_ids)
    with torch.no_grad():
        ref = gpt.logits(*batch)
    lora.apply_lora(gpt, LoraSpec(rank=4), new_ids)
    with torch.no_grad():
        out = gpt.logits(*batch)
    assert torch.equal(out.mel_logits, ref.mel_logits) and torch.equal(out.text_logits, ref.text_logits)
    merged = lora.merge(gpt)
    assert all(torch.equal(merged[k], before[k]) for k in before)


def test_adapter_folder_round_trip(grown, base_inputs, shipped_base, vocab, new_ids, tmp_path):
    gpt, _, _, _ = grown
    batch = _batch(base_inputs, new_ids)
    gpt, _ = _train(gpt, batch, new_ids)
    meta = {"tag_names": TAGS, "new_token_ids": new_ids, "mode": "lora", "number_text_tokens": vocab + 2}
    lora.save_adapter(gpt, tmp_path / "adapter", meta, {"bpe.model": shipped_base / "bpe.model"})
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert names == {"adapter_config.json", "adapter_model.safetensors", "tagtune_adapter.json", "README.md",
                     "bpe.model"}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["trainable_token_indices"] == {"text_embedding": new_ids}
    reloaded, cfg = load_adapter_model(shipped_base, tmp_path / "adapter")
    assert cfg.gpt.number_text_tokens == vocab + 2
    with torch.no_grad():
        a, b = gpt.logits(*batch), reloaded.logits(*batch)
    assert torch.equal(a.mel_logits, b.mel_logits) and torch.equal(a.text_logits, b.text_logits)


def test_full_mode_trains_the_gpt_but_not_the_conditioning(grown, new_ids):
    gpt, _, _, _ = grown
    lora.apply_lora(gpt, LoraSpec(mode="full"), new_ids)
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert "gpt.h.0.attn.c_attn.weight" in trainable and "text_head.bias" in trainable
    assert not any(n.startswith(("conditioning_encoder", "perceiver_encoder")) for n in trainable)


def test_bad_layer_index_is_reported(grown, new_ids):
    gpt, _, _, _ = grown
    blocks = gpt.cfg.layers
    with pytest.raises(ValueError, match=rf"LoRA layers \[{blocks}\] out of range: the model has {blocks} blocks"):
        lora.apply_lora(gpt, LoraSpec(layers=(0, blocks)), new_ids)


def test_gradient_checkpointing_gives_the_same_gradients(grown, base_inputs, new_ids):
    gpt, _, _, _ = grown
    lora.apply_lora(gpt, LoraSpec(rank=4, dropout=0.0), new_ids)
    with torch.no_grad():
        for n, p in gpt.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)  # non-zero B so that lora_A gets a gradient
    grads = []
    for checkpointing in (False, True):
        gpt.gpt.gradient_checkpointing = checkpointing
        gpt.zero_grad()
        gpt.train()
        sum(gpt(*_batch(base_inputs, new_ids))[:2]).backward()
        grads.append({n: p.grad.clone() for n, p in gpt.named_parameters() if p.requires_grad})
    assert all(grads[0][n].abs().max() > 0 for n in grads[0] if "lora_A" in n)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)
