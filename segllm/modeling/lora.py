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


def has_lora(module: nn.Module) -> bool:
    """Whether any peft LoRA layer is inside ``module``."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and put the plain base layer back.

    ``W <- W + scaling * B @ A`` (peft's ``merge``, checked for NaNs), then each LoRA wrapper
    is replaced by its base layer, so the state dict has the keys of a model without LoRA.
    Merge in float32 for an exact export (a bf16 merge rounds the sum). Returns the number
    of layers merged.
    """
    from peft.tuners.lora import LoraLayer

    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in targets:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(targets)
