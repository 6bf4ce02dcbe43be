"""`tagtune selftest` passes on the shared fixture and reports a FAIL when a tensor is wrong."""

from __future__ import annotations

import shutil

from safetensors.torch import load_file, save_file

from tagtune.cli import main


def test_selftest_passes_on_shared_fixture(fixture_dir, capsys):
    assert main(["selftest", "--fixture", str(fixture_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("cond_mel", "dvae_codes", "conds", "mel_logits", "latents", "wav", "codes_greedy_cache",
                 "e2e_pcm16", "text_ids_norm_3"):
        assert f"PASS  {name} " in out
    assert " 0 failed" in out


def test_selftest_reports_a_wrong_tensor(fixture_dir, tmp_path, capsys):
    fx = tmp_path / "fx"
    shutil.copytree(fixture_dir, fx)
    exp = load_file(str(fx / "expected.safetensors"))
    keep = {"cond_mel", "conds", "codes_greedy_cache", "gen_text_ids"}
    exp = {k: v for k, v in exp.items() if k in keep}
    exp["conds"] = exp["conds"] + 1e-3  # beyond the 1e-4 tolerance
    exp["codes_greedy_cache"][0, 3] += 1
    (fx / "expected.safetensors").chmod(0o644)
    save_file(exp, str(fx / "expected.safetensors"))
    assert main(["selftest", "--fixture", str(fx)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  conds" in out and "FAIL  codes_greedy_cache" in out and "PASS  cond_mel" in out
    assert "2 failed" in out
