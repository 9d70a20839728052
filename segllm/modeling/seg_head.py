"""Seg head: the hidden state that predicts [SEG] -> prompt embeddings for the mask decoder."""

from __future__ import annotations

import torch
from torch import nn

from ..config import SegHeadConfig


class SegHead(nn.Module):
    """MLP (Linear, ReLU, Linear, Dropout) as LISA's ``text_hidden_fcs``, with T prompt tokens.

    Args:
        llm_hidden: the LLM's hidden size H.
        prompt_dim: the decoder's prompt embedding size D.
        cfg: hidden width, number of prompt tokens T, dropout.
    """

    def __init__(self, llm_hidden: int, prompt_dim: int, cfg: SegHeadConfig):
        super().__init__()
        hidden = cfg.hidden_dim or llm_hidden
        self.num_prompt_tokens = cfg.num_prompt_tokens
        self.prompt_dim = prompt_dim
        self.mlp = nn.Sequential(
            nn.Linear(llm_hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, prompt_dim * cfg.num_prompt_tokens), nn.Dropout(cfg.dropout),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[S, H] -> [S, T, D]."""
        out = self.mlp(hidden.to(self.mlp[0].weight.dtype))
        return out.view(hidden.shape[0], self.num_prompt_tokens, self.prompt_dim)
