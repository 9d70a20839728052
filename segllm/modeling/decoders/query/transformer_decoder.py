"""The query decoder (MaskDINO / HIPIE style), conditioned on prompt tokens instead of text.

Two-stage query selection: every encoder position proposes a box around itself; the
proposals are scored against the prompt tokens and the top k become queries (content: the
encoder feature, detached; position: the refined proposal box). Learnable queries (content
and box) can join them or replace them (``query_strategy``: "conditional", "learnable",
"both"). Each decoder layer runs self-attention over the queries, cross-attention to the prompt
tokens, deformable cross-attention to the encoder memory sampled inside the query's box, and
an FFN; after each layer the box is refined (a predicted offset in logit space, detached for
the next layer) and the layer predicts classes, boxes and masks (deep supervision).

Classes are open-vocabulary as in HIPIE / GLIP: a query's score for a class is its similarity
to the prompt tokens that stand for that class (the maximum over them). One prompt per
[SEG] is one "caption"; SegLLM's prompts have two classes when references are supervised
(the first half of the tokens: the referenced mask, the second half: the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .deformable_attention import MSDeformAttn

QueryStrategy = Literal["learnable", "conditional", "both"]
TARGET_CLASS, REFERENCE_CLASS = 0, 1


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:],
                                                                     strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def sine_embed_boxes(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """[..., 4] boxes (cx, cy, w, h) in [0, 1] -> [..., 2 * dim] sine embedding (DINO's
    ``gen_sineembed_for_position``: dim / 2 features per coordinate, order y, x, w, h)."""
    per_coord = dim // 2
    freq = 10000 ** (2 * (torch.arange(per_coord, device=boxes.device) // 2) / per_coord)
    pos = boxes.float()[..., None] * (2 * math.pi) / freq  # [..., 4, per_coord]
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(-2)
    cx, cy, w, h = pos.unbind(-2)
    return torch.cat([cy, cx, w, h], -1).to(boxes.dtype)


def class_token_spans(num_tokens: int, num_classes: int) -> list[slice]:
    """Which prompt tokens stand for each class: all of them for one class; for two (target,
    reference) the second half and the first half, as SegLLM's positive maps."""
    if num_classes == 1:
        return [slice(0, num_tokens)]
    if num_tokens < 2:
        raise ValueError("the hipie decoder with supervised references (mask_aware_decoding) "
                         "needs at least 2 prompt tokens per [SEG] (seg_head.num_prompt_tokens)")
    half = num_tokens // 2
    return [slice(half, num_tokens), slice(0, half)]


class PromptClassifier(nn.Module):
    """Query-to-prompt-token similarity (GLIP / HIPIE's contrastive class head):
    logit = <W q, t> / sqrt(d) + b, then the maximum over each class's tokens."""

    def __init__(self, dim: int, prior_prob: float = 0.01):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        # shape [1], not a scalar: DeepSpeed's parameter broadcast views every parameter as bytes
        self.bias = nn.Parameter(torch.full((1,), -math.log((1 - prior_prob) / prior_prob)))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, spans: list[slice]
                ) -> torch.Tensor:
        """[N, Q, d] queries, [N, T, d] tokens -> [N, Q, K] class logits."""
        sim = self.proj(queries) @ tokens.transpose(1, 2) / math.sqrt(queries.shape[-1])
        sim = sim + self.bias
        return torch.stack([sim[..., span].amax(-1) for span in spans], -1)


class DecoderLayer(nn.Module):
    """Self-attention, prompt cross-attention, deformable cross-attention, FFN (post-norm)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, levels: int, points: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.prompt_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_prompt = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, boxes: torch.Tensor,
                memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                prompt_tokens: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        tgt = self.norm_prompt(tgt + self.prompt_attn(tgt + query_pos, prompt_tokens,
                                                      prompt_tokens, need_weights=False)[0])
        reference = boxes[:, :, None].expand(-1, -1, len(spatial_shapes), -1)
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference, memory,
                                               spatial_shapes))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


@dataclass
class Predictions:
    """One set of predictions for N prompts: class logits [N, Q, K], boxes [N, Q, 4] (cx, cy,
    w, h in [0, 1] of the padded input), mask logits [N, Q, h, w] at 1/4 of the input and,
    with HIPIE's IoU branch, each query's predicted box IoU with its object (logits [N, Q])."""

    logits: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    ious: torch.Tensor | None = None


@dataclass
class DecoderOutputs:
    """The last layer's predictions, the earlier layers' and the selected proposals' (deep
    supervision; ``proposals`` is None without two-stage selection)."""

    final: Predictions
    layers: list[Predictions] = field(default_factory=list)
    proposals: Predictions | None = None

    def all_sets(self) -> list[Predictions]:
        extra = [self.proposals] if self.proposals is not None else []
        return [self.final, *self.layers, *extra]


@dataclass
class Answer:
    """Inference's outputs for N prompts (``QueryDecoder.best_answer``): the best query's mask
    logits [N, h, w] at 1/4 of the input, its score [N] (``answer_scores``), its index [N];
    every query's last-layer class logits [N, Q, K] and boxes [N, Q, 4] (small)."""

    masks: torch.Tensor
    scores: torch.Tensor
    query: torch.Tensor
    logits: torch.Tensor
    boxes: torch.Tensor


