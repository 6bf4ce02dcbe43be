"""The MaskGCT semantic codec of IndexTTS2: strict load, codes and embeddings against the indextts2-tiny
fixture, the full-size official key set."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tagtune.checkpoint import CheckpointError, load_semantic_codec, read_config_v2
from tagtune.config import v2
from tagtune.folders import SEMANTIC_CODEC_FILE
from tagtune.models.v2.codec import RepCodec
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


@pytest.fixture(scope="module")
def codec():
    require_v2()
    return load_semantic_codec(V2_AUX / SEMANTIC_CODEC_FILE, read_config_v2(V2_CHECKPOINT))


@pytest.mark.parametrize("ref", ["a", "b"])
def test_quantize_speaker_features(codec, ref):
    with torch.no_grad():
        codes, quantized = codec.quantize(expected(f"{ref}_spk_cond_emb"))
    assert torch.equal(codes, expected(f"{ref}_S_ref_codes"))
    assert_close(f"{ref}_S_ref", quantized, expected(f"{ref}_S_ref"), ATOL)


@pytest.mark.parametrize("run", sorted(RUN_SPEAKER))
def test_vq2emb_of_generated_codes(codec, run):
    with torch.no_grad():
        got = codec.vq2emb(expected(f"{run}_codes"))
    assert_close(f"{run}_vq2emb", got, expected(f"{run}_vq2emb"), ATOL)


def test_vq2emb_rows_are_independent(codec):
    a, b = expected("a_S_ref_codes")[:, :20], expected("b_S_ref_codes")[:, :20]
    with torch.no_grad():
        batch = codec.vq2emb(torch.cat([a, b]))
        assert torch.allclose(batch[1:], codec.vq2emb(b), atol=1e-6)
        assert not torch.allclose(batch[0], batch[1])


def test_quantized_equals_vq2emb_of_its_codes_up_to_rounding(codec):
    with torch.no_grad():
        codes, quantized = codec.quantize(expected("a_spk_cond_emb"))
        assert_close("straight-through vs vq2emb", quantized, codec.vq2emb(codes), 1e-5)


def test_every_tensor_of_the_file_is_used_strictly(tmp_path):
    state = load_file(str(require_v2() / "checkpoint" / "hf_cache" / SEMANTIC_CODEC_FILE))
    assert len(state) == 59 and any(k.startswith("decoder.") for k in state)  # the unused decoder is loaded too
    del state["decoder.1.bias"]
    save_file(state, str(tmp_path / SEMANTIC_CODEC_FILE))
    with pytest.raises(CheckpointError, match=r"missing key decoder\.1\.bias"):
        load_semantic_codec(tmp_path / SEMANTIC_CODEC_FILE, read_config_v2(V2_CHECKPOINT))


def test_full_size_keys_match_official():
    with torch.device("meta"):
        codec = RepCodec(v2().semantic_codec)
    assert_official_keys(codec.state_dict(), "sd_semantic_codec_v2.txt")
