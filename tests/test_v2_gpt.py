"""IndexTTS2 GPT and semantic features against the official values of the indextts2-tiny fixture.

Tolerances are the fixture README's ("Determinism and tolerances"): 1e-4 for features, conds, emotion
vectors, latents and logits; integers (codes, indices, lengths, masks) exact. Each stage is fed the fixture's
own inputs of that stage.
"""

from __future__ import annotations

import pytest
import torch

from tagtune.checkpoint import (
    CheckpointError,
    load_gpt_v2,
    load_semantic_features,
    read_config_v2,
    read_emotion_matrices,
)
from tagtune.config import v2
from tagtune.folders import W2V_BERT_DIR
from tagtune.generation.generate import GenerationConfig
from tagtune.generation.v2 import generate_codes_v2, official_v2
from tagtune.models.v2.gpt import (
    UnifiedVoiceV2,
    blend_emotion_vector,
    emotion_matrix_vector,
    emotion_rows,
    feature_width_lengths,
    scale_emotion_weights,
)
from tagtune.models.v2.semantic_features import extract_inputs
from v2_fixture import ATOL, V2_AUX, V2_CHECKPOINT, assert_close, assert_official_keys, require_v2

CONFIG_LENGTH = torch.tensor([1024])  # the official "length": the feature width, so every frame is real

# run -> (speaker, emotion prompt, text index, emo_alpha, repetition penalty, KV cache); fixture README "Runs"
RUNS = {
    "a_en": ("a", "a", 0, 1.0, 10.0, True),
    "a_zh": ("a", "a", 1, 1.0, 10.0, True),
    "a_mixed": ("a", "a", 2, 1.0, 10.0, True),
    "a_tag": ("a", "a", 3, 1.0, 10.0, True),
    "b_emoref_en": ("b", "a16", 0, 0.6, 10.0, True),
    "b_emovec_zh": ("b", "b", 1, 1.0, 10.0, True),
    "a_en_nocache": ("a", "a", 0, 1.0, 10.0, False),
    "a_en_rep1": ("a", "a", 0, 1.0, 1.0, True),
}
FULL_RUNS = ["a_en", "a_zh", "a_mixed", "a_tag", "b_emoref_en", "b_emovec_zh"]


@pytest.fixture(scope="module")
def v2_dir():
    return require_v2()


@pytest.fixture(scope="module")
def v2_expected(v2_dir):
    from safetensors.torch import load_file

    return load_file(str(v2_dir / "expected.safetensors"))


@pytest.fixture(scope="module")
def v2_cfg(v2_dir):
    return read_config_v2(V2_CHECKPOINT)


@pytest.fixture(scope="module")
def gpt(v2_dir, v2_cfg):
    return load_gpt_v2(V2_CHECKPOINT, v2_cfg)


@pytest.fixture(scope="module")
def features(v2_dir, v2_cfg):
    return load_semantic_features(V2_AUX / W2V_BERT_DIR, V2_CHECKPOINT, v2_cfg)


@pytest.fixture(scope="module")
def extractor(v2_dir):
    from transformers import SeamlessM4TFeatureExtractor

    return SeamlessM4TFeatureExtractor.from_pretrained(V2_AUX / W2V_BERT_DIR, local_files_only=True)


def near(got, want, atol=ATOL):
    assert_close("", got, want, atol)


def spk_emb(e, who):
    return e[f"{who}_spk_cond_emb"]


def emo_emb(e, who):
    return e[f"{who}_emo_cond_emb"]


# ------------------------------------------------------------------------------------------ full-size keys


def test_full_size_gpt_has_the_official_keys_and_shapes():
    """665 tensors, 871.10 M values (parameters and stored buffers), as official-keys/v2 lists them."""
    with torch.device("meta"):
        model = UnifiedVoiceV2(v2().gpt)
    assert_official_keys(model.state_dict(), "sd_gpt_v2.txt")


def test_fixture_gpt_loads_strictly_and_a_wrong_width_is_named(v2_dir, v2_cfg, gpt, tmp_path):
    assert len(gpt.state_dict()) == 184
    import dataclasses

    wrong = dataclasses.replace(v2_cfg, gpt=dataclasses.replace(v2_cfg.gpt, model_dim=128, heads=4))
    with pytest.raises(CheckpointError, match="text_embedding.weight|model expects"):
        load_gpt_v2(V2_CHECKPOINT, wrong)


# ------------------------------------------------------------------------------------- semantic features


@pytest.mark.parametrize("who", ["a", "b"])
def test_speaker_features_match_official(extractor, features, v2_expected, who):
    e = v2_expected
    feats, mask = extract_inputs(extractor, e[f"{who}_audio_16k"])
    near(feats, e[f"{who}_input_features"])
    assert torch.equal(mask, e[f"{who}_attention_mask"])
    with torch.no_grad():
        near(features.hidden_state(e[f"{who}_input_features"], e[f"{who}_attention_mask"]),
                     e[f"{who}_w2v_hidden_state_k"])
        near(features(e[f"{who}_input_features"], e[f"{who}_attention_mask"]), spk_emb(e, who))


