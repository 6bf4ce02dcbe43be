"""LoRA wiring on the tiny fixture GPT: what trains, what stays bit-identical, merging, adapter files."""

from __future__ import annotations

import json

import pytest
import torch

from tagtune import lora
from tagtune.tags.rows import grow_base
from tagtune.loaders import load_adapter_model
from tagtune.lora import LoraSpec

TAGS = ["<laughs>", "<sighs>"]
NEW_IDS = [320, 321]


@pytest.fixture()
def grown(fixture_dir):
    torch.manual_seed(0)
    gpt, cfg, new_ids = grow_base(fixture_dir / "checkpoint", TAGS, dropout=0.0)
    return gpt, cfg, new_ids, {k: v.clone() for k, v in gpt.state_dict().items()}


def _batch(expected):
    text = expected["batch_text_ids"].clone()
    text[0, 2], text[1, 4] = NEW_IDS  # both tags inside the real text of each row
    return (expected["batch_cond_mel"], text, expected["batch_text_lengths"], expected["batch_codes"],
            expected["batch_wav_lengths"], expected["batch_cond_mel_lengths"])


def _train(gpt, batch, steps=4, settings=None):
    lora.apply_lora(gpt, settings or LoraSpec(rank=4, alpha=8), NEW_IDS)
    opt = torch.optim.AdamW(lora.param_groups(gpt, lr=1e-2, weight_decay=0.1, tag_lr_scale=5.0))
    gpt.train()
    for _ in range(steps):
        loss_text, loss_mel, _ = gpt(*batch)
        opt.zero_grad()
        (0.1 * loss_text + loss_mel).backward()
        opt.step()
    return gpt.eval(), opt


def test_grown_rows_sit_before_the_spare_row(grown, fixture_dir):
    from tagtune.checkpoint import read_state_dict

    gpt, cfg, new_ids, _ = grown
    base = read_state_dict(fixture_dir / "checkpoint" / "gpt.pth")
    assert new_ids == NEW_IDS and cfg.gpt.number_text_tokens == 322
    for key in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
        t = gpt.state_dict()[key]
        assert t.shape[0] == 323
        assert torch.equal(t[:320], base[key][:320]) and torch.equal(t[322], base[key][320])  # spare row last


