"""QueryMeldNet's query meld: learnable and conditional queries fused in every decoder layer.

The query set has two kinds (``query_strategy``):

- **conditional** queries come from the encoder: every encoder position proposes a box around
  itself, the proposals are scored against the text embeddings (the best class logit) and the
  top k become queries (content: the encoder feature, detached; position: the refined box), as
  in two-stage MaskDINO;
- **learnable** queries are trained from scratch (a content vector and a box each).

``"meld"`` (the default) uses ``num_learnable`` learnable plus ``num_conditional`` conditional
queries (QueryMeldNet: 100 + 300). ``"learnable"`` and ``"conditional"`` keep the *total* and
use one kind only (400 learnable, or 400 conditional), which is the comparison of the paper's
Table 2. Conditional queries come first in the set, learnable ones after them;
``MeldOutputs.query_kinds`` says which is which.

Each decoder layer (``MeldDecoderLayer``) runs self-attention over the whole set, then the
**dual-query cross-attention** (``DualQueryCrossAttention``): conditional queries attend to the
learnable ones and learnable queries to the conditional ones, two attentions with their own
residual and norm, so local instance queries read the global context and global queries read
the instances ("hierarchical and interactive" in the paper; with one kind only it is the
identity). Then a cross-attention to the text tokens (HIPIE's language-guided decoder; the
paper does not say whether its decoder reads the text beyond query selection and the class
head), deformable attention to the image features inside each query's box, and an FFN. After
each layer the boxes are refined and the layer predicts classes, boxes and masks (deep
supervision). Class logits are the dot product of the (projected) query and each text
embedding (``PromptClassifier``; one class per text, or per token span for SegLLM's prompts).

Matching and loss are the family's (``matching.py``, ``losses.py``): Hungarian matching over
all queries, whatever their kind. ``matched_query_kinds`` and ``query_type_shares`` give the
paper's query-type statistic (the share of thing objects predicted by conditional queries and
of stuff objects by learnable ones: 99.6 % and 53.3 % on COCO).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .losses import QueryLossConfig
from .matching import Target, match
from .transformer_decoder import (
    MLP,
    DecoderLayer,
    DecoderOutputs,
    Predictions,
    PromptClassifier,
    class_token_spans,
    encoder_proposals,
    sine_embed_boxes,
)

MeldStrategy = Literal["learnable", "conditional", "meld"]
LEARNABLE, CONDITIONAL = 0, 1
"""Values of ``MeldOutputs.query_kinds``."""


def query_counts(strategy: str, *, num_learnable: int, num_conditional: int) -> tuple[int, int]:
    """(learnable, conditional) queries a strategy uses: both for "meld", the same total of
    one kind otherwise (the paper compares the three at 400 queries)."""
    total = num_learnable + num_conditional
    counts = {"meld": (num_learnable, num_conditional), "learnable": (total, 0),
              "conditional": (0, total)}
    if strategy not in counts:
        raise ValueError(f"query_strategy must be one of {sorted(counts)}, got {strategy!r}")
    return counts[strategy]


class DualQueryCrossAttention(nn.Module):
    """Conditional queries attend to the learnable ones and learnable queries to the
    conditional ones (both read the other kind as it entered the layer); residual + LayerNorm
    per kind. A set with one kind passes unchanged."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.conditional_reads_learnable = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.learnable_reads_conditional = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_conditional = nn.LayerNorm(dim)
        self.norm_learnable = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor,
                num_conditional: int) -> torch.Tensor:
        """[N, Q, d] queries (the first ``num_conditional`` conditional) -> [N, Q, d]."""
        cond, learn = tgt[:, :num_conditional], tgt[:, num_conditional:]
        if cond.shape[1] == 0 or learn.shape[1] == 0:
            return tgt
        cond_pos, learn_pos = query_pos[:, :num_conditional], query_pos[:, num_conditional:]
        read_learn = self.conditional_reads_learnable(cond + cond_pos, learn + learn_pos, learn,
                                                      need_weights=False)[0]
        read_cond = self.learnable_reads_conditional(learn + learn_pos, cond + cond_pos, cond,
                                                     need_weights=False)[0]
        return torch.cat([self.norm_conditional(cond + read_learn),
                          self.norm_learnable(learn + read_cond)], dim=1)


