"""IndexTTS2 s2mel (gpt_layer, length regulator, DiT + CFM sampling) and the CAMPPlus style against the
indextts2-tiny fixture; strict loads and the full-size official key sets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tagtune.checkpoint import CheckpointError, load_campplus, load_s2mel, read_config_v2
from tagtune.config import ConfigError, v2
from tagtune.folders import CAMPPLUS_FILE
from tagtune.models.v2.campplus import CAMPPlus
from tagtune.models.v2.s2mel import S2Mel, seeded_noise
from v2_fixture import (
    ATOL,
    RUN_SPEAKER,
    V2_AUX,
    V2_CHECKPOINT,
    assert_close,
    assert_official_keys,
    expected,
    require_v2,
)

CFM_SEED = 1234  # the fixture's torch.manual_seed before every CFM.inference
RUNS = sorted(RUN_SPEAKER)


@pytest.fixture(scope="module")
def cfg():
    require_v2()
    return read_config_v2(V2_CHECKPOINT)


@pytest.fixture(scope="module")
def s2mel(cfg):
    return load_s2mel(V2_CHECKPOINT, cfg)


def _frames(ref: str) -> torch.Tensor:
    return torch.tensor([expected(f"{ref}_ref_mel").shape[-1]])


@pytest.mark.parametrize("ref", ["a", "b"])
def test_prompt_condition(s2mel, ref):
    with torch.no_grad():
        got = s2mel.content(expected(f"{ref}_S_ref"), _frames(ref))
    assert_close(f"{ref}_prompt_condition", got, expected(f"{ref}_prompt_condition"), ATOL)


@pytest.mark.parametrize("run", RUNS)
def test_semantic_and_condition(s2mel, run):
    with torch.no_grad():
        assert_close(f"{run}_gpt_layer_out", s2mel.gpt_layer(expected(f"{run}_latent")),
                     expected(f"{run}_gpt_layer_out"), ATOL)
        s_infer = s2mel.semantic(expected(f"{run}_vq2emb"), expected(f"{run}_latent"))
        assert_close(f"{run}_S_infer", s_infer, expected(f"{run}_S_infer"), ATOL)
        cond = s2mel.content(expected(f"{run}_S_infer"), expected(f"{run}_target_lengths"))
    assert_close(f"{run}_cond", cond, expected(f"{run}_cond"), ATOL)


@pytest.mark.parametrize("run", RUNS)
def test_seeded_noise_is_the_official_draw(run):
    want = expected(f"{run}_cfm_noise")
    state = torch.random.get_rng_state()
    assert torch.equal(seeded_noise(want.shape[-1], CFM_SEED), want)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone


def _mu(run: str) -> torch.Tensor:
    ref = RUN_SPEAKER[run]
    return torch.cat([expected(f"{ref}_prompt_condition"), expected(f"{run}_cond")], dim=1)


@pytest.mark.parametrize("run", ["a_en", "b_emoref_en"])
def test_first_step_guided_pair(s2mel, run):
    ref, noise, mu = RUN_SPEAKER[run], expected(f"{run}_cfm_noise"), _mu(run)
    prompt = expected(f"{ref}_ref_mel")
    prompt_x, x = torch.zeros_like(noise), noise.clone()
    prompt_x[..., : prompt.shape[-1]] = prompt
    x[..., : prompt.shape[-1]] = 0
    with torch.no_grad():
        got = s2mel.cfm.guided_pair(x, prompt_x, torch.tensor([mu.shape[1]]), torch.tensor(0.0),
                                    expected(f"{ref}_style"), mu)
    assert_close(f"{run}_dit_out_step1", got, expected(f"{run}_dit_out_step1"), ATOL)


@pytest.mark.parametrize("run", RUNS)
def test_cfm_sampling(s2mel, run):
    ref = RUN_SPEAKER[run]
    with torch.no_grad():
        mel = s2mel.generate(expected(f"{ref}_prompt_condition"), expected(f"{run}_cond"), expected(f"{ref}_ref_mel"),
                             expected(f"{ref}_style"), expected(f"{run}_cfm_noise"))
    assert_close(f"{run}_vc_target", mel, expected(f"{run}_vc_target"), ATOL)


def test_cfm_full_output_has_zero_prompt_frames(s2mel):
    run, ref = "a_zh", "a"
    mu = _mu(run)
    with torch.no_grad():
        full = s2mel.cfm.inference(mu, torch.tensor([mu.shape[1]]), expected(f"{ref}_ref_mel"),
                                   expected(f"{ref}_style"), expected(f"{run}_cfm_noise"))
    assert_close(f"{run}_vc_target_full", full, expected(f"{run}_vc_target_full"), ATOL)
    assert (full[..., : _frames(ref).item()] == 0).all()


def test_sampling_depends_on_style_and_noise(s2mel):
    ref, run = "a", "a_en"
    args = (expected(f"{ref}_prompt_condition"), expected(f"{run}_cond"), expected(f"{ref}_ref_mel"))
    style, noise = expected(f"{ref}_style"), expected(f"{run}_cfm_noise")
    with torch.no_grad():
        base = s2mel.generate(*args, style, noise, n_timesteps=4)
        other_style = s2mel.generate(*args, expected("b_style"), noise, n_timesteps=4)
        other_noise = s2mel.generate(*args, style, seeded_noise(noise.shape[-1], 7), n_timesteps=4)
    assert (base - other_style).abs().max() > 1e-2 and (base - other_noise).abs().max() > 1e-2


@pytest.mark.parametrize("ref", ["a", "b"])
def test_campplus_style(cfg, ref):
    model = load_campplus(V2_AUX / CAMPPLUS_FILE, cfg)
    with torch.no_grad():
        got = model(expected(f"{ref}_fbank")[None])
    assert_close(f"{ref}_style", got, expected(f"{ref}_style"), ATOL)


def test_s2mel_file_without_a_part_is_refused(tmp_path, cfg):
    net = torch.load(V2_CHECKPOINT / cfg.s2mel_checkpoint, weights_only=True)["net"]
    del net["gpt_layer"]
    torch.save({"net": net}, tmp_path / cfg.s2mel_checkpoint)
    with pytest.raises(CheckpointError, match="gpt_layer"):
        load_s2mel(tmp_path, cfg)


def test_s2mel_shape_mismatch_names_the_key(tmp_path, cfg):
    net = torch.load(V2_CHECKPOINT / cfg.s2mel_checkpoint, weights_only=True)["net"]
    net["gpt_layer"]["0.weight"] = torch.zeros(256, 1280)  # a full-size GPT's layer in a tiny folder
    torch.save({"net": net}, tmp_path / cfg.s2mel_checkpoint)
    with pytest.raises(CheckpointError, match=r"gpt_layer\.0\.weight: file has shape \(256, 1280\)"):
        load_s2mel(tmp_path, cfg)


@pytest.mark.parametrize("section, change", [("DiT", {"is_causal": True}), ("DiT", {"time_as_token": True}),
                                             ("length_regulator", {"is_discrete": True})])
def test_unsupported_s2mel_options_are_refused(section, change):
    s2 = v2().s2mel
    setattr(s2, section, dataclasses.replace(getattr(s2, section), **change))
    with pytest.raises(ConfigError, match=next(iter(change))):
        S2Mel(s2)


def test_full_size_keys_match_official():
    with torch.device("meta"):
        state = S2Mel(v2().s2mel).state_dict()
        campplus = CAMPPlus().state_dict()
    for part, dump in [("cfm", "sd_s2mel_v2_cfm.txt"), ("length_regulator", "sd_s2mel_v2_length_regulator.txt"),
                       ("gpt_layer", "sd_s2mel_v2_gpt_layer.txt")]:
        assert_official_keys({k[len(part) + 1:]: t for k, t in state.items() if k.startswith(part + ".")}, dump)
    assert_official_keys(campplus, "sd_campplus_v2.txt")


def test_batched_rows_equal_single_rows(s2mel):
    """Two references of one length sampled as one batch give each row's single-row result."""
    run = "a_en"
    prompt_condition, ref_mel = expected("a_prompt_condition"), expected("a_ref_mel")
    style, noise = torch.cat([expected("a_style"), expected("b_style")]), expected(f"{run}_cfm_noise")
    noise2 = torch.cat([noise, seeded_noise(noise.shape[-1], 5)])
    cond = expected(f"{run}_cond").expand(2, -1, -1)
    with torch.no_grad():
        batch = s2mel.generate(prompt_condition.expand(2, -1, -1), cond, ref_mel.expand(2, -1, -1), style, noise2,
                               n_timesteps=3)
        for row in range(2):
            single = s2mel.generate(prompt_condition, cond[:1], ref_mel, style[row:row + 1], noise2[row:row + 1],
                                    n_timesteps=3)
            assert_close(f"batch row {row}", batch[row:row + 1], single, 1e-5)
