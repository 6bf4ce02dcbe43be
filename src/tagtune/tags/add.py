"""``tagtune tags add``: a complete model folder whose tokenizer and GPT know new tag tokens.

The tag pieces are appended to ``bpe.model`` as user-defined pieces (ids N, N+1, ... right after the base
vocabulary of N pieces); ``text_embedding`` and ``text_head`` (weight and bias) gain one row per tag before
the spare last row, so every old token keeps its row; ``number_text_tokens`` grows in config.yaml; the tags
file records canonical tags, aliases and ids. The folder is built beside the target and renamed into place.

An IndexTTS-2 folder grows the same way (its GPT has the same text tables); its s2mel, w2v-BERT statistics and
emotion matrices are carried over, and so are its auxiliary models (``hf_cache/``) and QwenEmotion folder when
it has them, linked where the file system allows.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from tagtune import __version__
from tagtune.atomic import atomic_write_bytes, atomic_write_text, publish_folder
from tagtune.checkpoint import (
    CheckpointError,
    bpe_path,
    carry_over,
    file_sha256,
    read_model_config,
    read_state_dict,
    save_pth,
    write_config,
)
from tagtune.folders import PROVENANCE_FILE, TAGS_FILE
from tagtune.tags.pieces import extend_tokenizer
from tagtune.tags.rows import TagInit, grow_state
from tagtune.tags.vocab import (
    TagSet,
    UnknownTagError,
    format_tag,
    load_tag_map,
    merge_variant_list,
    read_tagset,
    tag_name,
)

log = logging.getLogger(__name__)


@dataclass
class TagsAdded:
    out_dir: Path
    added: dict[str, int]  # new canonical tag -> token id
    kept: dict[str, int]  # tags the base already had


def _new_tags(known: list[str], wanted: list[str], aliases: dict, multiword: str,
              merge_variants: bool = True) -> list[str]:
    """Canonical spellings of ``wanted`` (after ``aliases``) that the ``known`` tags do not already cover.

    Variants of one tag (``<Laughs>``, ``<laugh>``) are one new tag, spelled as first listed.
    """
    probe = TagSet(tags=known, multiword=multiword, merge_variants=merge_variants)
    fresh = []
    for tag in (format_tag(tag_name(t)) for t in wanted):
        target = aliases.get(tag, tag)
        if target is None:
            continue
        try:
            probe.resolve(target)
        except UnknownTagError:  # a genuinely new tag
            fresh.append(target)
    return merge_variant_list(fresh, merge_variants)


def add_tags(model_dir: str | Path, tags: list[str], out_dir: str | Path, *, init: str = "mean",
             tag_map: str | Path | dict | None = None, multiword: str = "own", seed: int = 0) -> TagsAdded:
    """Write ``out_dir``: ``model_dir`` extended with ``tags`` (only those it does not know yet)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = read_model_config(model_dir)
    existing = read_tagset(model_dir) or TagSet()
    aliases = {**existing.aliases, **(load_tag_map(tag_map) if tag_map else {})}
    fresh = _new_tags(existing.tags, tags, aliases, multiword, existing.merge_variants)
    n_old = cfg.gpt.number_text_tokens
    sp = spm.SentencePieceProcessor(model_file=str(bpe_path(model_dir, cfg)))
    if sp.get_piece_size() != n_old:
        raise CheckpointError(f"{model_dir}: bpe.model has {sp.get_piece_size()} pieces but config.yaml says "
                              f"number_text_tokens={n_old}; the tokenizer and GPT do not belong together")
    wanted = TagSet(fresh, aliases, multiword, existing.merge_variants, existing.delimiters)
    model_bytes, tagset = extend_tokenizer(bpe_path(model_dir, cfg).read_bytes(), existing, wanted)
    ids = {t: tagset.token_ids[t] for t in fresh}
    expected = {t: n_old + i for i, t in enumerate(fresh)}
    if ids != expected:
        raise CheckpointError(f"tag ids {ids} are not contiguous after the base vocabulary ({expected})")

    gpt_file = model_dir / cfg.gpt_checkpoint
    state = grow_state(read_state_dict(gpt_file, "model"), fresh, n_old, TagInit(init, seed, model_bytes))
    cfg.gpt.number_text_tokens = n_old + len(fresh)

    with publish_folder(out_dir) as staging:
        save_pth(staging / Path(cfg.gpt_checkpoint).with_suffix(".pth").name, state)
        cfg.gpt_checkpoint = Path(cfg.gpt_checkpoint).with_suffix(".pth").name
        atomic_write_bytes(staging / cfg.dataset.bpe_model, model_bytes)
        carry_over(model_dir, staging, cfg)
        write_config(staging, cfg)
        atomic_write_text(staging / TAGS_FILE, json.dumps(tagset.to_dict(), ensure_ascii=False, indent=2))
        _write_provenance(staging, model_dir, gpt_file, fresh, init, seed)
    log.info("added %d tag(s) %s to %s", len(fresh), fresh, out_dir)
    return TagsAdded(out_dir, ids, dict(existing.token_ids))


def _write_provenance(folder: Path, base: Path, base_gpt: Path, fresh: list[str], init: str, seed: int) -> None:
    prov_path = base / PROVENANCE_FILE
    history = json.loads(prov_path.read_text()).get("history", []) if prov_path.is_file() else []
    history.append({
        "step": "tags add", "tags": fresh, "init": init, "seed": seed, "tagtune": __version__,
        "base": str(base.resolve()), "base_gpt_sha256": file_sha256(base_gpt),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    atomic_write_text(folder / PROVENANCE_FILE, json.dumps({"history": history}, indent=2))
