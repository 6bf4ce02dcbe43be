"""Training-side reader of a prepared DATA_DIR: examples, a length-bucketing batch sampler, collate.

Needs only DATA_DIR (no source audio, no models). Shards are memory-mapped; each example reads its own
slices.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from tagtune.audio import SAMPLE_RATE
from tagtune.data.merge import EXAMPLES_FILE, MANIFEST_FILE
from tagtune.data.semantic import FEATURE_RATE
from tagtune.data.shards import SHARD_DIR, DataDirError, ShardError, ShardReader, shard_meta
from tagtune.text.language import text_language

STOP_TEXT_TOKEN = 1  # gpt.stop_text_token: the official forward turns text padding into it anyway
STOP_MEL_TOKEN = 8193  # gpt.stop_mel_token: likewise for code padding
BUCKET_BATCHES = 50  # a shuffled window of this many batches is sorted by length before batching
SAMPLES_PER_SEMANTIC_CODE = SAMPLE_RATE // FEATURE_RATE  # IndexTTS-2: 24 kHz samples per semantic code


class NotPreparedError(DataDirError, FileNotFoundError):
    """The folder holds no prepared data (no ``manifest.json``)."""


def _read_json(data_dir: Path, name: str) -> dict:
    path = data_dir / name
    if not path.is_file():
        what = "is not a folder" if not data_dir.is_dir() else f"has no {name}"
        raise NotPreparedError(f"{data_dir} {what}: no prepared data; run `tagtune prepare` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataDirError(f"{path}: unreadable ({type(e).__name__}); prepare the corpus again") from None
    if not isinstance(data, dict):
        raise DataDirError(f"{path}: not a JSON object; prepare the corpus again")
    return data


class PreparedDataset(Dataset):
    """Examples of one split ("train", "val" or "all") of a prepared DATA_DIR.

    Each item: ``text_ids`` (L_t,) int64, ``codes`` (L_c,) int64, ``wav_len`` int, ``cond_mel``
    (n_mels, T) float32 (the reference clip's log-mel), ``tags`` list[str], ``has_tag`` bool, ``events``,
    ``speaker``, ``source_id``, ``cond_source_id``, ``id``.

    Opening checks the whole folder (index files, every shard's header and row count), so a damaged folder
    fails here with a ``DataDirError`` naming the file, not later in the middle of training.
    """

    def __init__(self, data_dir: str | Path, split: str = "train"):
        self.data_dir = Path(data_dir)
        self.manifest = _read_json(self.data_dir, MANIFEST_FILE)
        try:
            lines = (self.data_dir / EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
            self.all_examples = [json.loads(x) for x in lines]
            shards = list(self.manifest["shards"])
            self.examples = [e for e in self.all_examples if split in ("all", e["split"])]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataDirError(f"{self.data_dir}: damaged prepared data ({EXAMPLES_FILE} or {MANIFEST_FILE}: "
                               f"{type(e).__name__} {e}); prepare it again"[:300]) from None
        self._readers = {name: ShardReader(self.data_dir / SHARD_DIR / name) for name in shards}
        self._check_shards()

    def _check_shards(self) -> None:
        rows = {name: shard_meta(reader.path)["rows"] for name, reader in self._readers.items()}
        for e in self.all_examples:
            for shard, row in ((e.get("shard"), e.get("row")), (e.get("cond_shard"), e.get("cond_row"))):
                if shard not in rows or not isinstance(row, int) or not 0 <= row < rows[shard]:
                    raise ShardError(f"{self.data_dir}: example {e.get('id')} points at row {row} of shard "
                                     f"{shard}, which does not hold it; prepare it again")

    def __len__(self) -> int:
        return len(self.examples)

    def shard(self, name: str) -> ShardReader:
        """The reader of one of the folder's shards (by file name, as examples name them)."""
        return self._readers[name]

    def lengths(self) -> list[int]:
        """Per example the GPT sequence length it costs (text + codes), for bucketing."""
        return [e["n_text"] + e["n_codes"] for e in self.examples]

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        shard = self._readers[e["shard"]]
        return {
            "id": e["id"],
            "source_id": e["source_id"],
            "text_ids": shard.text_ids(e["row"]),
            "codes": shard.codes(e["row"]),
            "wav_len": shard.wav_len(e["row"]),
            "cond_mel": self._readers[e["cond_shard"]].mel(e["cond_row"]),
            "cond_source_id": self.all_examples[e["cond"]]["source_id"],
            "tags": list(e["tags"]),
            "has_tag": e["has_tag"],
            "events": e.get("events"),
            "speaker": e["speaker"],
            "language": text_language(e.get("text", "")),
        }


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort windows of ``BUCKET_BATCHES`` batches, shuffle batches.

    A batch holds at most ``batch_size`` examples and, when ``max_tokens`` is set, at most that many
    padded tokens (longest x count). Call ``set_epoch`` for a new order each epoch (seeded, reproducible).
    """

    def __init__(self, lengths: list[int], batch_size: int, max_tokens: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        self.lengths, self.batch_size, self.max_tokens = lengths, batch_size, max_tokens
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the order of epoch ``epoch``."""
        self.epoch = epoch

    def _fits(self, batch: list[int], i: int) -> bool:
        if len(batch) >= self.batch_size:
            return False
        longest = max([self.lengths[j] for j in batch] + [self.lengths[i]])
        return self.max_tokens is None or not batch or longest * (len(batch) + 1) <= self.max_tokens

    def batches(self) -> list[list[int]]:
        """This epoch's batches."""
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        window = self.batch_size * BUCKET_BATCHES
        out: list[list[int]] = []
        for s in range(0, len(order), window):
            batch: list[int] = []
            for i in sorted(order[s : s + window], key=lambda j: self.lengths[j]):
                if not self._fits(batch, i):
                    out.append(batch)
                    batch = []
                batch.append(i)
            if batch and not (self.drop_last and len(batch) < self.batch_size):
                out.append(batch)
        if self.shuffle:
            rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def _pad(seqs: list[torch.Tensor], value: float) -> torch.Tensor:
    """Right-pad 1-D tensors to (B, L_max)."""
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def collate(batch: list[dict], text_pad: int = STOP_TEXT_TOKEN, code_pad: int = STOP_MEL_TOKEN) -> dict:
    """Right-padded batch in the layout ``UnifiedVoice.forward`` takes.

    ``text_ids`` (B, L_t), ``text_lengths`` (B,), ``codes`` (B, L_c), ``code_lengths`` (B,), ``wav_lengths``
    (B,), ``cond_mels`` (B, n_mels, T) zero-padded, ``cond_mel_lengths`` (B,), ``has_tag`` (B,) bool, plus
    lists ``tags``, ``events``, ``ids``.
    """
    mels = [b["cond_mel"].T for b in batch]  # (T, n_mels) so pad_sequence pads time
    return {
        "text_ids": _pad([b["text_ids"] for b in batch], text_pad),
        "text_lengths": torch.tensor([len(b["text_ids"]) for b in batch]),
        "codes": _pad([b["codes"] for b in batch], code_pad),
        "code_lengths": torch.tensor([len(b["codes"]) for b in batch]),
        "wav_lengths": torch.tensor([b["wav_len"] for b in batch]),
        "cond_mels": _pad(mels, 0.0).transpose(1, 2).contiguous(),  # (B, n_mels, T)
        "cond_mel_lengths": torch.tensor([m.shape[0] for m in mels]),
        "has_tag": torch.tensor([b["has_tag"] for b in batch]),
        "tags": [b["tags"] for b in batch],
        "events": [b["events"] for b in batch],
        "ids": [b["id"] for b in batch],
    }


class PreparedDatasetV2(Dataset):
    """Examples of one split of an IndexTTS-2 DATA_DIR (``prepare`` given an IndexTTS-2 folder).

    Each item: ``text_ids`` (L_t,) int64, ``codes`` (L_c,) int64 semantic codes, ``spk_features`` (T, 1024) and
    ``emo_features`` (T', 1024) float32 (the speaker clip's and the emotion clip's w2v-BERT states), ``tags``,
    ``has_tag``, ``id``, ``cond``, ``emo``, and for evaluation ``wav_len`` (24 kHz samples), ``events`` (their
    boundaries in those samples), ``samples_per_code``, ``speaker``, ``source_id``, ``language``. Examples
    without an emotion clip (``emo`` None: a tagged clip that is its speaker's only one) are left out. The index
    files and shards are checked as for 1.x.
    """

    def __init__(self, data_dir: str | Path, split: str = "train"):
        self.rows = PreparedDataset(data_dir, split)
        manifest = self.rows.manifest
        if manifest.get("model_family") != "v2":
            raise DataDirError(f"{data_dir}: prepared for an IndexTTS 1.x model, not IndexTTS-2")
        self.examples = [e for e in self.rows.examples if e.get("emo") is not None]

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> list[int]:
        """Per example the GPT sequence length it costs (text + codes), for bucketing."""
        return [e["n_text"] + e["n_codes"] for e in self.examples]

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        shard = self.rows.shard(e["shard"])
        return {
            "id": e["id"], "cond": e["cond"], "emo": e["emo"],
            "text_ids": shard.text_ids(e["row"]),
            "codes": shard.codes(e["row"]),
            "spk_features": self.rows.shard(e["cond_shard"]).features(e["cond_row"]).T,  # (T, 1024)
            "emo_features": self.rows.shard(e["emo_shard"]).features(e["emo_row"]).T,
            "tags": list(e["tags"]),
            "has_tag": e["has_tag"],
            "wav_len": shard.wav_len(e["row"]),
            "events": e.get("events"),
            "samples_per_code": SAMPLES_PER_SEMANTIC_CODE,
            "speaker": e["speaker"],
            "source_id": e["source_id"],
            "language": text_language(e.get("text", "")),
        }
