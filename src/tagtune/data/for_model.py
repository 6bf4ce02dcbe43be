"""``tagtune prepare``: a corpus -> DATA_DIR for one base model, with its tags.

Finds the corpus's tags (``tags="auto"``) or takes a list, canonicalises them, extends the base tokenizer
with one piece per tag, writes that tokenizer and the tag set into DATA_DIR (so training and synthesis use
exactly the same text path), and runs the shard pipeline with the model's DVAE and limits. An IndexTTS-2
base runs the same pipeline with its w2v-BERT + semantic codec (``data.semantic``) and ``PrepareSettingsV2``:
the codes are semantic codes, the shards keep w2v-BERT features, and each example also names its emotion clip.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tagtune.checkpoint import bpe_path, folder_fingerprint, read_model_config
from tagtune.config import ModelConfigV2
from tagtune.data.encoders import TokenizerTextEncoder, clip_encoder_from_model
from tagtune.data.prepare import PrepareSettings, PrepareSettingsV2, check_data_dir, prepare
from tagtune.data.shards import FEATURES
from tagtune.data.sources import ColumnMap, open_source, with_events
from tagtune.folders import TAGS_FILE, TOKENIZER_FILE
from tagtune.tags import TagSet, extend_tokenizer, load_tag_map, read_tagset, scan_texts
from tagtune.tags.vocab import merge_variant_list
from tagtune.text import TextTokenizer

log = logging.getLogger(__name__)


def corpus_tagset(texts: list[str], tags: str | list[str], tag_map=None, multiword: str = "own",
                  min_count: int = 1) -> TagSet:
    """The canonical tag set of a corpus: discovered (``"auto"``) or the given list, with the tag map.

    Variants of one tag in the list (``<laughs>``, ``<Laugh>``) are one tag, spelled as first listed.
    """
    aliases = load_tag_map(tag_map) if tag_map else {}
    if tags == "auto":
        return scan_texts(texts, tag_map=aliases, multiword=multiword, min_count=min_count).tagset
    targets = {t for t in aliases.values() if t}
    listed = merge_variant_list(tags)
    return TagSet(tags=merge_variant_list([*listed, *sorted(targets - set(listed))]), aliases=aliases,
                  multiword=multiword)


def _v2_manifest() -> dict:
    """What an IndexTTS-2 data folder says about its arrays (read by training)."""
    from tagtune.data.semantic import FEATURE_PATH, FEATURE_RATE

    return {"model_family": "v2", "codes": "semantic", "cond_features": {
        "array": FEATURES, "rate": FEATURE_RATE, "path": FEATURE_PATH, "dtype": "float16",
        "speaker": "cond (another clip of the speaker, as 1.x)", "emotion": "emo (never a tagged target itself)"}}


def prepare_for_model(model_dir: str | Path, data: str, out_dir: str | Path, *, tags: str | list[str] = "auto",
                      tag_map=None, multiword: str = "own", kind: str = "auto", columns: ColumnMap | None = None,
                      workers: int = 0, overwrite: bool = False, progress: bool = True, device=None,
                      events: str | Path | None = None, **settings) -> dict | None:
    """Prepare corpus ``data`` for base model ``model_dir`` into ``out_dir``; returns the manifest.

    ``settings`` override :class:`PrepareSettings` fields (``val_fraction``, ``seed``, ...); the text and
    audio limits come from the model. Every input (settings, model, corpus, tags, ``out_dir``) is checked
    before anything is written: a refused run leaves ``out_dir`` exactly as it was.

    Audio paths of a manifest or LJSpeech folder may lie outside the corpus folder: relative ones are
    resolved against the folder of the file naming them, absolute ones are used as they are. Only audio is
    decoded from them, and only its log-mel and codes enter ``out_dir``; a path that is missing, no regular
    file (a folder, FIFO or device, also behind a link) or no audio is a rejection with that reason.

    ``events``: an events file (``tagtune events``) whose boundaries the clips that list none take, by id
    (``data.sources.with_events``); they enter the records, so a resume with other events is refused.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = read_model_config(model_dir)
    v2 = isinstance(cfg, ModelConfigV2)
    prep_settings = (PrepareSettingsV2 if v2 else PrepareSettings).for_model(cfg.gpt, **settings)
    check_data_dir(out_dir)  # before the corpus is read: a wrong out_dir is refused at once
    source = open_source(data, kind=kind, columns=columns)
    events_record = {}  # where the overlaid boundaries came from, for the manifest
    if events is not None:
        source = with_events(source, events)
        events_record["events_file"] = {"path": str(Path(events).resolve()), "clips": source.overlaid}
    texts = [r.text for r in source.records() if isinstance(r.text, str)]
    tagset = corpus_tagset(texts, tags, tag_map, multiword)
    bpe_bytes, tagset = extend_tokenizer(bpe_path(model_dir, cfg).read_bytes(), read_tagset(model_dir), tagset)
    log.info("tags: %s", ", ".join(f"{t}={tagset.token_ids[t]}" for t in tagset.tags) or "none")
    tokenizer = TextTokenizer(bpe_bytes, tagset, unknown_tags="drop")
    clip_encoder = clip_encoder_from_model(model_dir, device)
    fingerprint = folder_fingerprint(model_dir, cfg)
    return prepare(
        source, out_dir, clip_encoder, TokenizerTextEncoder(tokenizer), prep_settings, num_workers=workers,
        base_checkpoint_hash=fingerprint, overwrite=overwrite, progress=progress,
        manifest_extra={"base_checkpoint": {"dir": str(model_dir.resolve()), "hash": fingerprint},
                        "tokenizer": TOKENIZER_FILE, "tags_file": TAGS_FILE, "tag_ids": dict(tagset.token_ids),
                        **events_record,
                        **(_v2_manifest() if v2 else {})},
        files={TOKENIZER_FILE: bpe_bytes,
               TAGS_FILE: json.dumps(tagset.to_dict(), ensure_ascii=False, indent=2).encode("utf-8")},
    )
