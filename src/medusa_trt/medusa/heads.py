"""Medusa-1 heads as a trainable ``nn.Module`` (Medusa paper, arXiv 2401.10774 §2.1.1; the authors' ``ResBlock``).

Head k reads the backbone's last hidden state (after the final norm) and predicts the token k+2
positions ahead: ``lm_head_k(ResBlock^L(h))``. The state-dict keys are FasterDecoding's verbatim
(``{k}.{l}.linear.weight|bias`` and ``{k}.{L}.weight``), which is what ``convert`` reads.
Only training imports this module; the runtime has its own inference copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch  # noqa: TID253 - imported only by training code, never at CLI start
from torch import nn  # noqa: TID253

HEADS_FILE = "medusa_lm_head.safetensors"


class ResBlock(nn.Module):
    """``x + SiLU(linear(x))`` with a zero weight and PyTorch's default bias, as the authors initialise it."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)  # the bias keeps its default uniform init (authors' code)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    """K heads of L ResBlocks + an lm_head each; separate blocks per layer (no weight sharing).

    ``share_lm_head``: every head projects with the frozen base lm_head (a buffer, not a parameter),
    so only the ResBlocks train (the authors' shared-lm_head variant). The exported FasterDecoding
    file still carries one ``{k}.{L}.weight`` per head (copies), so every consumer loads it unchanged.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int,
        num_layers: int = 1,
        lm_head_weight: torch.Tensor | None = None,
        share_lm_head: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.num_heads, self.num_layers = num_heads, num_layers
        self.share_lm_head = share_lm_head
        if share_lm_head:
            if lm_head_weight is None:
                raise ValueError("share_lm_head needs the base lm_head weight")
            self.heads = nn.ModuleList(
                nn.Sequential(*[ResBlock(hidden_size) for _ in range(num_layers)]) for _ in range(num_heads)
            )
            # not persistent: checkpoints hold only what trains; the base lm_head is reloaded from the model
            self.register_buffer("lm_head", lm_head_weight.detach().clone(), persistent=False)  # [V, D]
            return
        self.heads = nn.ModuleList(
            nn.Sequential(
                *[ResBlock(hidden_size) for _ in range(num_layers)], nn.Linear(hidden_size, vocab_size, bias=False)
            )
            for _ in range(num_heads)
        )
        if lm_head_weight is not None:  # paper: W2 starts as the base lm_head, so head k starts as the base
            with torch.no_grad():
                for head in self.heads:
                    head[-1].weight.copy_(lm_head_weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D] -> logits [K, B, S, V]."""
        if self.share_lm_head:
            lm = self.lm_head.to(hidden.dtype)  # [V, D]
            return torch.stack([nn.functional.linear(head(hidden), lm) for head in self.heads], dim=0)
        return torch.stack([head(hidden) for head in self.heads], dim=0)

    def fasterdecoding_state_dict(self) -> dict[str, torch.Tensor]:
        """``{k}.{l}.linear.weight|bias`` and ``{k}.{L}.weight``: the ModuleList's own key names."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.heads.state_dict().items()}
        if self.share_lm_head:
            lm = self.lm_head.detach().to("cpu").contiguous()  # the base dtype: an exact copy
            state.update({f"{k}.{self.num_layers}.weight": lm.clone() for k in range(self.num_heads)})
        return state

    def config_dict(self, base_model: str) -> dict[str, Any]:
        return {
            "medusa_num_heads": self.num_heads,
            "medusa_num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "base_model_name_or_path": base_model,
        }

    @classmethod
    def from_pretrained(cls, heads_dir: str | Path) -> MedusaHeads:
        """Read FasterDecoding heads written by ``heads train`` (or the authors' safetensors)."""
        from safetensors.torch import load_file

        from medusa_trt.errors import CheckpointError

        d = Path(heads_dir)
        try:
            cfg = json.loads((d / "config.json").read_text())
            state = load_file(str(d / HEADS_FILE))
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
            raise CheckpointError(
                f"{d}: cannot read Medusa heads ({e.__class__.__name__}: {e})".splitlines()[0],
                hint="Expected config.json + medusa_lm_head.safetensors (FasterDecoding format).",
            ) from e
        layers = int(cfg.get("medusa_num_layers", 1))
        heads = sorted({int(k.split(".")[0]) for k in state})
        lm = state[f"{heads[0]}.{layers}.weight"]  # [V, D]
        model = cls(int(lm.shape[1]), int(lm.shape[0]), len(heads), layers)
        model.heads.load_state_dict(state)
        return model
