"""Replay for IndexTTS-2 data: untagged clips of another v2 folder prepared from the same base, mixed into the
fine-tune clips, each with its own speaker and emotion clips; folders of the other family or another base refused.

The fine-tune data is test_v2_train_loop's (six training clips); the replay corpus is six other babble clips of
two other speakers, one of them tagged.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import test_v2_train_loop
from test_v2_prepare import SAMPLE_RATE, _clip, _prepare
from test_v2_train_loop import RECIPE
from v2_fixture import V2_CHECKPOINT, require_v2

v2_data = test_v2_train_loop.v2_data  # the fine-tune data fixture

# (speaker, voice of test_v2_prepare's layout, tagged) of each replay clip
REPLAY_LAYOUT = [("R", "B", False), ("R", "B", False), ("R", "B", True), ("R", "B", False), ("S", "A", False),
                 ("S", "A", False)]
FRACTION = 0.4  # six fine-tune clips -> four replayed


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory):
    """The replay corpus prepared for the fixture's v2 base."""
    require_v2()
    root = tmp_path_factory.mktemp("v2replay")
    folder = root / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(5)
    rows = []
    for k, (speaker, voice, tagged) in enumerate(REPLAY_LAYOUT):
        audio, text = _clip(k + 3, voice, tagged, rng)
        sf.write(folder / f"r{k}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"audio": f"r{k}.wav", "text": text, "speaker": speaker, "id": f"r{k}"})
    (folder / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _prepare(folder / "list.jsonl", root / "data", seed=2)
    return root / "data"


@pytest.fixture(scope="module")
def gpt():
    from tagtune.tags.rows import TagInit, grow_base

    model, _, _ = grow_base(V2_CHECKPOINT, ["<giggles>"], TagInit("mean", 0))
    return model.eval()


def test_replayed_clips_are_untagged_clips_of_the_replay_folder_with_their_own_conditioning(v2_data, replay_dir,
                                                                                             gpt):
    from tagtune.data.dataset import PreparedDatasetV2
    from tagtune.models.v2.objective import collate_v2, prefix_inputs
    from tagtune.train.data import mix_replay, open_data
    from tagtune.train.family import FamilyV2

    data = open_data(v2_data)
    mix = mix_replay(data, replay_dir, FRACTION, seed=3)
    alone = PreparedDatasetV2(replay_dir, "all")
    n = len(data.train)
    assert (n, len(mix.picks), len(mix)) == (6, 4, 10)
    assert mix_replay(data, replay_dir, FRACTION, seed=3).picks == mix.picks  # seeded
    untagged = [j for j, e in enumerate(alone.examples) if not e["has_tag"]]
    assert len(untagged) == 5 and set(mix.picks) <= set(untagged)
    assert mix.lengths()[n:] == [alone.lengths()[j] for j in mix.picks]
    for k, j in enumerate(mix.picks):
        got, want = mix[n + k], alone[j]
        assert not got["has_tag"] and got["speaker"] in ("R", "S")
        assert (got["id"], got["cond"], got["emo"]) == (want["id"], want["cond"], want["emo"])
        assert torch.equal(got["spk_features"], want["spk_features"])
        assert torch.equal(got["emo_features"], want["emo_features"])
    # example ids are per folder: replayed clips share ids with fine-tune clips, so a cache keyed by id would mix
    # their conditioning up
    assert {mix.examples[i]["id"] for i in range(n, len(mix))} & {e["id"] for e in mix.examples[:n]}

    family = FamilyV2()
    indices = list(range(len(mix)))
    with torch.no_grad():
        cache = family.prefix_cache(gpt, mix, "cpu")
        cached = family.collate(mix, indices, gpt, cache)
        conds, emovec = prefix_inputs(gpt, family.collate(mix, indices, gpt, None))
        torch.testing.assert_close(cached.conds, conds, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cached.emovec, emovec, rtol=1e-5, atol=1e-5)
        for k, j in enumerate(mix.picks):
            own = prefix_inputs(gpt, collate_v2([alone[j]], gpt.cfg))  # the clip in its folder alone
            torch.testing.assert_close(cached.conds[n + k], own[0][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cached.emovec[n + k], own[1][0], rtol=1e-5, atol=1e-5)
        picks = [0, n, len(mix) - 1]
        fitted = family.neutral_prefix(gpt, mix, picks, cache, "cpu")
        fresh = family.neutral_prefix(gpt, mix, picks, None, "cpu")
    for (c, e), (c2, e2), i in zip(fitted, fresh, picks):
        torch.testing.assert_close(c, conds[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e, emovec[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c2, conds[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e2, emovec[i], rtol=1e-5, atol=1e-5)


def test_training_v2_with_replay(v2_data, replay_dir, tmp_path, caplog):
    from tagtune.train import train
    from tagtune.train.config import TrainConfig

    recipe = json.loads(json.dumps(RECIPE))
    recipe["lora"]["neutral_steps"] = 2
    recipe["schedule"]["max_steps"] = 2
    recipe["eval"] |= {"every_steps": 2, "save_every_steps": 2}
    recipe["replay"] = {"data": str(replay_dir), "fraction": FRACTION}
    with caplog.at_level(logging.INFO, logger="tagtune.train.loop"):
        result = train(v2_data, tmp_path / "run", TrainConfig.from_dict(recipe))
    assert result.steps == 2
    assert any(r.getMessage() == f"replay: 4 untagged clips of {replay_dir} mixed into 6 training clips (0 with a "
               "spliced event)"
               for r in caplog.records)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert any(r["loss_untagged"] is not None and math.isfinite(r["loss_untagged"]) for r in train_records)
    recorded = (tmp_path / "run" / "train_config.yaml").read_text()
    assert str(replay_dir) in recorded and f"fraction: {FRACTION}" in recorded


def test_replay_of_the_other_family_is_refused(v2_data, replay_dir, tiny_data):
    from tagtune.train.data import DataError, mix_replay, open_data

    with pytest.raises(DataError) as e:
        mix_replay(open_data(v2_data), tiny_data, FRACTION, seed=0)
    message = str(e.value)
    assert "\n" not in message and str(tiny_data) in message and str(v2_data) in message
    assert "IndexTTS 1.x, the fine-tune data" in message and message.count("IndexTTS-2") == 1
    with pytest.raises(DataError) as e:
        mix_replay(open_data(tiny_data), replay_dir, FRACTION, seed=0)
    message = str(e.value)
    assert "\n" not in message and str(replay_dir) in message and str(tiny_data) in message
    assert "IndexTTS-2, the fine-tune data" in message and message.count("IndexTTS 1.x") == 1


def test_replay_from_another_v2_base_is_refused(v2_data, replay_dir, tmp_path):
    """The replay folder's base is whole (its own fingerprint matches) but is not the fine-tune data's base."""
    from tagtune.checkpoint import folder_fingerprint
    from tagtune.train.data import DataError, mix_replay, open_data

    base = tmp_path / "base"
    base.mkdir()
    for f in V2_CHECKPOINT.iterdir():
        (base / f.name).symlink_to(f)
    (base / "config.yaml").unlink()
    (base / "config.yaml").write_text((V2_CHECKPOINT / "config.yaml").read_text() + "\n# another base\n")
    other = tmp_path / "other"
    shutil.copytree(replay_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_checkpoint"] = {"dir": str(base), "hash": folder_fingerprint(base)}
    manifest.pop("base_checkpoint_hash", None)
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="prepared from another base model"):
        mix_replay(open_data(v2_data), other, FRACTION, seed=0)
