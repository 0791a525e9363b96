"""Acceptance rules over the tree's root-to-leaf paths (the authors' ``evaluate_posterior``).

Source: docs/sources.md, Medusa algorithm.

Inputs are per path: ``candidates [P, D+1]`` (column 0 is the root token), ``valid [P, D+1]`` (False on
retrieve-index pads). Both return ``(best_path, accepted)`` where ``accepted`` counts draft tokens
(the root is always kept).

- ``greedy_accept`` is exact: a draft token is accepted iff it equals the base model's argmax after
  the path so far, so greedy Medusa output is token-for-token plain greedy output. Pads never match
  (the authors' code compares pads as token 0, which can "accept" a token that was never verified).
- ``exact_accept`` is the default for temperature > 0: sequential rejection over each node's children
  against the warped target distribution, so sampling with Medusa is distributed exactly as plain
  sampling (proof in its docstring).
- ``typical_accept`` is the paper's typical acceptance for temperature > 0. It is *lossy*: the output
  does not follow the base model's sampling distribution exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _longest(match: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accepted prefix length per path, and the max over paths. match: [P, D] bool."""
    import torch

    acc = torch.cumprod(match.to(torch.int32), dim=1).sum(dim=1)  # [P]
    return acc, acc.max()


def greedy_accept(candidates: torch.Tensor, predictions: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    """Exact greedy acceptance. predictions[p, j] = argmax of the base logits at path node j."""
    match = (candidates[:, 1:] == predictions[:, :-1]) & valid[:, 1:]  # [P, D]
    acc, best_len = _longest(match)
    if int(best_len) == 0:
        return 0, 0
    return int(acc.argmax()), int(best_len)  # argmax returns the first maximum


def typical_accept(
    candidates: torch.Tensor,
    path_logits: torch.Tensor,
    valid: torch.Tensor,
    *,
    temperature: float,
    posterior_threshold: float,
    posterior_alpha: float,
) -> tuple[int, int]:
    """Typical acceptance (lossy). path_logits: [P, D+1, V] base logits at each path node."""
    import torch

    probs = torch.softmax(path_logits[:, :-1].float() / temperature, dim=-1)  # [P, D, V]
    cand_p = probs.gather(-1, candidates[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [P, D]
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)  # [P, D]
    threshold = torch.clamp(torch.exp(-entropy) * posterior_alpha, max=posterior_threshold)
    match = (cand_p > threshold) & valid[:, 1:]
    acc, best_len = _longest(match)
    length = int(best_len)
    if length == 0:
        return 0, 0
    # Among the longest paths keep the most likely one (the authors' tie-break).
    score = torch.log(cand_p[:, :length] + 1e-30).sum(-1)  # [P]
    score = torch.where(acc == length, score, torch.full_like(score, -float("inf")))
    return int(score.argmax()), length


def exact_accept(
    children: Sequence[Sequence[int]], node_tokens: Sequence[int], sample_at: Callable[[int], int]
) -> tuple[list[int], int]:
    """Lossless sequential rejection over the tree (root = node 0). Returns (accepted path, next token).

    ``sample_at(node)`` draws the token t that plain sampling would emit after ``node`` (warped target p,
    one fresh uniform per emitted position). Child x_j (children in tree order) is accepted iff t = x_j:
    after x1..x_j-1 were rejected that has probability p(x_j) / (1 - p(x1) - ... - p(x_j-1)), the sequential
    rejection rule; if every child is rejected, t is a draw from the rest of p, renormalised.

    Exact: (1) the drafts are top-k picks that depend on the prefix only, never on the draws;
    (2) so in every branch the emitted token is t ~ p(. | prefix), plain sampling's own conditional;
    (3) by induction on positions the sequence has plain sampling's joint law (same draws, same text).
    """
    path = [0]
    while True:
        tok = sample_at(path[-1])
        nxt = next((c for c in children[path[-1]] if node_tokens[c] == tok), None)
        if nxt is None:
            return path, tok
        path.append(nxt)
