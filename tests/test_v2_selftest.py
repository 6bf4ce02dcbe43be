"""`tagtune selftest` on the IndexTTS2 parity fixture: every expected tensor is recomputed and passes, and a
wrong expected value fails."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from tagtune.cli import main
from tagtune.selftest import run_selftest
from tagtune.selftest_v2 import parse_runs
from v2_fixture import V2_FIXTURE, require_v2

# inputs the fixture made up for a stage (a teacher-forced batch, true lengths), not results of the official code
STAGE_INPUTS = {"tf_conds", "tf_emovec", "tf_text_ids", "tf_text_lengths", "tf_codes", "tf_code_lengths",
                "batch_cond_lengths"}


def _reported(text: str) -> dict[str, str]:
    """name -> status of each result line."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|FAIL|INFO|SKIP)\s+(\S+)", text, flags=re.M)}


def test_v2_selftest_recomputes_every_expected_tensor(capsys):
    from safetensors.torch import load_file

    require_v2()
    assert main(["selftest", "--fixture", str(V2_FIXTURE)]) == 0
    out = capsys.readouterr().out
    reported = _reported(out)
    assert [n for n, s in reported.items() if s in ("FAIL", "SKIP")] == []
    names = set(load_file(str(V2_FIXTURE / "expected.safetensors"))) - STAGE_INPUTS
    assert sorted(names - set(reported)) == []  # nothing the fixture computed is left out
    assert reported["a_en_codes_beam3_sample_seed1234"] in ("PASS", "INFO")  # RNG-dependent: informational
    for run in ("a_en", "a_zh", "a_mixed", "a_tag", "b_emoref_en", "b_emovec_zh"):
        assert reported[f"{run}_pcm16"] == "PASS"
    assert re.search(r"selftest .*: \d+ passed, 0 failed", out)


def test_a_wrong_expected_value_fails(tmp_path, capsys):
    """A fixture copy holding three tensors, one of them altered: the altered one fails, the rest pass."""
    from safetensors.torch import load_file, save_file

    require_v2()
    copy = tmp_path / "fixture"
    copy.mkdir()
    for name in ("checkpoint", "inputs"):
        (copy / name).symlink_to(V2_FIXTURE / name)
    shutil.copy(V2_FIXTURE / "README.md", copy / "README.md")
    full = load_file(str(V2_FIXTURE / "expected.safetensors"))
    kept = {k: full[k].clone() for k in ("text_ids_0", "a_fbank", "a_style")}
    kept["a_style"][0, 5] += 1e-3
    save_file(kept, str(copy / "expected.safetensors"))
    assert run_selftest(copy) == 1
    reported = _reported(capsys.readouterr().out)
    assert reported == {"text_ids_0": "PASS", "a_style": "FAIL"}


def test_runs_table_is_read_from_the_readme():
    runs = parse_runs((require_v2() / "README.md").read_text(encoding="utf-8"))
    assert set(runs) >= {"a_en", "b_emoref_en", "b_emovec_zh", "a_en_nocache", "a_en_rep1"}
    assert runs["b_emoref_en"].speaker == "b" and runs["b_emoref_en"].emotion == "a16"
    assert runs["b_emoref_en"].alpha == 0.6 and runs["b_emovec_zh"].emo_vector == [0, 0, 0.3, 0, 0, 0, 0.2, 0]
    assert not runs["a_en_nocache"].cache and runs["a_en_rep1"].repetition_penalty == 1.0


def test_a_folder_that_is_not_a_fixture_is_one_error(tmp_path, capsys):
    assert main(["selftest", "--fixture", str(tmp_path)]) == 2
    assert "not a fixture folder" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _restore_rng():
    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)