class MeldDecoderLayer(DecoderLayer):
    """The family's decoder layer with the dual-query cross-attention after self-attention:
    self-attention, dual-query cross-attention, text cross-attention, deformable attention to
    the image features, FFN (post-norm)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, levels: int, points: int):
        super().__init__(dim, ffn_dim, heads, levels, points)
        self.dual_attn = DualQueryCrossAttention(dim, heads)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, boxes: torch.Tensor,
                memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                prompt_tokens: torch.Tensor, num_conditional: int = 0) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        tgt = self.dual_attn(tgt, query_pos, num_conditional)
        tgt = self.norm_prompt(tgt + self.prompt_attn(tgt + query_pos, prompt_tokens,
                                                      prompt_tokens, need_weights=False)[0])
        reference = boxes[:, :, None].expand(-1, -1, len(spatial_shapes), -1)
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference, memory,
                                               spatial_shapes))
        return self.norm3(tgt + self.linear2(torch.relu(self.linear1(tgt))))


@dataclass
class MeldOutputs(DecoderOutputs):
    """The family's outputs plus each query's kind ([Q], ``LEARNABLE`` / ``CONDITIONAL``)."""

    query_kinds: torch.Tensor | None = None


def text_spans(num_texts: int) -> list[slice]:
    """One class per text embedding (QueryMeldNet's open-vocabulary classes)."""
    return [slice(k, k + 1) for k in range(num_texts)]


class MeldDecoder(nn.Module):
    """The query-meld transformer decoder.

    Args:
        dim: model width.
        prompt_dim: width of the text embeddings (or [SEG] prompt tokens).
        mask_dim: per-pixel embedding width.
        num_classes: for SegLLM's prompts, 1 (target) or 2 (target, reference) classes over
            the prompt tokens (``class_token_spans``); ``forward(..., spans=...)`` overrides it
            (one class per text: ``text_spans``).
        layers, ffn_dim, heads, points, levels: layer sizes.
        num_learnable, num_conditional: the meld's query counts (100 + 300).
        query_strategy: "meld", "learnable" or "conditional" (see the module docstring).
    """

    def __init__(self, *, dim: int = 256, prompt_dim: int = 512, mask_dim: int = 256,
                 num_classes: int = 1, layers: int = 9, ffn_dim: int = 2048, heads: int = 8,
                 points: int = 4, levels: int = 4, num_learnable: int = 100,
                 num_conditional: int = 300, query_strategy: MeldStrategy = "meld"):
        super().__init__()
        self.num_classes, self.query_strategy = num_classes, query_strategy
        self.num_learnable, self.num_conditional = query_counts(
            query_strategy, num_learnable=num_learnable, num_conditional=num_conditional)
        self.prompt_proj = nn.Sequential(nn.Linear(prompt_dim, dim), nn.LayerNorm(dim))
        if self.num_conditional:  # the encoder's proposal head (two-stage selection)
            self.enc_output = nn.Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
        if self.num_learnable:
            self.query_feat = nn.Embedding(self.num_learnable, dim)
            self.query_embed = nn.Embedding(self.num_learnable, 4)  # box, logit space
        self.layers = nn.ModuleList(MeldDecoderLayer(dim, ffn_dim, heads, levels, points)
                                    for _ in range(layers))
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_embed = PromptClassifier(dim)
        self.bbox_embed = MLP(dim, dim, 4, 3)  # shared by every layer, as MaskDINO
        self.mask_embed = MLP(dim, dim, mask_dim, 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        if self.num_learnable:
            # learnable boxes spread over the image, mid-sized to large: they start where
            # background regions are, not on points
            with torch.no_grad():
                boxes = torch.empty(self.num_learnable, 4)
                boxes[:, :2].uniform_(0.1, 0.9)
                boxes[:, 2:].uniform_(0.3, 0.9)
                self.query_embed.weight.copy_(torch.log(boxes / (1 - boxes)))

    def predict(self, tgt: torch.Tensor, boxes: torch.Tensor, tokens: torch.Tensor,
                spans: list[slice], mask_features: torch.Tensor) -> Predictions:
        out = self.decoder_norm(tgt)
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(out), mask_features)
        return Predictions(logits=self.class_embed(out, tokens, spans), boxes=boxes, masks=masks)

    def conditional_queries(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                            tokens: torch.Tensor, spans: list[slice]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k valid encoder proposals by their best text score: (content [N, k, d],
        refined boxes in logit space [N, k, 4]), not detached (the proposal set's loss trains
        the encoder heads)."""
        proposals, valid = encoder_proposals(memory, spatial_shapes)
        content = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid, 0.0)))
        scores = self.class_embed(content, tokens, spans).amax(-1)
        scores = scores.masked_fill(~valid[..., 0], float("-inf"))
        k = min(self.num_conditional, int(valid[0].sum()))  # never an invalid (border) one
        index = scores.topk(k, dim=1).indices
        picked = content.gather(1, index[..., None].expand(-1, -1, content.shape[-1]))
        box_logits = (self.bbox_embed(picked)
                      + proposals.gather(1, index[..., None].expand(-1, -1, 4)).to(picked.dtype))
        return picked, box_logits

    def forward(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                mask_features: torch.Tensor, prompts: torch.Tensor,
                spans: list[slice] | None = None) -> MeldOutputs:
        """
        Args:
            memory: [N, S, dim] encoder memory (one row per prompt set).
            spatial_shapes: (h, w) of its levels.
            mask_features: [N, mask_dim, h4, w4] per-pixel embeddings.
            prompts: [N, T, prompt_dim] text embeddings or prompt tokens.
            spans: which tokens stand for each class; default ``class_token_spans(T,
                num_classes)``.
        """
        tokens = self.prompt_proj(prompts.to(memory.dtype))
        if spans is None:
            spans = class_token_spans(tokens.shape[1], self.num_classes)
        n = memory.shape[0]
        contents, box_logits, proposals = [], [], None
        num_conditional = 0
        if self.num_conditional:
            picked, picked_boxes = self.conditional_queries(memory, spatial_shapes, tokens, spans)
            proposals = self.predict(picked, picked_boxes.sigmoid(), tokens, spans, mask_features)
            contents.append(picked.detach())  # MaskDINO: queries start from detached proposals
            box_logits.append(picked_boxes.detach())
            num_conditional = picked.shape[1]
        if self.num_learnable:
            contents.append(self.query_feat.weight[None].expand(n, -1, -1).to(memory.dtype))
            box_logits.append(self.query_embed.weight[None].expand(n, -1, -1).to(memory.dtype))
        tgt, ref = torch.cat(contents, 1), torch.cat(box_logits, 1)
        kinds = torch.tensor([CONDITIONAL] * num_conditional + [LEARNABLE] * self.num_learnable,
                             device=memory.device)
        sets = []
        for layer in self.layers:
            boxes = ref.sigmoid()
            query_pos = self.ref_point_head(sine_embed_boxes(boxes, tgt.shape[-1]))
            tgt = layer(tgt, query_pos, boxes, memory, spatial_shapes, tokens, num_conditional)
            refined = self.bbox_embed(self.decoder_norm(tgt)) + ref
            sets.append(self.predict(tgt, refined.sigmoid(), tokens, spans, mask_features))
            ref = refined.detach()  # look forward once
        return MeldOutputs(final=sets[-1], layers=sets[:-1], proposals=proposals,
                           query_kinds=kinds)


# --------------------------------------------------------------------------- query-type statistic


def matched_query_kinds(outputs: MeldOutputs, targets: Sequence[Target],
                        cfg: QueryLossConfig) -> list[torch.Tensor]:
    """For each prompt set's ground-truth objects, the kind of the query that predicts each:
    the query Hungarian matching gives it on the last layer (the loss's own matching, over all
    queries whatever their kind). One [G_i] tensor per set, in the targets' order."""
    final = outputs.final
    out = []
    for i, target in enumerate(targets):
        rows, cols = match(final.logits[i], final.boxes[i], final.masks[i], target,
                           class_weight=cfg.class_weight, box_l1_weight=cfg.box_l1_weight,
                           giou_weight=cfg.giou_weight, mask_bce_weight=cfg.mask_bce_weight,
                           dice_weight=cfg.dice_weight, num_points=cfg.num_points,
                           focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
        kinds = torch.empty(target.labels.numel(), dtype=torch.long)
        kinds[cols] = outputs.query_kinds.cpu()[rows]
        out.append(kinds)
    return out


@dataclass
class QueryTypeShares:
    """Which query kind predicts thing and stuff objects (the paper's section 4.1 statistic).
    Shares are fractions in [0, 1]; NaN where there is no object of that sort."""

    things_by_conditional: float
    things_by_learnable: float
    stuff_by_conditional: float
    stuff_by_learnable: float
    num_things: int
    num_stuff: int


def query_type_shares(kinds: Sequence[int], is_thing: Sequence[bool]) -> QueryTypeShares:
    """The shares of thing and stuff objects predicted by each kind.

    Args:
        kinds: per object, ``LEARNABLE`` or ``CONDITIONAL`` (``matched_query_kinds``).
        is_thing: per object, whether it is a thing (else stuff).
    """
    kinds, is_thing = list(map(int, kinds)), list(map(bool, is_thing))
    if len(kinds) != len(is_thing):
        raise ValueError(f"query_type_shares: {len(kinds)} kinds for {len(is_thing)} objects")
    unknown = sorted(set(kinds) - {LEARNABLE, CONDITIONAL})
    if unknown:
        raise ValueError(f"query_type_shares: unknown query kinds {unknown}")

    def share(thing: bool, kind: int) -> float:
        group = [k for k, t in zip(kinds, is_thing, strict=True) if t == thing]
        return sum(k == kind for k in group) / len(group) if group else math.nan

    return QueryTypeShares(
        things_by_conditional=share(True, CONDITIONAL), things_by_learnable=share(True, LEARNABLE),
        stuff_by_conditional=share(False, CONDITIONAL), stuff_by_learnable=share(False, LEARNABLE),
        num_things=sum(is_thing), num_stuff=len(is_thing) - sum(is_thing))
