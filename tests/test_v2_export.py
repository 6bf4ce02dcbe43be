"""Export of a tag run on an IndexTTS-2 base: the official IndexTTS-2 layout (exact gpt.pth key set, grown text
rows, number_text_tokens, s2mel/statistics/emotion matrices/auxiliary models carried over) and the PEFT adapter.

The run is made here as training leaves one (run.json + a ``best`` weights folder written by
``train.run.write_weights``) from LoRA applied with ``lora.apply_lora`` to the v2 GPT grown by ``grow_base``,
with non-zero LoRA and tag rows so that the adapter changes every logit.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import read_key_list
from tagtune import lora
from tagtune.checkpoint import folder_fingerprint, read_state_dict
from tagtune.config import v2
from tagtune.export import export, official_shapes
from tagtune.loaders import LoadedModelV2, load_model
from tagtune.tags.add import add_tags
from tagtune.tags.rows import TEXT_KEYS, TagInit, grow_base, grow_for_adapter, set_tag_rows
from v2_fixture import V2_CHECKPOINT, require_keys, require_v2

TAGS = ["<giggles>", "<sighs>"]
BASE_TOKENS = 224
LOGIT_TOL = 5e-5  # merged weights vs LoRA applied on the fly: fp32 rounding only (logits reach ~12; the
# rounding depends on the thread count, measured up to 1.1e-5)
CARRIED = {"s2mel.pth", "wav2vec2bert_stats.pt", "feat1.pt", "feat2.pt"}


def _tuned_gpt():
    """The grown v2 GPT with a rank-4 adapter whose every part is non-zero (as after some training)."""
    gpt, cfg, new_ids = grow_base(V2_CHECKPOINT, TAGS, TagInit("mean", 0))
    lora.apply_lora(gpt, lora.LoraSpec(rank=4, alpha=8.0, dropout=0.0), new_ids)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        D = cfg.gpt.model_dim
        set_tag_rows(gpt, new_ids, {"text_embedding.weight": torch.randn(2, D, generator=g),
                                    "text_head.weight": torch.randn(2, D, generator=g),
                                    "text_head.bias": torch.randn(2, generator=g)})
    return gpt.eval(), cfg, new_ids


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, tuned GPT with its adapter, new token ids)."""
    from tagtune.train.run import write_weights

    require_v2()
    root = tmp_path_factory.mktemp("v2run")
    text_side = add_tags(V2_CHECKPOINT, TAGS, root / "text").out_dir  # the tokenizer and tags.json of the run
    gpt, cfg, new_ids = _tuned_gpt()
    run_dir = root / "run"
    meta = {"tag_names": TAGS, "new_token_ids": new_ids, "mode": "lora",
            "number_text_tokens": cfg.gpt.number_text_tokens, "base_fingerprint": folder_fingerprint(V2_CHECKPOINT)}
    write_weights(gpt, run_dir / "best", meta, text_side / "bpe.model", text_side / "tags.json", "lora")
    info = {"mode": "lora", "base": {"dir": str(V2_CHECKPOINT), "fingerprint": folder_fingerprint(V2_CHECKPOINT)},
            "data": {"dir": "none"}, "tag_names": TAGS, "new_token_ids": new_ids,
            "number_text_tokens": cfg.gpt.number_text_tokens, "versions": {}}
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir, gpt, new_ids