def encoder_proposals(memory: torch.Tensor, spatial_shapes: list[tuple[int, int]]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every encoder position's proposal box, (cx, cy) its centre and side 0.05 * 2^level, in
    logit space: ([N, S, 4] boxes, [N, S, 1] valid). Proposals touching the border are invalid
    (Deformable-DETR's ``gen_encoder_output_proposals``)."""
    boxes = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid((torch.arange(h, device=memory.device) + 0.5) / h,
                                (torch.arange(w, device=memory.device) + 0.5) / w, indexing="ij")
        wh = torch.full_like(xs, 0.05 * 2.0 ** level)
        boxes.append(torch.stack([xs, ys, wh, wh], -1).flatten(0, 1))
    proposals = torch.cat(boxes).float()
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    logits = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
    shape = (memory.shape[0], -1, -1)
    return logits[None].expand(*shape), valid[None].expand(*shape)


def answer_scores(logits: torch.Tensor, ious: torch.Tensor | None, class_index: int
                  ) -> torch.Tensor:
    """[N, Q] scores a query is the answer by: its class probability, or with the IoU branch
    HIPIE's ``sqrt(p_class * p_iou)`` (``HIPIE_IMG.inference``)."""
    prob = logits[..., class_index].float().sigmoid()
    return prob if ious is None else (prob * ious.float().sigmoid()).sqrt()


class QueryDecoder(nn.Module):
    """The transformer decoder.

    Args:
        dim: model width.
        prompt_dim: width of the prompt tokens ([SEG] embeddings).
        mask_dim: per-pixel embedding width.
        num_classes: 1 (target) or 2 (target, reference).
        layers, ffn_dim, heads, points, levels: layer sizes.
        num_queries: learnable queries.
        num_proposals: top-k encoder proposals made queries.
        query_strategy: "conditional" (proposals), "learnable", or "both" (concatenated).
        iou_branch: HIPIE's IoU branch (``USE_IOU_BRANCH``): a linear head per decoder layer
            predicting each query's box IoU with its object, trained on matched queries and
            multiplied into the answer's score.
    """

    def __init__(self, *, dim: int = 256, prompt_dim: int = 768, mask_dim: int = 256,
                 num_classes: int = 1, layers: int = 9, ffn_dim: int = 2048, heads: int = 8,
                 points: int = 4, levels: int = 3, num_queries: int = 100,
                 num_proposals: int = 100, query_strategy: QueryStrategy = "conditional",
                 iou_branch: bool = False):
        super().__init__()
        self.num_classes, self.num_proposals = num_classes, num_proposals
        self.query_strategy = query_strategy
        self.prompt_proj = nn.Sequential(nn.Linear(prompt_dim, dim), nn.LayerNorm(dim))
        self.enc_output = nn.Linear(dim, dim)
        self.enc_output_norm = nn.LayerNorm(dim)
        if query_strategy in ("learnable", "both"):
            self.query_feat = nn.Embedding(num_queries, dim)
            self.query_embed = nn.Embedding(num_queries, 4)  # box, logit space
        self.layers = nn.ModuleList(DecoderLayer(dim, ffn_dim, heads, levels, points)
                                    for _ in range(layers))
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_embed = PromptClassifier(dim)
        self.bbox_embed = MLP(dim, dim, 4, 3)  # shared by every layer, as MaskDINO
        self.mask_embed = MLP(dim, dim, mask_dim, 3)
        # HIPIE: one Linear(d, 1) clone per decoder layer, on the normed layer output
        self.iou_embed = (nn.ModuleList(nn.Linear(dim, 1) for _ in range(layers))
                          if iou_branch else None)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def predict(self, tgt: torch.Tensor, boxes: torch.Tensor, tokens: torch.Tensor,
                spans: list[slice], mask_features: torch.Tensor,
                layer: int | None = None) -> Predictions:
        """One prediction set; ``layer`` (a decoder layer's index, None for the proposals)
        picks its IoU head."""
        out = self.decoder_norm(tgt)
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(out), mask_features)
        return Predictions(logits=self.class_embed(out, tokens, spans), boxes=boxes, masks=masks,
                           ious=self.predict_ious(out, layer))

    def predict_ious(self, normed: torch.Tensor, layer: int | None) -> torch.Tensor | None:
        if self.iou_embed is None or layer is None:
            return None
        return self.iou_embed[layer](normed)[..., 0]

    def select_proposals(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                         tokens: torch.Tensor, spans: list[slice]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k proposals by their best class score: (content [N, k, d], refined boxes in
        logit space [N, k, 4], their indices [N, k]); not detached, so the proposal set's
        loss trains the encoder heads."""
        proposals, valid = encoder_proposals(memory, spatial_shapes)
        content = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid, 0.0)))
        scores = self.class_embed(content, tokens, spans).amax(-1)
        scores = scores.masked_fill(~valid[..., 0], float("-inf"))
        k = min(self.num_proposals, memory.shape[1])
        index = scores.topk(k, dim=1).indices
        picked = content.gather(1, index[..., None].expand(-1, -1, content.shape[-1]))
        box_logits = (self.bbox_embed(picked)
                      + proposals.gather(1, index[..., None].expand(-1, -1, 4)).to(picked.dtype))
        return picked, box_logits, index

    def initial_queries(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                        tokens: torch.Tensor, spans: list[slice]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(content [N, Q, d], boxes in logit space [N, Q, 4], the selected proposals'
        content and refined box logits, or None without two-stage selection)."""
        contents, box_logits, selected = [], [], None
        if self.query_strategy in ("conditional", "both"):
            picked, picked_boxes, _ = self.select_proposals(memory, spatial_shapes, tokens, spans)
            selected = (picked, picked_boxes)
            contents.append(picked.detach())  # MaskDINO: queries start from detached proposals
            box_logits.append(picked_boxes.detach())
        if self.query_strategy in ("learnable", "both"):
            n = memory.shape[0]
            contents.append(self.query_feat.weight[None].expand(n, -1, -1).to(memory.dtype))
            box_logits.append(self.query_embed.weight[None].expand(n, -1, -1).to(memory.dtype))
        return torch.cat(contents, 1), torch.cat(box_logits, 1), selected

    def run_layers(self, tgt: torch.Tensor, ref: torch.Tensor, memory: torch.Tensor,
                   spatial_shapes: list[tuple[int, int]], tokens: torch.Tensor, *,
                   after_layer=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every decoder layer with its box refinement: (last content [N, Q, d], last refined
        box logits [N, Q, 4]); ``after_layer(index, tgt, refined_boxes)`` is called after
        each."""
        refined = ref
        for index, layer in enumerate(self.layers):
            boxes = ref.sigmoid()
            query_pos = self.ref_point_head(sine_embed_boxes(boxes, tgt.shape[-1]))
            tgt = layer(tgt, query_pos, boxes, memory, spatial_shapes, tokens)
            refined = self.bbox_embed(self.decoder_norm(tgt)) + ref
            if after_layer is not None:
                after_layer(index, tgt, refined.sigmoid())
            ref = refined.detach()  # look forward once
        return tgt, refined

    def forward(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                mask_features: torch.Tensor, prompts: torch.Tensor) -> DecoderOutputs:
        """Every query's predictions after every layer (the training path: the set loss
        matches and supervises all of them).

        Args:
            memory: [N, S, dim] encoder memory (one copy per prompt).
            spatial_shapes: (h, w) of its levels.
            mask_features: [N, mask_dim, h4, w4] per-pixel embeddings.
            prompts: [N, T, prompt_dim] prompt tokens.
        """
        tokens = self.prompt_proj(prompts.to(memory.dtype))
        spans = class_token_spans(tokens.shape[1], self.num_classes)
        tgt, ref, selected = self.initial_queries(memory, spatial_shapes, tokens, spans)
        proposals = (None if selected is None else
                     self.predict(selected[0], selected[1].sigmoid(), tokens, spans,
                                  mask_features))
        sets: list[Predictions] = []
        self.run_layers(tgt, ref, memory, spatial_shapes, tokens, after_layer=lambda i, t, b:
                        sets.append(self.predict(t, b, tokens, spans, mask_features, layer=i)))
        return DecoderOutputs(final=sets[-1], layers=sets[:-1], proposals=proposals)

    def best_answer(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                    mask_features: torch.Tensor, prompts: torch.Tensor,
                    class_index: int = TARGET_CLASS) -> Answer:
        """Only what inference needs: the last layer's classes and boxes, and the mask of each
        prompt's best query for ``class_index``. No earlier layer predicts anything and one
        mask per prompt is computed instead of one per query and layer (at real size
        [N, Q, 256, 256] float32 per layer: 26 MB a prompt for 100 queries); same arguments
        as ``forward``."""
        tokens = self.prompt_proj(prompts.to(memory.dtype))
        spans = class_token_spans(tokens.shape[1], self.num_classes)
        tgt, ref, _ = self.initial_queries(memory, spatial_shapes, tokens, spans)
        tgt, refined = self.run_layers(tgt, ref, memory, spatial_shapes, tokens)
        out = self.decoder_norm(tgt)
        logits = self.class_embed(out, tokens, spans)
        scores = answer_scores(logits, self.predict_ious(out, len(self.layers) - 1), class_index)
        best = scores.argmax(dim=1)
        rows = torch.arange(best.shape[0], device=best.device)
        masks = torch.einsum("nc,nchw->nhw", self.mask_embed(out[rows, best]), mask_features)
        return Answer(masks=masks, scores=scores[rows, best], query=best, logits=logits,
                      boxes=refined.sigmoid())