@pytest.mark.parametrize("who", ["a", "a16", "b"])
def test_emotion_features_match_official(extractor, features, v2_expected, who):
    e = v2_expected
    feats, mask = extract_inputs(extractor, e[f"{who}_emo_audio_16k"])
    near(feats, e[f"{who}_emo_input_features"])
    assert torch.equal(mask, e[f"{who}_emo_attention_mask"])
    with torch.no_grad():
        near(features(feats, mask), emo_emb(e, who))


def test_odd_frame_count_pads_a_masked_row_with_the_padding_value(extractor, v2_expected):
    """Ref A has an odd fbank frame count: its last row pairs a real frame with padding value 1 and is masked."""
    feats, mask = extract_inputs(extractor, v2_expected["a_audio_16k"])
    assert mask[0, -1] == 0 and mask[0, :-1].all()
    assert torch.all(feats[0, -1, 80:] == extractor.padding_value)


def test_padded_feature_batch_rows_equal_their_single_runs(extractor, features, v2_expected):
    """A batch pads shorter rows with the padding value and masks them; real rows keep their values."""
    e = v2_expected
    feats, mask = extract_inputs(extractor, [e["a_audio_16k"], e["b_audio_16k"]])
    assert mask.sum(1).tolist() == [136, 154]
    assert torch.all(feats[0, 137:] == extractor.padding_value)
    with torch.no_grad():
        out = features(feats, mask)
    near(out[0, :137], spk_emb(e, "a")[0])
    near(out[1], spk_emb(e, "b")[0])


def test_semantic_feature_files_fail_with_one_clear_error(v2_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="no w2v-BERT 2.0 folder here"):
        load_semantic_features(tmp_path, V2_CHECKPOINT, v2_cfg)
    torch.save({"mean": torch.zeros(10), "var": torch.ones(10)}, tmp_path / v2_cfg.w2v_stat)
    with pytest.raises(CheckpointError, match=r"wav2vec2bert_stats.pt: expected \{'mean', 'var'\} of shape \(1024,\)"):
        load_semantic_features(V2_AUX / W2V_BERT_DIR, tmp_path, v2_cfg)


def test_features_are_cut_after_the_layer_used(features, v2_cfg):
    assert features.hidden_layer == v2_cfg.sizes.w2v_bert_hidden_layer == 1
    assert len(features.model.encoder.layers) == 1


# ------------------------------------------------------------------------------------ conditioning


def test_speaker_conditioning_matches_official(gpt, v2_expected):
    e = v2_expected
    with torch.no_grad():
        conformer_out, _ = gpt.conditioning_encoder(spk_emb(e, "a"), CONFIG_LENGTH)
        near(conformer_out, e["a_spk_conformer_out"])
        near(gpt.get_conditioning(spk_emb(e, "a"), CONFIG_LENGTH), e["a_conds"])
        near(gpt.get_conditioning(spk_emb(e, "b"), CONFIG_LENGTH), e["b_emoref_en_conds"])


def test_emotion_conditioning_matches_official(gpt, v2_expected):
    e = v2_expected
    with torch.no_grad():
        conformer_out, _ = gpt.emo_conditioning_encoder(emo_emb(e, "a"), CONFIG_LENGTH)
        near(conformer_out, e["a_emo_conformer_out"])
        near(gpt.get_emo_conditioning(emo_emb(e, "a"), CONFIG_LENGTH), e["a_emo_perceiver_out"])
        for who in ("a", "b"):
            near(gpt.get_emovec(spk_emb(e, who), CONFIG_LENGTH), e[f"{who}_spk_emovec_raw"])
        for who in ("a", "a16", "b"):
            near(gpt.get_emovec(emo_emb(e, who), CONFIG_LENGTH), e[f"{who}_emovec_raw"])


def test_without_lengths_every_frame_is_real(gpt, v2_expected):
    with torch.no_grad():
        assert torch.equal(gpt.get_conditioning(spk_emb(v2_expected, "a")),
                           gpt.get_conditioning(spk_emb(v2_expected, "a"), CONFIG_LENGTH))


@pytest.mark.parametrize("run", FULL_RUNS)
def test_merged_emotion_vector_matches_official(gpt, v2_expected, run):
    e = v2_expected
    spk, emo, _, alpha, _, _ = RUNS[run]
    with torch.no_grad():
        merged = gpt.merge_emovec(spk_emb(e, spk), emo_emb(e, emo), CONFIG_LENGTH, CONFIG_LENGTH, alpha)
    if run == "b_emovec_zh":
        near(merged, e["b_emovec_zh_emovec_merged"])
    else:
        near(merged, e[f"{run}_emovec"])


