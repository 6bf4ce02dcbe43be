"""Loading IndexTTS-2 folders: family detection, the auxiliary models in both layouts, lazy parts, named errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from tagtune.checkpoint import CheckpointError, model_family
from tagtune.folders import (
    AUX_MODELS_DIR,
    BIGVGAN_V2_DIR,
    CAMPPLUS_FILE,
    CAMPPLUS_REPO,
    SEMANTIC_CODEC_FILE,
    SEMANTIC_CODEC_REPO,
    SEMANTIC_CODEC_REPO_FILE,
    W2V_BERT_DIR,
    W2V_BERT_REPO,
)
from tagtune.loaders import AuxModelError, LoadedModel, LoadedModelV2, find_aux_models, load_model, load_model_v2
from v2_fixture import V2_AUX, V2_CHECKPOINT, require_v2

MAIN_FILES = ("config.yaml", "gpt.pth", "s2mel.pth", "bpe.model", "wav2vec2bert_stats.pt", "feat1.pt", "feat2.pt")
BIGVGAN_REPO = "nvidia/bigvgan_v2_22khz_80band_256x"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _main_files(dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name in MAIN_FILES:
        (dest / name).symlink_to(V2_CHECKPOINT / name)
    return dest


def _hub_repo(cache, repo: str, files: dict[str, object]):
    """A Hugging Face hub cache entry for ``repo``: refs/main and one snapshot holding ``files``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    for name, source in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(source)
    return snap


def _hub_layout(cache):
    w2v = {n: V2_AUX / W2V_BERT_DIR / n for n in ("config.json", "model.safetensors", "preprocessor_config.json")}
    codec = V2_AUX / SEMANTIC_CODEC_FILE
    return {
        "w2v_bert": _hub_repo(cache, W2V_BERT_REPO, w2v),
        "semantic_codec": _hub_repo(cache, SEMANTIC_CODEC_REPO, {SEMANTIC_CODEC_REPO_FILE: codec})
        / SEMANTIC_CODEC_REPO_FILE,
        "campplus": _hub_repo(cache, CAMPPLUS_REPO, {CAMPPLUS_FILE: V2_AUX / CAMPPLUS_FILE}) / CAMPPLUS_FILE,
        "bigvgan": _hub_repo(cache, BIGVGAN_REPO, {n: V2_AUX / BIGVGAN_V2_DIR / n
                                                   for n in ("config.json", "bigvgan_generator.pt")}),
    }


def test_family_is_told_by_the_config(shipped_base):
    require_v2()
    assert model_family(V2_CHECKPOINT) == "v2"
    assert model_family(shipped_base) == "v1"
    assert isinstance(load_model(shipped_base), LoadedModel) and load_model(shipped_base).family == "v1"


def test_official_folder_loads_lazily_with_its_flat_auxiliary_models():
    require_v2()
    m = load_model(V2_CHECKPOINT)
    assert isinstance(m, LoadedModelV2) and m.family == "v2"
    assert m.aux.w2v_bert == V2_AUX / W2V_BERT_DIR and m.aux.bigvgan == V2_AUX / BIGVGAN_V2_DIR
    assert m.aux.semantic_codec == V2_AUX / SEMANTIC_CODEC_FILE and m.aux.campplus == V2_AUX / CAMPPLUS_FILE
    assert m._cache == {}  # nothing built until asked for
    assert m.config.sizes.w2v_bert_hidden_layer == 1 and m.config.gpt.model_dim == 64


def test_every_part_loads_strictly_and_the_vocabulary_fits():
    require_v2()
    m = load_model_v2(V2_CHECKPOINT, eager=True)
    assert len(m.gpt.state_dict()) == 184
    assert m.tokenizer.vocab_size + 1 == m.gpt.cfg.text_rows
    assert len(m.semantic_features.model.encoder.layers) == m.config.sizes.w2v_bert_hidden_layer
    spk, emo = m.emotion_matrices
    assert spk.shape == (sum(m.config.emo_num), 192) and emo.shape == (sum(m.config.emo_num), 64)
    assert m.feature_extractor.padding_value == 1
    with torch.no_grad():
        wav = m.vocoder(torch.zeros(1, 80, 3))
    assert wav.shape == (1, 1, 3 * 256)


@pytest.mark.parametrize("where", ["in the folder", "given"])
def test_auxiliary_models_are_found_in_a_hub_cache(tmp_path, where):
    require_v2()
    folder = _main_files(tmp_path / "IndexTTS-2")
    cache = folder / AUX_MODELS_DIR if where == "in the folder" else tmp_path / "hub"
    want = _hub_layout(cache)
    aux = find_aux_models(folder, hub_cache=cache if where == "given" else None)
    assert {k: getattr(aux, k) for k in want} == want
    m = load_model_v2(folder, hub_cache=cache if where == "given" else None)
    with torch.no_grad():
        style = m.campplus(torch.zeros(1, 50, 80))
    assert style.shape == (1, 192)


def test_a_missing_auxiliary_model_names_it_and_how_to_get_it(tmp_path, monkeypatch):
    require_v2()
    folder = _main_files(tmp_path / "IndexTTS-2")
    aux = folder / AUX_MODELS_DIR
    shutil.copytree(V2_AUX, aux, symlinks=True)
    (aux / CAMPPLUS_FILE).unlink()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(AuxModelError, match=rf"{CAMPPLUS_REPO} \({CAMPPLUS_FILE}\) not found.*hf download"):
        load_model(folder)


def test_missing_main_file_is_named_when_its_part_loads(tmp_path):
    require_v2()
    folder = _main_files(tmp_path / "IndexTTS-2")
    (folder / AUX_MODELS_DIR).symlink_to(V2_AUX)
    (folder / "s2mel.pth").unlink()
    m = load_model(folder)
    with pytest.raises(CheckpointError, match=r"s2mel\.pth: not found"):
        m.s2mel  # noqa: B018 - loads it


def test_a_folder_that_is_no_adapter_is_refused_on_a_v2_folder(tmp_path):
    require_v2()  # tag adapters on IndexTTS-2 load: tests/test_v2_export.py
    with pytest.raises(CheckpointError, match="not an adapter written by tagtune"):
        load_model(V2_CHECKPOINT, adapter=tmp_path)


def test_qwen_emotion_folder_is_required_only_when_asked_for():
    require_v2()
    m = load_model(V2_CHECKPOINT)
    with pytest.raises(AuxModelError, match="no QwenEmotion model here"):
        m.qwen_emotion_dir  # noqa: B018
