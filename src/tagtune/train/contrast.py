"""The contrast texts of the tag-contrast term (``loss.tag_contrast``; the term itself: ``models.contrast``).

Every tagged clip whose tags match its recorded events gets one contrast text per visit: one of its tags, chosen
at random, replaced by another tag of the set or removed (with the bare "▁" piece before it, as evaluation
removes a tag), each of those with equal chance. The choice is a pure function of the seed, the epoch and the
clip's dataset index, so an exact resume and a run over two processes train on the same texts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tagtune.models.contrast import ContrastRows
from tagtune.tags.occurrences import occurrences, with_other_tag, without_tag
from tagtune.tags.vocab import TagSet


@dataclass(frozen=True)
class TagContrast:
    """What choosing contrast texts needs: the tag set, its text ids, the "▁" piece id and the run's seed."""

    tags: TagSet
    tag_ids: dict[str, int]  # canonical tag -> text id
    space_id: int | None  # the bare "▁" piece written before a tag, or None (``tags.neutral.tokenizer_layout``)
    stop_text: int  # the padding of text ids
    seed: int

    def text(self, item: dict, key: int, epoch: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """(contrast text ids, code span of the contrasted event) of one clip, or None when it has no tag with
        a known event."""
        if not item["has_tag"]:
            return None
        found = [o for o in occurrences(item, 0, self.tags, self.tag_ids) if o.span and o.span[1] > o.span[0]]
        if not found:
            return None
        pick = random.Random(f"{self.seed}:{epoch}:{key}")  # str seeds hash with sha512: the same in every process
        occ = pick.choice(found)
        others = [t for t in self.tag_ids if t != occ.tag]
        k = pick.randrange(len(others) + 1)
        ids = item["text_ids"]
        text = without_tag(ids, occ.position, self.space_id) if k == len(others) else \
            with_other_tag(ids, occ.position, self.tag_ids[others[k]])
        return text, occ.span

    def rows(self, items: list[dict], keys: list[int], epoch: int) -> ContrastRows | None:
        """The contrast texts of a micro-batch's ``items`` (dataset indices ``keys``), or None when none has one."""
        chosen = [(r, c) for r, (it, key) in enumerate(zip(items, keys, strict=True))
                  if (c := self.text(it, key, epoch)) is not None]
        if not chosen:
            return None
        texts = [c[0] for _, c in chosen]
        return ContrastRows(
            rows=torch.tensor([r for r, _ in chosen]),
            text_ids=torch.nn.utils.rnn.pad_sequence(texts, batch_first=True, padding_value=self.stop_text),
            text_lengths=torch.tensor([len(t) for t in texts]),
            spans=torch.tensor([c[1] for _, c in chosen]),
        )
