"""Acceptance rules on hand-built paths, including the padded-path case the authors' code gets wrong."""

from __future__ import annotations

import torch

from medusa_trt.medusa.acceptance import greedy_accept, typical_accept


def t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows)


def test_greedy_takes_longest_matching_prefix() -> None:
    cand = t([[5, 1, 2, 3], [5, 1, 4, 9], [5, 7, 7, 7]])
    pred = t([[1, 4, 3, 0], [1, 4, 9, 0], [1, 1, 1, 1]])  # argmax after each node
    valid = torch.ones(3, 4, dtype=torch.bool)
    assert greedy_accept(cand, pred, valid) == (1, 3)  # row 1 matches 1, 4, 9


def test_greedy_first_maximum_and_none() -> None:
    cand, valid = t([[5, 1, 2], [5, 1, 3]]), torch.ones(2, 3, dtype=torch.bool)
    assert greedy_accept(cand, t([[1, 8, 0], [1, 8, 0]]), valid) == (0, 1)
    assert greedy_accept(cand, t([[4, 0, 0], [4, 0, 0]]), valid) == (0, 0)


def test_greedy_pad_never_accepts_token_zero() -> None:
    # Path [root, a] padded to depth 2: the authors pad the candidate with token 0, so a model whose
    # argmax after `a` is 0 would "accept" an unverified token. Masked pads must not.
    cand = t([[5, 1, 0]])
    pred = t([[1, 0, 3]])
    assert greedy_accept(cand, pred, t([[1, 1, 0]]).bool()) == (0, 1)
    assert greedy_accept(cand, pred, torch.ones(1, 3, dtype=torch.bool)) == (0, 2)  # the bug, unmasked


def test_typical_accepts_likely_and_rejects_unlikely() -> None:
    v = 8
    logits = torch.full((2, 3, v), -10.0)
    logits[:, 0, 3] = 10.0  # after the root, token 3 is near-certain
    logits[:, 1, 4] = 10.0
    cand = t([[0, 3, 4], [0, 5, 4]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    best, acc = typical_accept(cand, logits, valid, temperature=0.7, posterior_threshold=0.09, posterior_alpha=0.3)
    assert (best, acc) == (0, 2)
    masked = valid.clone()
    masked[0, 2] = False
    assert typical_accept(cand, logits, masked, temperature=0.7, posterior_threshold=0.09, posterior_alpha=0.3) == (
        0,
        1,
    )


def test_typical_tie_break_prefers_likelier_path() -> None:
    logits = torch.zeros(2, 2, 4)
    logits[:, 0] = torch.tensor([0.0, 2.0, 1.9, -5.0])  # tokens 1 and 2 both pass, 1 is likelier
    cand = t([[0, 2, 0], [0, 1, 0]])[:, :2]
    valid = torch.ones(2, 2, dtype=torch.bool)
    assert typical_accept(cand, logits, valid, temperature=1.0, posterior_threshold=0.09, posterior_alpha=0.3) == (1, 1)


def test_typical_threshold_is_min_of_epsilon_and_alpha_entropy_term_with_strict_greater() -> None:
    """Uniform over 4 tokens: p = 0.25 exactly and exp(-H) ~= 0.25, so each bound can be made to decide."""
    cand, valid = t([[0, 1]]), torch.ones(1, 2, dtype=torch.bool)
    logits = torch.zeros(1, 2, 4)

    def acc(eps: float, alpha: float) -> int:
        return typical_accept(cand, logits, valid, temperature=1.0, posterior_threshold=eps, posterior_alpha=alpha)[1]

    assert acc(0.09, 0.3) == 1  # the defaults: min(0.09, 0.075) < 0.25
    assert acc(0.5, 0.9) == 1  # the entropy bound decides: min(0.5, 0.225) < 0.25 (epsilon alone rejects)
    assert acc(0.5, 1.2) == 0  # the entropy bound decides: min(0.5, 0.3) > 0.25
    assert acc(0.2, 1.2) == 1  # epsilon decides: min(0.2, 0.3) < 0.25 (the entropy bound alone rejects)
    assert acc(0.25, 100.0) == 0  # p == threshold is rejected: the test is strict (p > threshold)
    assert acc(0.24, 100.0) == 1
