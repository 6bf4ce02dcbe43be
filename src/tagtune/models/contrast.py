"""The tag-contrast term of training: a tagged clip's event must be likelier under its own text than under a
contrast text (one tag replaced by another tag, or removed), by a margin in nats per event.

``train.contrast`` chooses the contrast texts (``ContrastRows``); both families' losses (``train.loss.RowLosses``,
``models.v2.objective.RowLossesV2``) run them as extra rows with the clip's own conditioning and codes and add
``contrast_penalty`` to the clip's code CE. Cross-entropy on the true text alone teaches *that* an event starts
where a tag stands far sooner than *which* event: on the IndexTTS-2 demo model a `<laughs>` event was likelier under
`<giggles>` in 28 of 162 validation events (docs/tag-contrast.md). The margin is on the sums over the event's codes,
which is how ``evaluate.reliance`` scores a trial, so a clip past the margin adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class ContrastRows:
    """Contrast texts for some rows of a batch (right-padded with the stop text token)."""

    rows: torch.Tensor  # (R,) the batch rows they belong to
    text_ids: torch.Tensor  # (R, Lt')
    text_lengths: torch.Tensor  # (R,)
    spans: torch.Tensor  # (R, 2) codes [first, last) of the contrasted event

    def to(self, device) -> ContrastRows:
        return ContrastRows(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def span_sums(ce: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Sums of per-position CE (R, L) over each row's code span [first, last) (R, 2): (R,); target position k
    is code k."""
    positions = torch.arange(ce.shape[1], device=ce.device)
    inside = (positions >= spans[:, :1]) & (positions < spans[:, 1:])
    return (ce * inside).sum(dim=1)


def contrast_penalty(true_ce: torch.Tensor, contrast_ce: torch.Tensor, contrast: ContrastRows, weight: float,
                     margin: float, batch_size: int) -> torch.Tensor:
    """Per-row penalty (B,): ``weight`` x max(0, margin - (NLL contrast - NLL true)) for the rows that have a
    contrast text, 0 for the others. ``true_ce``: the batch's per-position code CE (B, L); ``contrast_ce``: the
    contrast rows' (R, L')."""
    rows = contrast.rows
    gap = span_sums(contrast_ce, contrast.spans) - span_sums(true_ce[rows], contrast.spans)
    out = torch.zeros(batch_size, device=true_ce.device, dtype=true_ce.dtype)
    return out.index_add(0, rows, weight * torch.relu(margin - gap))