def _inputs(gpt):
    """Teacher-forcing inputs with a tagged text: speaker latents, emotion vector, text, codes (all batch 2)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        spk = torch.randn(2, 30, 1024, generator=g)
        conds, emovec = gpt.get_conditioning(spk), gpt.get_emovec(spk)
    text = torch.tensor([[5, 9, BASE_TOKENS, 40, 7], [12, BASE_TOKENS + 1, 3, 1, 1]])
    codes = torch.randint(0, 256, (2, 6), generator=g)
    return conds, emovec, text, torch.tensor([5, 3]), codes, torch.tensor([6, 4])


def _logits(gpt, args):
    with torch.no_grad():
        out = gpt.logits(*args)
    return out.text_logits, out.mel_logits


def _assert_same_logits(got_gpt, want_gpt, exact: bool = False):
    args = _inputs(want_gpt)
    for got, want in zip(_logits(got_gpt, args), _logits(want_gpt, args)):
        if exact:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=LOGIT_TOL, atol=LOGIT_TOL)


def _merged_in_memory(tuned):
    """The tuned GPT with its adapter folded in, as a plain UnifiedVoiceV2 built in memory."""
    from tagtune.checkpoint import build_gpt, load_into

    return load_into(build_gpt(tuned.cfg), lora.merge(tuned), "in memory").eval()


def test_full_size_v2_layout_equals_the_official_one_with_grown_text_rows():
    keys = require_keys()
    cfg = v2().gpt
    cfg.number_text_tokens += 2
    ours = official_shapes(cfg)
    official = read_key_list(keys / "sd_gpt_v2.txt")
    assert set(ours) == set(official)
    for key, (shape, _) in official.items():
        assert ours[key] == ((12003,) + shape[1:] if key in TEXT_KEYS else shape), key


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory):
    return export(run[0], tmp_path_factory.mktemp("v2export") / "merged")


def test_merged_v2_folder_has_the_official_layout(merged):
    names = {p.name for p in merged.iterdir()}
    assert names == {"config.yaml", "gpt.pth", "bpe.model", "tags.json", "provenance.json", "hf_cache"} | CARRIED
    for name in CARRIED:
        assert (merged / name).read_bytes() == (V2_CHECKPOINT / name).read_bytes()
    cfg = yaml.safe_load((merged / "config.yaml").read_text())
    base_cfg = yaml.safe_load((V2_CHECKPOINT / "config.yaml").read_text())
    assert cfg["gpt"]["number_text_tokens"] == BASE_TOKENS + 2
    assert cfg["s2mel"] == base_cfg["s2mel"] and cfg["semantic_codec"] == base_cfg["semantic_codec"]
    state = torch.load(merged / "gpt.pth", weights_only=True)  # what the official loader does
    base = torch.load(V2_CHECKPOINT / "gpt.pth", weights_only=True)
    assert set(state) == set(base)
    for key, t in state.items():
        want = (BASE_TOKENS + 3,) + tuple(base[key].shape[1:]) if key in TEXT_KEYS else tuple(base[key].shape)
        assert tuple(t.shape) == want and t.dtype == torch.float32, key
    assert json.loads((merged / "provenance.json").read_text())["format"] == "indextts-merged"


def test_merged_v2_folder_loads_strictly_with_the_adapters_logits(run, merged):
    _, tuned, new_ids = run
    m = load_model(merged)
    assert isinstance(m, LoadedModelV2) and m.config.gpt.number_text_tokens == BASE_TOKENS + 2
    m.check_vocabulary()
    assert m.tokenizer.encode("so <giggles> funny").count(new_ids[0]) == 1
    plain = m.gpt  # strict load (load_into names every missing, unexpected or mis-shaped key)
    rows = {k: read_state_dict(merged / "gpt.pth")[k][new_ids] for k in TEXT_KEYS}
    assert torch.equal(rows["text_head.bias"], lora.trainable_head(tuned).bias[new_ids].detach())
    _assert_same_logits(plain, _merged_in_memory(tuned), exact=True)  # the written weights, bit for bit
    _assert_same_logits(plain, tuned)  # the adapter applied on the fly


def test_merged_v2_export_in_fp16_halves_the_weights(run, tmp_path):
    out = export(run[0], tmp_path / "fp16", dtype="fp16")
    state = torch.load(out / "gpt.pth", weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    load_model(out).gpt  # noqa: B018 - loads strictly into fp32


@pytest.fixture(scope="module")
def adapter(run, tmp_path_factory):
    return export(run[0], tmp_path_factory.mktemp("v2adapter") / "adapter", adapter_only=True)


def test_v2_adapter_is_in_peft_format_with_the_tag_rows(adapter):
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        delta = f.get_tensor("base_model.model.text_embedding.token_adapter.trainable_tokens_delta")
    assert keys and all(k.startswith("base_model.model.") for k in keys)
    assert any(".lora_A." in k for k in keys) and "base_model.model.text_head.weight" in keys
    assert delta.shape == (2, 64)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"text_embedding": [BASE_TOKENS, BASE_TOKENS + 1]}
    assert config["base_model_name_or_path"] == str(V2_CHECKPOINT)


def test_v2_adapter_loads_on_its_base_with_tagtune_and_stock_peft(run, adapter):
    from peft import PeftModel

    _, tuned, _ = run
    m = load_model(V2_CHECKPOINT, adapter=adapter)
    assert isinstance(m, LoadedModelV2) and m.config.gpt.number_text_tokens == BASE_TOKENS + 2
    m.check_vocabulary()
    _assert_same_logits(m.gpt, tuned)
    base = load_model(V2_CHECKPOINT).gpt
    grow_for_adapter(base, adapter)
    stock = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    _assert_same_logits(stock, tuned)


def test_synthesis_opens_a_v2_base_with_the_adapter(adapter):
    from tagtune.synthesis.tts import TTS
    from tagtune.synthesis.tts_v2 import TTSV2

    tts = TTS.load(V2_CHECKPOINT, adapter, device="cpu", precision="fp32")
    assert isinstance(tts, TTSV2) and tts.known_tags == TAGS
    assert any(BASE_TOKENS + 1 in ids for ids in tts.sentences("Well, that is funny <sighs> really."))
