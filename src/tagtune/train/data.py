"""Batches for training: a prepared DATA_DIR, global batches bucketed by length, split over processes.

``open_data`` checks a DATA_DIR before anything is written: its files parse, every shard is whole and holds
the rows the examples point at, the base checkpoint is the one the data was prepared from (its recorded
fingerprint), and the tokenizer holds each tag's piece at the id the data was encoded with.

The order of clips is a pure function of (seed, epoch) (the data package's seeded LengthBucketSampler):
a resumed run regenerates the same epoch and skips the batches already consumed. A *global* batch
(batch_size x grad_accum x processes clips) is cut into micro-batches by position, so the clips of an
optimizer step do not depend on the process count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tagtune.audio import event_onset_codes
from tagtune.errors import UserError
from tagtune.folders import EXAMPLES_FILE as EXAMPLES
from tagtune.folders import MANIFEST_FILE as MANIFEST
from tagtune.folders import SHARDS_DIR as SHARDS
from tagtune.folders import TAGS_FILE as DEFAULT_TAGS
from tagtune.folders import TOKENIZER_FILE as DEFAULT_TOKENIZER
from tagtune.train.loss import Batch

EXAMPLE_KEYS = ("split", "shard", "row", "cond", "cond_shard", "cond_row", "n_text", "n_codes", "tags", "has_tag")
SHARD_TENSORS = ("text_ids", "text_offsets", "codes", "code_offsets", "mels", "mel_offsets", "wav_lens")
# an IndexTTS-2 shard keeps w2v-BERT features where 1.x keeps log-mels
SHARD_TENSORS_V2 = ("text_ids", "text_offsets", "codes", "code_offsets", "features", "feature_offsets", "wav_lens")
V2 = "v2"  # the manifest's model_family of data prepared for an IndexTTS-2 base
FAMILY_NAMES = {"v1": "IndexTTS 1.x", V2: "IndexTTS-2"}
# the most memory the reference frames of a training run may take (``precompute_frames``): ~1.2k full-size
# references of 12 s; past it the (frozen) input subsampling runs again on every batch
FRAME_CACHE_BYTES = 2 * 2**30

log = logging.getLogger(__name__)


class DataError(UserError):
    """A DATA_DIR that cannot be trained on: missing or damaged files, or another base model or tokenizer."""


@dataclass
class DataBundle:
    """What training needs from a DATA_DIR."""

    data_dir: Path
    manifest: dict
    manifest_hash: str
    base_dir: Path
    base_fingerprint: str  # tagtune.checkpoint.folder_fingerprint of base_dir, checked against the manifest
    tokenizer_path: Path
    tags_path: Path
    tagset: object  # TagSet: canonical tags in token-id order
    train: object  # PreparedDataset (PreparedDatasetV2 for IndexTTS-2 data); a ReplayMix once mix_replay ran
    val: object
    family: str = "v1"  # the base model's family: "v1" (IndexTTS 1.x) or "v2" (IndexTTS-2)

    @property
    def tag_names(self) -> list[str]:
        return list(self.tagset.tags)


def open_data(data_dir: str | Path) -> DataBundle:
    """Open and check DATA_DIR; resolve the base checkpoint, tokenizer and tags file its manifest names."""
    from tagtune.checkpoint import file_sha256
    from tagtune.data import PreparedDataset
    from tagtune.data.dataset import PreparedDatasetV2
    from tagtune.tags.vocab import TagSet

    data_dir = Path(data_dir)
    manifest = _read_manifest(data_dir)
    family = V2 if manifest.get("model_family") == V2 else "v1"
    dataset = PreparedDatasetV2 if family == V2 else PreparedDataset
    _check_examples_and_shards(data_dir, manifest)
    tags_path = _manifest_file(data_dir, manifest, "tags_file", DEFAULT_TAGS)
    tokenizer_path = _manifest_file(data_dir, manifest, "tokenizer", DEFAULT_TOKENIZER)
    tagset = TagSet.load(tags_path)
    base_dir, fingerprint = _check_base(data_dir, manifest)
    _check_tokenizer(tokenizer_path, tags_path, tagset, data_dir / MANIFEST, manifest.get("tag_ids") or {})
    return DataBundle(
        data_dir=data_dir,
        manifest=manifest,
        manifest_hash=file_sha256(data_dir / MANIFEST)[:16],
        base_dir=base_dir,
        base_fingerprint=fingerprint,
        tokenizer_path=tokenizer_path,
        tags_path=tags_path,
        tagset=tagset,
        train=dataset(data_dir, "train"),
        val=dataset(data_dir, "val"),
        family=family,
    )


def _read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found ({data_dir} is not a prepared data folder; prepare it first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON (truncated or corrupt? {e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{path}: not a data manifest (no list of shards)")
    return manifest


def _read_examples(data_dir: Path) -> list[dict]:
    path = data_dir / EXAMPLES
    if not path.is_file():
        raise DataError(f"{path}: not found (named by {data_dir / MANIFEST}); prepare the data again")
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not JSON (truncated or corrupt? {e})") from None
        missing = [k for k in EXAMPLE_KEYS if not isinstance(example, dict) or k not in example]
        if missing:
            raise DataError(f"{path}: line {n} lacks {missing}")
        examples.append(example)
    return examples


def _check_examples_and_shards(data_dir: Path, manifest: dict) -> None:
    """Every shard opens whole and holds every row an example (or its reference clip) points at."""
    from safetensors import SafetensorError, safe_open

    rows = {}
    wanted = SHARD_TENSORS_V2 if manifest.get("model_family") == V2 else SHARD_TENSORS
    for name in manifest["shards"]:
        path = data_dir / SHARDS / str(name)
        if not path.is_file():
            raise DataError(f"{path}: shard not found (named by {data_dir / MANIFEST}); prepare the data again")
        try:
            with safe_open(str(path), "pt") as f:
                missing = [k for k in wanted if k not in f.keys()]
                rows[name] = f.get_slice("wav_lens").get_shape()[0] if not missing else 0
        except (SafetensorError, OSError) as e:
            raise DataError(f"{path}: unreadable shard (truncated or corrupt? {e}); prepare the data again") from None
        if missing:
            raise DataError(f"{path}: not a prepared shard (lacks {missing}); prepare the data again")
    examples = _read_examples(data_dir)
    for n, e in enumerate(examples, 1):
        pointers = [(e["shard"], e["row"]), (e["cond_shard"], e["cond_row"])]
        if e.get("emo") is not None:  # IndexTTS-2: the emotion clip's features
            pointers.append((e.get("emo_shard"), e.get("emo_row")))
        for shard, row in pointers:
            if shard not in rows:
                raise DataError(f"{data_dir / EXAMPLES}: line {n} names shard {shard!r}, which {MANIFEST} does "
                                "not list")
            if not isinstance(row, int) or not 0 <= row < rows[shard]:
                raise DataError(f"{data_dir / EXAMPLES}: line {n} points at row {row!r} of shard {shard}, which "
                                f"has {rows[shard]} rows")
        if not isinstance(e["cond"], int) or not 0 <= e["cond"] < len(examples):
            raise DataError(f"{data_dir / EXAMPLES}: line {n} names reference example {e['cond']!r}, which does "
                            "not exist")


def _manifest_file(data_dir: Path, manifest: dict, key: str, default: str) -> Path:
    path = data_dir / (manifest.get(key) or default)
    if not path.is_file():
        raise DataError(f"{path}: not found (named by {data_dir / MANIFEST})")
    return path


def _check_base(data_dir: Path, manifest: dict) -> tuple[Path, str]:
    """The base checkpoint folder the data was prepared from, and its fingerprint (checked when recorded)."""
    from tagtune.checkpoint import folder_fingerprint, read_model_config

    path = data_dir / MANIFEST
    recorded = manifest.get("base_checkpoint") or {}
    if not isinstance(recorded, dict) or not recorded.get("dir"):
        raise DataError(f"{path} does not name the base checkpoint folder (base_checkpoint.dir)")
    base_dir = (data_dir / recorded["dir"]).resolve()
    if not base_dir.is_dir():
        raise DataError(f"{path}: the base checkpoint folder {base_dir} (base_checkpoint.dir) does not exist")
    # read_model_config reads either family's config.yaml and names a bad one
    fingerprint = folder_fingerprint(base_dir, read_model_config(base_dir))
    want = recorded.get("hash") or manifest.get("base_checkpoint_hash")
    if want and want != fingerprint:
        raise DataError(f"{base_dir}: fingerprint {fingerprint} differs from {want} recorded in {path} "
                        "(base_checkpoint.hash): the base model changed since the data was prepared; prepare the "
                        "data again for this model")
    return base_dir, fingerprint


def _check_tokenizer(path: Path, tags_path: Path, tagset, manifest_path: Path, recorded: dict) -> None:
    """Each tag is one piece of the tokenizer, at the id the data was encoded with (manifest ``tag_ids``)."""
    from tagtune.text.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(path, normalizer=None)  # an empty or garbage file fails here, naming it
    for tag in tagset.tags:
        listed, want = tagset.token_ids.get(tag), recorded.get(tag)
        if want is not None and listed is not None and listed != want:
            raise DataError(f"{tags_path}: tag {tag} has id {listed}, the data was encoded with {want} "
                            f"({manifest_path} tag_ids)")
        want = want if want is not None else listed
        piece = tagset.piece(tag)
        got = tokenizer.convert_tokens_to_ids(piece)[0]
        if got == tokenizer.unk_token_id:
            raise DataError(f"{path}: has no piece {piece} for tag {tag} (the data was encoded with it at id "
                            f"{want}); this is not the tokenizer the data was prepared with")
        if want is not None and got != want:
            raise DataError(f"{path}: tag {tag} is piece id {got}, the data was encoded with id {want} "
                            f"({manifest_path} tag_ids); this is not the tokenizer the data was prepared with")


class ReplayMix:
    """The fine-tune training split with untagged clips of a replay DATA_DIR appended (``replay`` recipe section).

    Indices below ``len(primary)`` are the fine-tune clips, the rest are replay clips; each keeps its own
    reference clip (IndexTTS-2: its own speaker and emotion clips), read from its own folder. It reads like a
    ``PreparedDataset`` (``PreparedDatasetV2``) to training (``examples``, ``lengths``, items); example ids are
    per folder, so the two parts share ids and training keys clips by index. ``splices`` ({position in picks:
    Splice}, train/splice.py) give some replay clips a fine-tune clip's event and its tag's ``tag_pieces``; with
    ``paired`` a spliced clip is added beside its replay clip, which stays in the mix as recorded (the same voice
    and text without the event and its tag), instead of replacing it.
    """

    def __init__(self, primary, replay, picks: list[int], splices: dict | None = None,
                 tag_pieces: dict[str, list[int]] | None = None, paired: bool = False):
        from tagtune.train.splice import spliced_example

        self.primary, self.replay, self.picks = primary, replay, picks
        self.splices, self.tag_pieces = splices or {}, tag_pieces or {}
        per_code = _samples_per_code(replay)
        spliced = {k: spliced_example(replay.examples[picks[k]], s, primary, replay, self.tag_pieces, per_code)
                   for k, s in self.splices.items()}
        # replay positions (index - len(primary)) -> the position in ``picks`` and whether it is spliced
        self.slots = ([(k, False) for k in range(len(picks))] + [(k, True) for k in sorted(spliced)] if paired
                      else [(k, k in spliced) for k in range(len(picks))])
        self.examples = list(primary.examples) + [spliced[k] if is_spliced else replay.examples[picks[k]]
                                                  for k, is_spliced in self.slots]

    def __len__(self) -> int:
        return len(self.primary) + len(self.slots)

    def __getitem__(self, i: int) -> dict:
        from tagtune.train.splice import spliced_item

        n = len(self.primary)
        if i < n:
            return self.primary[i]
        k, is_spliced = self.slots[i - n]
        item = self.replay[self.picks[k]]
        if not is_spliced:
            return item
        splice = self.splices[k]
        partner = self.replay[splice.partner] if splice.partner is not None else None
        return spliced_item(item, self.primary[splice.donor], splice, partner, self.tag_pieces)

    def lengths(self) -> list[int]:
        return [e["n_text"] + e["n_codes"] for e in self.examples]


def _samples_per_code(dataset) -> int:
    from tagtune.audio import SAMPLES_PER_CODE
    from tagtune.data.dataset import SAMPLES_PER_SEMANTIC_CODE, PreparedDatasetV2

    return SAMPLES_PER_SEMANTIC_CODE if isinstance(dataset, PreparedDatasetV2) else SAMPLES_PER_CODE


def mix_replay(data: DataBundle, replay_dir: str | Path, fraction: float, seed: int,
               events: float = 0.0, event_pairs: bool = False, events_at_end: float | None = None) -> ReplayMix:
    """``data.train`` with a seeded choice of the replay folder's untagged clips making up ``fraction`` of the mix;
    a seeded ``events`` share of them carries a spliced fine-tune event and its tag (train/splice.py), beside
    the clip as recorded with ``event_pairs``; ``events_at_end`` of those events come after the clip (None: after,
    before or between two clips alike).

    The replay folder must be prepared for the same model family from the same base (fingerprint) with a
    tokenizer whose pieces the fine-tune tokenizer starts with (tag pieces come after them), so its text ids
    mean the same thing.
    """
    import random

    from sentencepiece import SentencePieceProcessor

    from tagtune.data import PreparedDataset
    from tagtune.data.dataset import PreparedDatasetV2

    replay_dir = Path(replay_dir)
    manifest = _read_manifest(replay_dir)
    family = V2 if manifest.get("model_family") == V2 else "v1"
    if family != data.family:
        raise DataError(f"{replay_dir}: prepared for {FAMILY_NAMES[family]}, the fine-tune data {data.data_dir} "
                        f"for {FAMILY_NAMES[data.family]}; prepare the replay corpus for the same base")
    _check_examples_and_shards(replay_dir, manifest)
    _, fingerprint = _check_base(replay_dir, manifest)
    if fingerprint != data.base_fingerprint:
        raise DataError(f"{replay_dir}: prepared from another base model (fingerprint {fingerprint}, the fine-tune "
                        f"data's base is {data.base_fingerprint}); prepare the replay corpus for the same base")
    pieces = [SentencePieceProcessor(model_file=str(p)) for p in
              (_manifest_file(replay_dir, manifest, "tokenizer", DEFAULT_TOKENIZER), data.tokenizer_path)]
    theirs, ours = ([sp.IdToPiece(i) for i in range(sp.GetPieceSize())] for sp in pieces)
    if ours[: len(theirs)] != theirs:
        raise DataError(f"{replay_dir}: its tokenizer's pieces are not those of the fine-tune data's tokenizer "
                        f"({data.tokenizer_path}); prepare the replay corpus with the same base")
    replay = (PreparedDatasetV2 if family == V2 else PreparedDataset)(replay_dir, "all")
    untagged = [i for i, e in enumerate(replay.examples) if not e["has_tag"]]
    if not untagged:
        raise DataError(f"{replay_dir}: has no untagged clip to replay")
    want = round(len(data.train) * fraction / (1.0 - fraction))
    picks = sorted(random.Random(seed).sample(untagged, min(want, len(untagged))))
    if not events:
        return ReplayMix(data.train, replay, picks)
    from tagtune.train.splice import plan_splices

    tag_pieces = tag_text_pieces(data)
    splices = plan_splices(data.train, replay, picks, events, data.tagset, seed, _samples_per_code(replay),
                           events_at_end)
    return ReplayMix(data.train, replay, picks, splices, tag_pieces, paired=event_pairs)


def tag_text_pieces(data: DataBundle) -> dict[str, list[int]]:
    """Per tag the text ids it is written as: its piece, after the bare "▁" the tokenizer writes before it
    (``TextTokenizer.tag_space_id``: none when the tag pieces hold the space)."""
    from tagtune.text.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(data.tokenizer_path, data.tagset, normalizer=None)
    bare = [] if tokenizer.tag_space_id is None else [tokenizer.tag_space_id]
    return {t: bare + tokenizer.convert_tokens_to_ids([data.tagset.piece(t)]) for t in data.tagset.tags}


def add_event_cuts(data: DataBundle, share: float, seed: int):
    """``data.train`` with cut copies of a seeded ``share`` of its tagged clips appended (train/splice.py)."""
    from tagtune.train.splice import WithEventCuts

    per_code = _samples_per_code(data.train.primary if isinstance(data.train, ReplayMix) else data.train)
    return WithEventCuts(data.train, share, data.tagset, tag_text_pieces(data), seed, per_code)


def epoch_batches(lengths: list[int], size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of ``size`` clip indices for one epoch, bucketed by length (incomplete ones dropped)."""
    from tagtune.data import LengthBucketSampler

    sampler = LengthBucketSampler(lengths, size, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return [b for b in sampler.batches() if len(b) == size]


def micro_batch(global_batch: list[int], micro_step: int, rank: int, world: int, batch_size: int) -> list[int]:
    """The clips of ``global_batch`` that process ``rank`` trains on at accumulation step ``micro_step``."""
    start = (micro_step * world + rank) * batch_size
    return global_batch[start : start + batch_size]


def collate(dataset, indices: list[int], pad: PadSpec, conds: dict[int, torch.Tensor] | None = None,
            items: list[dict] | None = None) -> Batch:
    """Right-padded Batch of ``dataset[i]`` for ``indices`` (``items``: those, already read); cached ``conds``
    replace the reference mels.

    The official forward keeps ceil(wav_len / 1024) + 1 codes of a clip, which can be one or two more
    than the DVAE produced; codes are padded with stop codes to at least that width, so every clip keeps
    the same positions whichever clips share its batch.
    """
    from tagtune.data import collate as collate_examples

    items = [dataset[i] for i in indices] if items is None else items
    d = collate_examples(items, text_pad=pad.stop_text, code_pad=pad.stop_mel)
    kept = (d["wav_lengths"] + pad.compression - 1) // pad.compression + 1  # (B,)
    short = int(kept.max()) - d["codes"].shape[1]
    if short > 0:
        d["codes"] = F.pad(d["codes"], (0, short), value=pad.stop_mel)
    cached = conds is not None and all(i in conds for i in indices)
    frames = cached and isinstance(conds, ReferenceFrames)
    return Batch(
        text_ids=d["text_ids"], text_lengths=d["text_lengths"], codes=d["codes"], wav_lengths=d["wav_lengths"],
        cond_mels=None if cached else d["cond_mels"], cond_lengths=None if cached else d["cond_mel_lengths"],
        has_tag=d["has_tag"].bool(), tags=[list(t) for t in d["tags"]],
        conds=torch.stack([conds[i] for i in indices]) if cached and not frames else None,
        cond_frames=padded_frames([conds[i] for i in indices]) if frames else None,
        cond_frame_lengths=torch.tensor([len(conds[i]) for i in indices]) if frames else None,
        onsets=[event_onset_codes(events, tagged, pad.compression)
                for events, tagged in zip(d["events"], d["has_tag"].tolist(), strict=True)],
    )


class ReferenceFrames(dict):
    """Subsampled reference frames (T', C) of each clip by dataset index (``precompute_frames``): a prefix cache
    that ``collate`` turns into ``Batch.cond_frames`` where a plain dict of speaker latents becomes ``Batch.conds``."""


def padded_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    """Per-clip frames (T'_b, C) -> right-padded (B, max T', C)."""
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)


