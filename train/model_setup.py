"""Build the model a run trains: preset / config file / pretrained directory / llava-hf +
the decoder's checkpoint, then the config's overrides, QLoRA quantisation and gradient
checkpointing."""

from __future__ import annotations

import torch

from segllm.config import SegLLMConfig
from segllm.modeling.lora import add_lora, has_lora
from segllm.modeling.model import SegLLMModel
from segllm.quantization import quantize_linear_layers

from .args import ModelArgs


def build_model(args: ModelArgs) -> SegLLMModel:
    """The model before DeepSpeed wraps it (float32, on the CPU; the engine moves and casts)."""
    if args.preset or args.config_file:
        config = (SegLLMConfig.from_name(args.preset, **args.overrides) if args.preset
                  else _config_file_with_overrides(args.config_file, args.overrides))
        model = SegLLMModel.from_config(config)
    elif args.pretrained:
        model = SegLLMModel.from_pretrained(args.pretrained)
        retarget_trainable(model, args.overrides)
    else:
        model = SegLLMModel.from_components(args.llava_dir, args.decoder_checkpoint,
                                            **args.overrides)
    if args.quantize_4bit:
        if model.config.trainable.llm != "lora":
            raise ValueError("model.quantize_4bit (QLoRA) needs trainable.llm: lora; got "
                             f"{model.config.trainable.llm!r}")
        quantize_linear_layers(model.language_model, 4, compute_dtype=torch.bfloat16)
        model.apply_trainable()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _config_file_with_overrides(path: str, overrides: dict) -> SegLLMConfig:
    """A configs/model YAML, then the training config's overrides on top (same rules)."""
    return SegLLMConfig.from_file(path).with_overrides(**overrides)


def retarget_trainable(model: SegLLMModel, overrides: dict) -> None:
    """Apply ``trainable`` / ``lora`` / ``loss`` overrides to a loaded model (e.g. LoRA on an
    exported model). Size fields cannot change after loading."""
    allowed = {"trainable", "lora", "loss"}
    bad = sorted({k.split(".")[0] for k in overrides} - allowed)
    if bad:
        raise ValueError(f"model.overrides {bad} cannot change a pretrained model; only "
                         f"{sorted(allowed)}")
    model.config = model.config.with_overrides(**overrides)
    if model.config.trainable.llm == "lora" and not has_lora(model.language_model):
        add_lora(model.language_model, model.config.lora)
    model.apply_trainable()