def test_emotion_vector_mix_matches_official(v2_dir, v2_cfg, v2_expected):
    e = v2_expected
    spk_matrix, emo_matrix = read_emotion_matrices(V2_CHECKPOINT, v2_cfg)
    weights = e["b_emovec_zh_emo_weight_vector"]
    rows = emotion_rows(e["b_style"], spk_matrix, v2_cfg.emo_num)
    assert torch.equal(rows, e["b_emovec_zh_spk_matrix_index"])
    mat = emotion_matrix_vector(weights, rows, emo_matrix, v2_cfg.emo_num)
    near(mat, e["b_emovec_zh_emovec_mat"])
    near(blend_emotion_vector(mat, weights, e["b_emovec_zh_emovec_merged"]), e["b_emovec_zh_emovec"])


def test_emotion_weights_scale_like_the_official_code():
    assert scale_emotion_weights([0.3, 0.2], 1.0) == [0.3, 0.2]
    assert scale_emotion_weights([0.3, 0.2], 2.0) == [0.3, 0.2]  # alpha clamped to 1
    assert scale_emotion_weights([0.33333, 0.2], 0.5) == [0.1666, 0.1]  # truncated to 4 decimals
    assert scale_emotion_weights([0.3], -1.0) == [0.0]


def test_padded_batch_conditioning_matches_official(gpt, v2_expected):
    """True lengths in a zero-padded batch: the official conformer leaks padding into row 0 (kept)."""
    e = v2_expected
    lengths = e["batch_cond_lengths"]
    batch = torch.zeros(2, int(lengths.max()), 1024)
    batch[0, : lengths[0]] = spk_emb(e, "a")[0]
    batch[1, : lengths[1]] = spk_emb(e, "b")[0]
    with torch.no_grad():
        conds = gpt.get_conditioning(batch, lengths)
        near(conds, e["batch_conds"])
        near(gpt.get_emovec(batch, lengths), e["batch_emovec"])
        assert (conds[0] - e["a_conds"][0]).abs().max() > 1e-5  # the leak is real, not a copy of a_conds
        masked = gpt.get_conditioning(batch, lengths, mask_padding=True)
        alone = gpt.get_conditioning(spk_emb(e, "a"), lengths[:1])
    near(masked[0], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------------------- GPT passes


def test_teacher_forced_logits_and_latents_match_official(gpt, v2_expected):
    e = v2_expected
    args = (e["tf_conds"], e["tf_emovec"], e["tf_text_ids"], e["tf_text_lengths"], e["tf_codes"],
            e["tf_code_lengths"])
    with torch.no_grad():
        out = gpt.logits(*args)
        latent = gpt(*args)
    near(out.text_logits, e["tf_text_logits"])
    near(out.mel_logits, e["tf_mel_logits"])
    near(latent, e["tf_latent"])
    assert torch.equal(out.mel_targets[1, 22:], torch.full((10,), gpt.cfg.stop_mel_token))


@pytest.mark.parametrize("run", FULL_RUNS)
def test_latent_pass_matches_official(gpt, v2_expected, run):
    e = v2_expected
    text = e[f"text_ids_{RUNS[run][2]}"]
    codes = e[f"{run}_codes"]
    with torch.no_grad():
        latent = gpt(e[f"{run}_conds"], e[f"{run}_emovec"], text, torch.tensor([text.shape[1]]), codes,
                     torch.tensor([codes.shape[1]]))
    near(latent, e[f"{run}_latent"])


@pytest.mark.parametrize("run", list(RUNS))
def test_greedy_codes_match_official_exactly(gpt, v2_expected, run):
    e = v2_expected
    spk, _, text_index, _, penalty, cache = RUNS[run]
    cfg = GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=penalty, max_new_tokens=40,
                           position_mode="official" if cache else "train", use_cache=cache)
    out = generate_codes_v2(gpt, spk_emb(e, spk), e[f"text_ids_{text_index}"], e[f"{run}_emovec"], cfg,
                            spk_lengths=CONFIG_LENGTH)
    assert torch.equal(out.codes, e[f"{run}_codes_raw"])
    near(out.conds, e[f"{run}_conds"])
    if f"{run}_code_lens" in e:
        assert torch.equal(out.lengths, e[f"{run}_code_lens"])