class PadSpec(NamedTuple):
    stop_text: int
    stop_mel: int
    compression: int  # samples per code


def pad_spec(gpt) -> PadSpec:
    """The model's padding values and code rate."""
    return PadSpec(gpt.cfg.stop_text_token, gpt.cfg.stop_mel_token, gpt.cfg.mel_length_compression)


def clip_lengths(dataset) -> list[int]:
    """Sequence length of every clip (text + codes), the bucketing key."""
    return list(dataset.lengths())


def _reference_batches(gpt, dataset, device, batch_size: int):
    """(dataset indices, Batch on ``device``) of consecutive clips, for the once-per-clip conditioning caches."""
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        yield idx, collate(dataset, idx, pad_spec(gpt)).to(device)


@torch.no_grad()
def precompute_frames(gpt, dataset, device, batch_size: int = 16,
                      max_bytes: int = FRAME_CACHE_BYTES) -> ReferenceFrames | None:
    """The conditioning encoder's subsampled frames of every clip's reference, when the conditioning trains.

    Training the conditioning keeps its input subsampling frozen (``lora.apply_lora``), and that conv front costs
    more than the layers above it; so it runs once per clip here, and each step starts from these frames. None
    when they would take more than ``max_bytes``: the front then runs, without gradient, on every batch.
    """
    out, size = ReferenceFrames(), 0
    for idx, b in _reference_batches(gpt, dataset, device, batch_size):
        for i, f in zip(idx, gpt.reference_frames(b.cond_mels, b.cond_lengths), strict=True):
            out[i] = f.float().cpu()
            size += out[i].numel() * out[i].element_size()
        if size > max_bytes:
            log.info("reference frames need over %.1f GB: the conditioning's input subsampling runs on every batch",
                     max_bytes / 2**30)
            return None
    return out


@torch.no_grad()
def conds_from_frames(gpt, frames: ReferenceFrames, indices: list[int], device,
                      batch_size: int = 16) -> list[torch.Tensor]:
    """Speaker latents (32, D) of the clips ``indices`` from their cached reference frames (as ``precompute_conds``
    gives them: padding masked)."""
    out = []
    for start in range(0, len(indices), batch_size):
        rows = [frames[i] for i in indices[start : start + batch_size]]
        latents = gpt.conditioning_from_frames(padded_frames(rows).to(device), torch.tensor([len(f) for f in rows],
                                               device=device), mask_padding=True)
        out.extend(latent.float().cpu() for latent in latents)
    return out


@torch.no_grad()
def precompute_conds(gpt, dataset, device, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Speaker latents (32, D) of every clip: constant while the conditioning modules are frozen."""
    out = {}
    for idx, b in _reference_batches(gpt, dataset, device, batch_size):
        latents = gpt.get_conditioning(b.cond_mels, b.cond_lengths, mask_padding=True)  # (B, 32, D), batch-independent
        out.update({i: latents[k].float().cpu() for k, i in enumerate(idx)})
    return out
