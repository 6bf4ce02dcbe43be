"""Two real processes under ``accelerate launch`` (and decoding worker processes) give the same DATA_DIR
as one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_data_prepare import _snapshot
from test_data_support import write_parquet

TESTS = Path(__file__).resolve().parent
SCRIPT = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from tagtune.data import PrepareSettings, open_source, prepare
from test_data_support import ToyTextEncoder, tiny_clip_encoder
if __name__ == "__main__":  # decoding workers are spawned and re-import this file
    corpus, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = PrepareSettings(val_fraction=0.3, shard_size=2, seed=5)
    prepare(open_source(corpus), out, tiny_clip_encoder(), ToyTextEncoder(), settings, num_workers=workers,
            progress=False)
"""
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", with_speaker=True)
    script = tmp_path / "run_prepare.py"
    script.write_text(SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(corpus), str(tmp_path / "one"), "2"],
                         capture_output=True, text=True, timeout=300)
    assert (tmp_path / "one" / "manifest.json").exists(), one.stderr[-3000:]
    two = subprocess.run([*LAUNCH, str(script), str(corpus), str(tmp_path / "two"), "0"],
                         capture_output=True, text=True, timeout=300)
    # a rank may rarely abort at exit after its work is done: judge by the outputs
    assert (tmp_path / "two" / "manifest.json").exists(), two.stderr[-3000:]
    assert "prepare 1/2" not in two.stderr  # progress off; the real check is below
    assert _snapshot(tmp_path / "two") == _snapshot(tmp_path / "one")
    assert len(list((tmp_path / "two" / "shards").iterdir())) == 3