def test_codes_from_audio_through_our_own_features_match_official(extractor, features, gpt, v2_expected):
    """The GPT side chained: 16 kHz audio -> our features -> our emotion vector -> greedy codes (exact)."""
    e = v2_expected
    with torch.no_grad():
        spk = features(*extract_inputs(extractor, e["a_audio_16k"]))
        emo = features(*extract_inputs(extractor, e["a_emo_audio_16k"]))
        emovec = gpt.merge_emovec(spk, emo, feature_width_lengths(spk), feature_width_lengths(emo))
    cfg = GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=10.0, max_new_tokens=40)
    out = generate_codes_v2(gpt, spk, e["text_ids_0"], emovec, cfg, spk_lengths=feature_width_lengths(spk))
    assert torch.equal(out.codes, e["a_en_codes_raw"])


def test_official_v2_decoding_defaults():
    cfg = official_v2()
    assert (cfg.do_sample, cfg.num_beams, cfg.top_k, cfg.top_p) == (True, 3, 30, 0.8)
    assert (cfg.temperature, cfg.repetition_penalty, cfg.max_new_tokens) == (0.8, 10.0, 1500)
    assert cfg.beam_sample_from_first


def test_official_beam_sampling_reproduces_the_seeded_official_run(gpt, v2_expected):
    """Default decoding (3-beam sampling, T 0.8, top-k 30, top-p 0.8) after torch.manual_seed(1234), as the
    fixture's official run drew it (transformers 4.52 beam sampling: step 1 samples from beam 0 alone)."""
    e = v2_expected
    torch.manual_seed(1234)
    out = generate_codes_v2(gpt, spk_emb(e, "a"), e["text_ids_0"], e["a_en_emovec"], official_v2(max_new_tokens=40),
                            spk_lengths=CONFIG_LENGTH)
    assert torch.equal(out.codes, e["a_en_codes_beam3_sample_seed1234"])


# ------------------------------------------------------------------------- random tiny model (no fixture)


@pytest.fixture(scope="module")
def tiny_v2():
    from tagtune.config import ConditionConfig, GPTV2Config

    torch.manual_seed(0)
    cfg = GPTV2Config(model_dim=32, layers=2, heads=2, max_mel_tokens=40, max_text_tokens=20, number_text_tokens=30,
                      number_mel_codes=52, start_mel_token=50, stop_mel_token=51,
                      condition_module=ConditionConfig(16, 32, 2, 1, "conv2d2", 2),
                      emo_condition_module=ConditionConfig(16, 32, 2, 1, "conv2d2", 0.25))
    model = UnifiedVoiceV2(cfg).eval()
    with torch.no_grad():
        model.speed_emb.weight.normal_()  # the official zero init would hide the row order
        model.mel_head.weight.mul_(20)  # decisive logits: fp32 noise never flips a greedy choice
    return model


def test_prefix_is_latents_plus_emotion_then_speed_rows_one_and_zero(tiny_v2):
    conds, emovec = torch.randn(1, 32, 32), torch.randn(2, 32)
    prefix = tiny_v2.conditioning_prefix(conds, emovec)
    assert prefix.shape == (2, 34, 32)
    assert torch.equal(prefix[1, :32], conds[0] + emovec[1])
    assert torch.equal(prefix[0, 32], tiny_v2.speed_emb.weight[1])
    assert torch.equal(prefix[0, 33], tiny_v2.speed_emb.weight[0])


def test_masked_batch_latents_equal_unpadded_runs(tiny_v2):
    torch.manual_seed(1)
    conds, emovec = torch.randn(2, 32, 32), torch.randn(2, 32)
    text, codes = torch.randint(2, 30, (2, 7)), torch.randint(0, 50, (2, 9))
    text_lengths, code_lengths = torch.tensor([7, 4]), torch.tensor([9, 5])
    with torch.no_grad():
        batch = tiny_v2(conds, emovec, text, text_lengths, codes, code_lengths, mask_padding=True)
        for b in range(2):
            t, c = text[b : b + 1, : text_lengths[b]], codes[b : b + 1, : code_lengths[b]]
            alone = tiny_v2(conds[b : b + 1], emovec[b : b + 1], t, text_lengths[b : b + 1], c, code_lengths[b : b + 1])
            assert (batch[b, : code_lengths[b]] - alone[0]).abs().max() < 1e-5


def test_cache_and_full_recompute_give_the_same_codes(tiny_v2):
    torch.manual_seed(2)
    spk, emovec, text = torch.randn(1, 30, 1024), torch.randn(1, 32), torch.randint(2, 30, (1, 6))
    runs = []
    for cache in (True, False):
        cfg = GenerationConfig.greedy(max_new_tokens=12, position_mode="train", use_cache=cache)
        runs.append(generate_codes_v2(tiny_v2, spk, text, emovec, cfg).codes)
    assert torch.equal(runs[0], runs[1])
    official = generate_codes_v2(tiny_v2, spk, text, emovec, GenerationConfig.greedy(max_new_tokens=12)).codes
    assert not torch.equal(official, runs[0])  # the skipped mel position changes what follows