def test_trainable_tensors_and_param_groups(grown):
    gpt, _, _, _ = grown
    lora.apply_lora(gpt, LoraSpec(rank=4, layers=(1,)), NEW_IDS)
    names = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert names == {"text_embedding.token_adapter.trainable_tokens_delta.default",
                     "text_head.modules_to_save.default.weight", "text_head.modules_to_save.default.bias"} | {
        f"gpt.h.1.{m}.lora_{ab}.default.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        for ab in "AB"}
    groups = lora.param_groups(gpt, lr=1e-4, weight_decay=0.01, tag_lr_scale=5.0)
    assert [(g["name"], len(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == [
        ("adapters", 8, 1e-4, 0.01), ("tag_rows", 3, pytest.approx(5e-4), 0.0)]


def test_only_lora_and_tag_rows_change_and_base_stays_bit_identical(grown, expected):
    gpt, _, _, before = grown
    gpt, _ = _train(gpt, _batch(expected))
    wrapped = gpt.state_dict()
    for key, value in wrapped.items():  # every frozen base tensor, wrapped or not, is untouched
        official = lora.official_key(key)
        if official is not None and ".modules_to_save." not in key and "token_adapter" not in key:
            assert torch.equal(value, before[official]), key
    merged = lora.merge(gpt)
    assert set(merged) == set(before)
    changed = {k for k in merged if not torch.equal(merged[k], before[k])}
    assert changed == {"text_embedding.weight", "text_head.weight", "text_head.bias"} | {
        f"gpt.h.{i}.{m}.weight" for i in (0, 1) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    old = [i for i in range(323) if i not in NEW_IDS]  # every row but the tags, spare row included
    for key in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
        assert torch.equal(merged[key][old], before[key][old]), key
        assert not torch.equal(merged[key][NEW_IDS], before[key][NEW_IDS]), key  # weight AND bias moved


def test_merged_weights_give_the_adapter_model_logits(grown, expected):
    from tagtune.models.unified_voice import UnifiedVoice

    gpt, cfg, _, _ = grown
    batch = _batch(expected)
    gpt, _ = _train(gpt, batch)
    plain = UnifiedVoice(cfg.gpt)
    plain.load_state_dict(lora.merge(gpt), strict=True)
    with torch.no_grad():
        a, b = gpt.logits(*batch), plain.eval().logits(*batch)
    torch.testing.assert_close(b.text_logits, a.text_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.mel_logits, a.mel_logits, atol=1e-4, rtol=0)


def test_untrained_adapter_changes_nothing(grown, expected):
    gpt, _, _, before = grown
    batch = _batch(expected)
    with torch.no_grad():
        ref = gpt.logits(*batch)
    lora.apply_lora(gpt, LoraSpec(rank=4), NEW_IDS)
    with torch.no_grad():
        out = gpt.logits(*batch)
    assert torch.equal(out.mel_logits, ref.mel_logits) and torch.equal(out.text_logits, ref.text_logits)
    merged = lora.merge(gpt)
    assert all(torch.equal(merged[k], before[k]) for k in before)


def test_adapter_folder_round_trip(grown, expected, fixture_dir, tmp_path):
    gpt, _, _, _ = grown
    batch = _batch(expected)
    gpt, _ = _train(gpt, batch)
    meta = {"tag_names": TAGS, "new_token_ids": NEW_IDS, "mode": "lora", "number_text_tokens": 322}
    lora.save_adapter(gpt, tmp_path / "adapter", meta, {"bpe.model": fixture_dir / "checkpoint" / "bpe.model"})
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert names == {"adapter_config.json", "adapter_model.safetensors", "tagtune_adapter.json", "bpe.model"}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["trainable_token_indices"] == {"text_embedding": NEW_IDS}
    reloaded, cfg = load_adapter_model(fixture_dir / "checkpoint", tmp_path / "adapter")
    assert cfg.gpt.number_text_tokens == 322
    with torch.no_grad():
        a, b = gpt.logits(*batch), reloaded.logits(*batch)
    assert torch.equal(a.mel_logits, b.mel_logits) and torch.equal(a.text_logits, b.text_logits)


def test_full_mode_trains_the_gpt_but_not_the_conditioning(grown):
    gpt, _, _, _ = grown
    lora.apply_lora(gpt, LoraSpec(mode="full"), NEW_IDS)
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    assert "gpt.h.0.attn.c_attn.weight" in trainable and "text_head.bias" in trainable
    assert not any(n.startswith(("conditioning_encoder", "perceiver_encoder")) for n in trainable)


def test_bad_layer_index_is_reported(grown):
    gpt, _, _, _ = grown
    with pytest.raises(ValueError, match=r"LoRA layers \[5\] out of range: the model has 2 blocks"):
        lora.apply_lora(gpt, LoraSpec(layers=(0, 5)), NEW_IDS)


def test_gradient_checkpointing_gives_the_same_gradients(grown, expected):
    gpt, _, _, _ = grown
    lora.apply_lora(gpt, LoraSpec(rank=4, dropout=0.0), NEW_IDS)
    with torch.no_grad():
        for n, p in gpt.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)  # non-zero B so that lora_A gets a gradient
    grads = []
    for checkpointing in (False, True):
        gpt.gpt.gradient_checkpointing = checkpointing
        gpt.zero_grad()
        gpt.train()
        sum(gpt(*_batch(expected))[:2]).backward()
        grads.append({n: p.grad.clone() for n, p in gpt.named_parameters() if p.requires_grad})
    assert all(grads[0][n].abs().max() > 0 for n in grads[0] if "lora_A" in n)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5, msg=n)
