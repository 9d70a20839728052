"""The LLaVA backbone (CLIP vision tower, V2L projector, Llama LLM) from transformers.

We build transformers' ``LlavaForConditionalGeneration`` from our config, or load it from a
llava-hf directory, and read two kinds of vision features from it: patch tokens for the image
(LLaVA's own path) and the CLS token for the mask encoder's masked crops.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from ..config import SegLLMConfig
from .loading import CheckpointError


def build_llava_config(cfg: SegLLMConfig) -> LlavaConfig:
    """transformers' composite LlavaConfig for the sizes in ``cfg``."""
    llm, vis, ids = cfg.llm, cfg.vision, cfg.token_ids
    text = LlamaConfig(
        hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads or llm.num_attention_heads,
        vocab_size=llm.vocab_size, max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=vis.hidden_size, intermediate_size=vis.intermediate_size,
        num_hidden_layers=vis.num_hidden_layers, num_attention_heads=vis.num_attention_heads,
        image_size=vis.image_size, patch_size=vis.patch_size, projection_dim=vis.projection_dim,
        hidden_act="quick_gelu",
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=ids["image"],
        image_seq_length=vis.num_image_tokens, projector_hidden_act=cfg.projector.hidden_act,
        vision_feature_layer=vis.feature_layer, vision_feature_select_strategy=vis.select_strategy,
        multimodal_projector_bias=cfg.projector.bias, tie_word_embeddings=False,
    )


class LinearProjector(nn.Module):
    """LLaVA-1's projector (LISA's ``mm_projector``): one Linear from CLIP to the LLM width.
    Named ``linear_1`` like the first layer of transformers' two-layer projector."""

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(image_features)


def build_llava(cfg: SegLLMConfig) -> LlavaForConditionalGeneration:
    """transformers' Llava for ``cfg``, with the projector ``cfg.projector.kind`` names."""
    llava = LlavaForConditionalGeneration(build_llava_config(cfg))
    if cfg.projector.kind == "linear":
        llava.model.multi_modal_projector = LinearProjector(
            cfg.vision.hidden_size, cfg.llm.hidden_size, bias=cfg.projector.bias)
    return llava


def sizes_from_llava_config(llava_config: LlavaConfig) -> dict:
    """The ``llm``/``vision``/``projector`` parts of a SegLLMConfig that describe a checkpoint."""
    t, v = llava_config.text_config, llava_config.vision_config
    if not isinstance(llava_config.vision_feature_layer, int):
        raise ValueError("multi-layer vision features (vision_feature_layer as a list) are not supported")
    rope = getattr(t, "rope_parameters", None) or {}
    return {
        "llm": {"hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads, "vocab_size": t.vocab_size,
                "max_position_embeddings": t.max_position_embeddings,
                "rms_norm_eps": t.rms_norm_eps, "rope_theta": rope.get("rope_theta", 10000.0)},
        "vision": {"hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                   "num_hidden_layers": v.num_hidden_layers,
                   "num_attention_heads": v.num_attention_heads, "image_size": v.image_size,
                   "patch_size": v.patch_size, "projection_dim": v.projection_dim,
                   "feature_layer": llava_config.vision_feature_layer,
                   "select_strategy": llava_config.vision_feature_select_strategy},
        "projector": {"hidden_act": llava_config.projector_hidden_act,
                      "bias": llava_config.multimodal_projector_bias},
    }


def load_llava(path: str | Path, dtype: torch.dtype | None = None, **kwargs
               ) -> LlavaForConditionalGeneration:
    """Load a llava-hf checkpoint directory, refusing one whose weights do not all match."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a llava-hf checkpoint directory (no config.json)")
    model, info = LlavaForConditionalGeneration.from_pretrained(
        path, dtype=dtype, output_loading_info=True, **kwargs)
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys",
                                                       "mismatched_keys", "error_msgs")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise CheckpointError(f"{path}: the llava-hf weights do not match the model: {problems}")
    return model


def vision_hidden(llava: LlavaForConditionalGeneration, pixel_values: torch.Tensor,
                  layer: int) -> torch.Tensor:
    """[B, 3, S, S] -> [B, 1 + patches, Dv] hidden states of the chosen vision layer."""
    tower = llava.model.vision_tower
    dtype = next(tower.parameters()).dtype
    out = tower(pixel_values.to(dtype), output_hidden_states=True)
    return out.hidden_states[layer]


def image_tokens(llava: LlavaForConditionalGeneration, pixel_values: torch.Tensor,
                 layer: int, strategy: str) -> torch.Tensor:
    """Projected patch features that replace the image tokens: [B, N, H]."""
    feats = vision_hidden(llava, pixel_values, layer)
    if strategy == "default":
        feats = feats[:, 1:]
    return llava.model.multi_modal_projector(feats)


def cls_tokens(llava: LlavaForConditionalGeneration, pixel_values: torch.Tensor,
               layer: int) -> torch.Tensor:
    """Projected CLS feature of each image: [B, H] (the mask encoder's crop token)."""
    return llava.model.multi_modal_projector(vision_hidden(llava, pixel_values, layer)[:, 0])
