"""LoRA adapters on the LLM only (never on CLIP, whose attention also has q_proj/v_proj)."""

from __future__ import annotations

from torch import nn

from ..config import LoRAConfig


def add_lora(language_model: nn.Module, cfg: LoRAConfig) -> None:
    """Inject peft LoRA layers into ``language_model`` in place (adapter name "default")."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none")
    inject_adapter_in_model(lora, language_model)


def is_lora_parameter(name: str) -> bool:
    return "lora_A" in name or "lora_B" in name or "lora_embedding" in name
