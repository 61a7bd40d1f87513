"""UCL's contrastive loss with intra-video hard negatives and a cross-video soft-nearest-neighbour negative.

Reference: ``CycleContrast.forward`` in gbc-iitd/US_UCL ``ucl/builder_gb.py``, the path taken by the GB pretraining
flags (``--single-loss-intra-inter --intranegs-only-two --qcap-include --negatives``). With
``q`` the normalised query embedding of the anchor, ``p`` the key-encoder embedding of the positive, ``n_1..n_K``
the query-encoder embeddings of the anchor's intra-video negatives and ``N`` a bank of negatives from the other
videos (all-gathered across ranks):

- mixed negative ``n^ = sum_{i in topk(q.N, k)} softmax(q.n_i / t_s) n_i`` (support size ``k`` = 4, ``t_s`` =
  ``soft-nn-t`` = 0.07); not re-normalised, as in the reference;
- ``L = CE([q.p, q.n_1, ..., q.n_K, q.n^] / t, 0)`` with ``t`` = ``moco-t`` = 0.07;
- warm-up (epochs < 10, ``only_qcap``): logits ``[q.p, q.n^]``.

The reference's bank is the whole all-gathered negative buffer, which also holds the anchor's *own* negatives;
the paper describes ``n^`` as a *cross-video* negative, so by default the anchor's own video is masked out
(``exclude`` in :func:`mixed_negative`; pass no mask for the reference behaviour).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mixed_negative", "ucl_logits", "UCLLoss"]


def mixed_negative(
    q: torch.Tensor,
    bank: torch.Tensor,
    support_size: int = 4,
    temperature: float = 0.07,
    exclude: torch.Tensor | None = None,
    num_eligible: int | None = None,
) -> torch.Tensor:
    """Soft nearest neighbour of each query among its ``support_size`` most similar bank negatives.

    Args:
        q: ``B x D`` normalised queries.
        bank: ``M x D`` normalised negatives (no gradient flows into it in the reference: it is a detached buffer).
        support_size: top-k size (``single-loss-ncap-support-size``); clamped to the eligible bank size.
        temperature: ``soft-nn-t``.
        exclude: optional ``B x M`` bool mask of bank entries a query may not use (its own video).
        num_eligible: the fewest entries any query may use, when the caller knows it from the shapes (each
            query excludes its own video's ``K`` rows: ``M - K``); skips reading ``exclude`` on the host (two
            host-device syncs per step on a GPU). ``None`` counts them from ``exclude``.

    Returns:
        ``B x D`` mixed negatives ``sum_i w_i n_i``, ``w = softmax(top-k similarities / temperature)``.

    Raises:
        ValueError: a query has no eligible bank entry.
    """
    sim = q @ bank.t()
    if exclude is not None:
        if num_eligible is None:
            num_eligible = int((~exclude).sum(1).min())
        if num_eligible < 1:
            raise ValueError("a query has no cross-video negatives: put at least 2 videos in every step's batch")
        sim = sim.masked_fill(exclude, float("-inf"))
        k = min(int(support_size), int(num_eligible))
    else:
        k = min(int(support_size), bank.shape[0])
    top, idx = sim.topk(k, dim=1)
    w = torch.softmax(top / temperature, dim=1)
    return torch.einsum("bk,bkd->bd", w, bank[idx])


def ucl_logits(
    q: torch.Tensor,
    p: torch.Tensor,
    negatives: torch.Tensor | None = None,
    mixed: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
    extra_exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Un-tempered logits ``[q.p, q.n_1..q.n_K, q.n^, q.e_1..q.e_M]``; column 0 is the positive.

    Args:
        q: ``B x D`` queries; p: ``B x D`` positives.
        negatives: ``B x K x D`` intra-video negatives (per query) or ``None``.
        mixed: ``B x D`` mixed negatives or ``None``.
        extra_negatives: ``M x D`` negatives shared by all queries (plain MoCo-style cross-video negatives), or
            ``None``; entries masked by ``extra_exclude`` (``B x M``) get ``-inf`` (they do not count).
    """
    cols = [(q * p).sum(-1, keepdim=True)]
    if negatives is not None:
        cols.append(torch.einsum("bd,bkd->bk", q, negatives))
    if mixed is not None:
        cols.append((q * mixed).sum(-1, keepdim=True))
    if extra_negatives is not None:
        extra = q @ extra_negatives.t()
        if extra_exclude is not None:
            extra = extra.masked_fill(extra_exclude, float("-inf"))
        cols.append(extra)
    return torch.cat(cols, dim=1)


class UCLLoss(nn.Module):
    """``CE(logits / temperature, 0)`` over :func:`ucl_logits` (``moco-t`` = 0.07)."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        negatives: torch.Tensor | None = None,
        mixed: torch.Tensor | None = None,
        extra_negatives: torch.Tensor | None = None,
        extra_exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = ucl_logits(q, p, negatives, mixed, extra_negatives, extra_exclude) / self.temperature
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, target)
