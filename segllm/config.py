"""One serialisable configuration for the whole model, with named presets.

``SegLLMConfig.from_name("segllm-7b", **overrides)`` gives a preset; overrides are either
top-level fields, nested dicts (``lora={"r": 16}``) or dotted keys (``**{"lora.r": 16}``).
The config round-trips through JSON (``to_dict`` / ``from_dict``), which is what
``save_pretrained`` writes next to the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class LLMConfig:
    """The language model (a Llama / Vicuna decoder)."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    vocab_size: int = 32064  # llava-hf's padded vocabulary; grows if the tokenizer needs more
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0


@dataclass
class VisionConfig:
    """The CLIP vision tower and how LLaVA reads its features."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    projection_dim: int = 768
    feature_layer: int = -2  # LLaVA-1.5 reads the penultimate layer
    select_strategy: Literal["default", "full"] = "default"  # "default" drops the CLS token

    @property
    def num_image_tokens(self) -> int:
        patches = (self.image_size // self.patch_size) ** 2
        return patches if self.select_strategy == "default" else patches + 1


@dataclass
class ProjectorConfig:
    """The V2L projector: LLaVA-1.5's mlp2x_gelu (Linear, GELU, Linear)."""

    hidden_act: str = "gelu"
    bias: bool = True


@dataclass
class SAMConfig:
    """SAM, in segment_anything's own terms (defaults: ViT-H, ``sam_vit_h_4b8939.pth``)."""

    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    encoder_mlp_ratio: float = 4.0
    window_size: int = 14
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    mask_threshold: float = 0.0


@dataclass
class MaskEncoderConfig:
    """SegLLM's mask encoder: a referenced mask comes back as a crop token and a box token."""

    enabled: bool = True


@dataclass
class SegHeadConfig:
    """The MLP from the LLM hidden state that predicts [SEG] to decoder prompt embeddings."""

    hidden_dim: int | None = None  # None: the LLM's hidden size (LISA's text_hidden_fcs)
    num_prompt_tokens: int = 1
    dropout: float = 0.0


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass
class TrainableConfig:
    """What is trained; everything not named here is frozen."""

    llm: Literal["lora", "full", "frozen"] = "full"
    token_embeddings: bool = True  # embed_tokens + lm_head, so the new [SEG] row can learn
    projector: bool = True
    seg_head: bool = True
    mask_encoder_box: bool = True
    vision_tower: bool = False
    sam_image_encoder: bool = False
    sam_prompt_encoder: bool = False
    sam_mask_decoder: bool = False


@dataclass
class LossConfig:
    """Default CE + 2.0 BCE + 0.5 Dice (LISA, VISA)."""

    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5


@dataclass
class SegLLMConfig:
    name: str = "custom"
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: Literal["sam"] = "sam"
    sam: SAMConfig = field(default_factory=SAMConfig)
    mask_encoder: MaskEncoderConfig = field(default_factory=MaskEncoderConfig)
    seg_head: SegHeadConfig = field(default_factory=SegHeadConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tokenizer: Literal["tiny", "pretrained"] = "pretrained"
    max_length: int = 2048
    # Special-token ids. Filled from the tokenizer with convert_tokens_to_ids when one is
    # attached; the defaults are what llava-hf's tokenizer gives after segllm adds its tokens.
    token_ids: dict[str, int] = field(
        default_factory=lambda: {
            "image": 32000, "pad": 32001, "seg": 32002, "mask_crop": 32003, "mask_box": 32004,
            "phrase_start": 32005, "phrase_end": 32006, "bos": 1, "eos": 2,
        }
    )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SegLLMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        data = copy.deepcopy(PRESETS[name])
        data["name"] = name
        _apply_overrides(data, overrides)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegLLMConfig:
        return _build_dataclass(cls, data, path="config")

    def with_overrides(self, **overrides: Any) -> SegLLMConfig:
        """A copy with overrides applied by ``from_name``'s rules, every key checked again."""
        data = self.to_dict()
        _apply_overrides(data, overrides)
        return SegLLMConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> SegLLMConfig:
        """A YAML model config: ``preset: NAME`` plus overrides in the config's own nesting."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(data, dict) or "preset" not in data:
            raise ValueError(f"{path}: a model config needs a 'preset' field")
        data = dict(data)
        preset = data.pop("preset")
        try:
            return cls.from_name(preset, **data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> SegLLMConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(data)


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        parts = key.split(".")
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict) and leaf != "token_ids":
            target[leaf].update(value)
        else:
            target[leaf] = value


def _build_dataclass(cls: type, data: dict[str, Any], path: str) -> Any:
    """Build a (nested) dataclass from a dict, refusing unknown keys with their full path."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _NESTED.get(name) if cls is SegLLMConfig else None
        if sub is not None:
            kwargs[name] = _build_dataclass(sub, value, f"{path}.{name}")
        elif isinstance(value, list) and "tuple" in str(ftype):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_NESTED = {
    "llm": LLMConfig, "vision": VisionConfig, "projector": ProjectorConfig, "sam": SAMConfig,
    "mask_encoder": MaskEncoderConfig, "seg_head": SegHeadConfig, "lora": LoRAConfig,
    "trainable": TrainableConfig, "loss": LossConfig,
}

_TINY_SAM = {
    "encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1], "window_size": 2, "image_size": 64, "patch_size": 16,
    "prompt_embed_dim": 32, "mask_in_chans": 4, "decoder_depth": 2, "decoder_mlp_dim": 64,
    "decoder_num_heads": 2, "iou_head_hidden_dim": 32,
}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests: everything tiny, LoRA so the adapter path is exercised.
    "tiny": {
        "llm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1024,
                "max_position_embeddings": 1024},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                   "projection_dim": 32},
        "sam": _TINY_SAM,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "trainable": {"llm": "lora"},
        "tokenizer": "tiny",
        "max_length": 1024,
    },
    # About 100 M parameters: CPU benchmarks and the small model we ship.
    "small": {
        "llm": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 11,
                "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 4096,
                "max_position_embeddings": 2048},
        "vision": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
                   "num_attention_heads": 6, "image_size": 112, "patch_size": 14,
                   "projection_dim": 384},
        "sam": {"encoder_embed_dim": 192, "encoder_depth": 4, "encoder_num_heads": 4,
                "encoder_global_attn_indexes": [1, 3], "window_size": 8, "image_size": 256,
                "patch_size": 16, "prompt_embed_dim": 128, "mask_in_chans": 16,
                "decoder_depth": 2, "decoder_mlp_dim": 512, "decoder_num_heads": 8,
                "iou_head_hidden_dim": 128},
        "trainable": {"llm": "full", "sam_mask_decoder": True},
        "tokenizer": "tiny",
        "max_length": 2048,
    },
    # SegLLM on LLaVA-1.5-7B: CLIP ViT-L/14-336, mlp2x_gelu, Vicuna-7B, SAM ViT-H, mask encoder.
    # Design card: CLIP and the mask decoder frozen; LLM, projector, box head, seg head trained.
    "segllm-7b": {
        "trainable": {"llm": "full"},
    },
    # LISA-7B: CLIP ViT-L/14 at 224, SAM ViT-H, LoRA r=8 alpha=16 on q_proj,v_proj, no mask
    # encoder; LISA also trains the SAM mask decoder, the token embeddings and lm_head.
    "lisa-7b": {
        "vision": {"image_size": 224},
        "mask_encoder": {"enabled": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "trainable": {"llm": "lora", "sam_mask_decoder": True},
    },
}
