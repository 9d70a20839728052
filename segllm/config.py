"""One serialisable configuration for the whole model, with named presets.

``SegLLMConfig.from_name("segllm-7b", **overrides)`` gives a preset; overrides are either
top-level fields, nested dicts (``lora={"r": 16}``) or dotted keys (``**{"lora.r": 16}``).
The config round-trips through JSON (``to_dict`` / ``from_dict``), which is what
``save_pretrained`` writes next to the weights. Every key and value is checked against the
dataclasses' types by ``segllm.typed_config`` (the checker of the training config too), so
``lora.r="eight"`` fails naming ``config.lora.r``.

The mask decoder is named by ``decoder`` (a name in ``segllm.modeling.decoders``' registry);
``decoder_config`` holds that decoder's own dataclass (checked the same way) and
``trainable.decoder`` its trainable groups. Config data in the older layout (a section and
freezing flags named after the decoder) is read with the same meaning: each decoder says how
(``MaskDecoder.upgrade_legacy_config``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .typed_config import ConfigError, KeyPath, build_checked


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
    # how a non-square image becomes the tower's square: LLaVA-1.5 pads it with the mean colour;
    # LISA (CLIPImageProcessor) resizes its short side and takes the centre ("crop")
    aspect: Literal["pad", "crop"] = "pad"

    @property
    def num_image_tokens(self) -> int:
        patches = (self.image_size // self.patch_size) ** 2
        return patches if self.select_strategy == "default" else patches + 1


@dataclass
class ProjectorConfig:
    """The V2L projector: LLaVA-1.5's mlp2x_gelu (Linear, GELU, Linear), or LLaVA-1's single
    Linear (``kind: linear``, e.g. LISA's ``mm_projector``; ``hidden_act`` is then unused)."""

    kind: Literal["mlp", "linear"] = "mlp"
    hidden_act: str = "gelu"
    bias: bool = True


@dataclass
class MaskEncoderConfig:
    """SegLLM's mask encoder: a referenced mask comes back as a crop token and a box token.

    ``token_dropout``: in training, each crop token and each box token is zeroed as a whole with
    this probability (crop and box drawn independently, per reference), without rescaling the
    kept ones; ``inference_scale`` multiplies both tokens outside training. SegLLM's code uses
    0.5 and 0.5 (the expected value of a training token); 0.0 and 1.0 turn both off; 1.0 and
    0.0 zero the tokens always (the retrained ablation without them).
    """

    enabled: bool = True
    token_dropout: float = 0.0
    inference_scale: float = 1.0


@dataclass
class RegionEncoderConfig:
    """GLaMM's region encoder (segllm/modeling/region_encoder.py): a box given with the
    question becomes one ``<bbox>`` token built from ``num_levels`` CLIP layers
    ``layer_step`` apart. Off unless a converted GLaMM checkpoint turns it on."""

    enabled: bool = False
    num_levels: int = 4
    layer_step: int = 3
    num_fuse: int = 5
    roi_size: int = 14
    query_dim: int = 1024
    box_hidden: int = 256
    norm_groups: int = 64
    box_scale: float = 224.0  # GLaMM scales normalised boxes by 224 (not its 336 px image)


@dataclass
class SegHeadConfig:
    """The MLP from the LLM hidden state that predicts [SEG] to decoder prompt embeddings."""

    hidden_dim: int | None = None  # None: the LLM's hidden size (LISA's text_hidden_fcs)
    num_prompt_tokens: int = 1
    dropout: float = 0.0


@dataclass
class VideoConfig:
    """Video input (VISA): reference frames given to the LLM beside the target frame.

    Each reference frame's patch features are average-pooled to ``tokens_per_frame`` tokens
    (VISA: 112, Chat-UniVi's count) before the projector and written into as many ``<frame>``
    slots, placed before the image's tokens. 0: the model takes no reference frames (models
    trained before video input).
    """

    tokens_per_frame: int = 0


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
    # the decoder's groups (MaskDecoder.trainable_groups) -> trained; a group not named takes
    # the decoder's default (SegLLMConfig fills them in)
    decoder: dict[str, bool] = field(default_factory=dict)


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
    decoder: str = "sam"  # a registered decoder (segllm.modeling.decoders)
    # the decoder's own dataclass (its config_class); None or a mapping are built into it
    decoder_config: Any = None
    # Mask-aware decoding (SegLLM): the decoder also receives, for each [SEG], the union of the
    # masks of the rounds its question references (ground truth in training, the model's own
    # earlier masks at inference).
    mask_aware_decoding: bool = False
    mask_encoder: MaskEncoderConfig = field(default_factory=MaskEncoderConfig)
    region_encoder: RegionEncoderConfig = field(default_factory=RegionEncoderConfig)
    # the first round's prompt: "llava_v1" puts the image right after "USER: "; "glamm" says
    # "The <image> provides an overview of the picture." first (GLaMM's app.py / training)
    prompt_template: Literal["llava_v1", "glamm"] = "llava_v1"
    seg_head: SegHeadConfig = field(default_factory=SegHeadConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
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
            "phrase_start": 32005, "phrase_end": 32006, "frame": 32007, "bos": 1, "eos": 2,
        }
    )

    def __post_init__(self) -> None:
        cls = _decoder_class(self.decoder)
        self.decoder_config = _decoder_config(cls, self.decoder_config)
        self.trainable.decoder = _decoder_trainable(cls, self.trainable.decoder)

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
        """Every key and type checked; errors name the key path (``config.lora.r: ...``).
        Keys of the older layout are read with their meaning (see the module docstring)."""
        return build_checked(cls, _upgrade_legacy(data), _ROOT)

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


_ROOT = KeyPath("config", dotted_root=True)


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    current = data.get("decoder", SegLLMConfig.decoder)
    if overrides.get("decoder", current) != current:
        # another decoder: the sizes and groups written for the old one do not apply to it
        data.pop("decoder_config", None)
        data.get("trainable", {}).pop("decoder", None)
    for key, value in overrides.items():
        parts = key.split(".")
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        _merge(target, parts[-1], value)


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    """``target[key] = value``, merging mappings key by key (``token_ids`` is replaced whole)."""
    if isinstance(value, dict) and isinstance(target.get(key), dict) and key != "token_ids":
        for k, v in value.items():
            _merge(target[key], k, v)
    else:
        target[key] = copy.deepcopy(value)


def _decoder_class(name: Any) -> type:
    from .modeling.decoders import DECODERS  # here: the registry imports torch

    if name not in DECODERS:
        raise ConfigError(f"{_ROOT.child('decoder')}: {name!r} is not a registered decoder; "
                          f"known: {sorted(DECODERS)}")
    return DECODERS[name]


def _decoder_config(cls: type, value: Any) -> Any:
    """``value`` as the decoder's own config dataclass: None gives its defaults, a mapping is
    built and type-checked like every other section."""
    if value is None:
        return cls.config_class()
    if isinstance(value, cls.config_class):
        return value
    return build_checked(cls.config_class, value, _ROOT.child("decoder_config"))


def _decoder_trainable(cls: type, flags: dict[str, bool]) -> dict[str, bool]:
    """Every group of the decoder -> trained: its defaults, then ``flags``."""
    unknown = sorted(set(flags) - set(cls.trainable_defaults))
    if unknown:
        raise ConfigError(f"{_ROOT.child('trainable').child('decoder')}: unknown group(s) "
                          f"{unknown}; known: {sorted(cls.trainable_defaults)}")
    return {**cls.trainable_defaults, **flags}


def _upgrade_legacy(data: Any) -> Any:
    """A copy of ``data`` with the older layout's keys rewritten by the decoder it names."""
    if not isinstance(data, dict):
        return data
    from .modeling.decoders import DECODERS

    data = copy.deepcopy(data)
    cls = DECODERS.get(data.get("decoder", SegLLMConfig.decoder))
    return cls.upgrade_legacy_config(data) if cls is not None else data


_TINY_DECODER = {
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
        "decoder": "sam",
        "decoder_config": _TINY_DECODER,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "trainable": {"llm": "lora"},
        "video": {"tokens_per_frame": 4},
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
        "decoder": "sam",
        "decoder_config": {"encoder_embed_dim": 192, "encoder_depth": 4,
                           "encoder_num_heads": 4, "encoder_global_attn_indexes": [1, 3],
                           "window_size": 8, "image_size": 256, "patch_size": 16,
                           "prompt_embed_dim": 128, "mask_in_chans": 16, "decoder_depth": 2,
                           "decoder_mlp_dim": 512, "decoder_num_heads": 8,
                           "iou_head_hidden_dim": 128},
        "trainable": {"llm": "full", "decoder": {"mask_decoder": True}},
        "video": {"tokens_per_frame": 16},
        "tokenizer": "tiny",
        "max_length": 2048,
    },
    # The model we train on this CPU and ship (models/segllm-shapes): 64 px synthetic scenes,
    # every part trained end to end (nothing pretrained exists here, so frozen encoders would
    # hand random features on). The decoder runs at the scene's own 64 px with 4 px patches, so
    # its 4x-upscaled low-resolution mask is the image's own resolution.
    "shapes": {
        "llm": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 1024,
                "max_position_embeddings": 1024},
        "vision": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "image_size": 64, "patch_size": 8,
                   "projection_dim": 128},
        "decoder": "sam",
        "decoder_config": {"encoder_embed_dim": 128, "encoder_depth": 4, "encoder_num_heads": 4,
                           "encoder_global_attn_indexes": [1, 3], "window_size": 8, "image_size": 64,
                           "patch_size": 4, "prompt_embed_dim": 128, "mask_in_chans": 16,
                           "decoder_depth": 2, "decoder_mlp_dim": 512, "decoder_num_heads": 4,
                           "iou_head_hidden_dim": 128, "dense_prompt_conditioning": True},
        "mask_aware_decoding": True,
        "mask_encoder": {"token_dropout": 0.5, "inference_scale": 0.5},
        "trainable": {"llm": "full", "vision_tower": True,
                      "decoder": {"image_encoder": True, "prompt_encoder": True,
                                  "mask_decoder": True}},
        "tokenizer": "tiny",
        "max_length": 1024,
    },
    # SegLLM on LLaVA-1.5-7B: CLIP ViT-L/14-336, mlp2x_gelu, Vicuna-7B, the decoder at its
    # default sizes (ViT-H), mask encoder, mask-aware decoding and SegLLM's mask-token dropout
    # (0.5 in training, x0.5 at inference); video reference frames pooled to VISA's 112 tokens.
    # Design card: CLIP and the mask decoder frozen; LLM, projector, box head, seg head trained.
    "segllm-7b": {
        "decoder": "sam",
        "mask_aware_decoding": True,
        "mask_encoder": {"token_dropout": 0.5, "inference_scale": 0.5},
        "video": {"tokens_per_frame": 112},
        "trainable": {"llm": "full"},
    },
    # LISA-7B: CLIP ViT-L/14 at 224, the decoder at its default sizes (ViT-H), LoRA r=8
    # alpha=16 on q_proj,v_proj, no mask encoder; LISA also trains the decoder's mask decoder,
    # the token embeddings and lm_head.
    "lisa-7b": {
        "decoder": "sam",
        "vision": {"image_size": 224},
        "mask_encoder": {"enabled": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "trainable": {"llm": "lora", "decoder": {"mask_decoder": True}},
    },
    # GLaMM-7B (converted only): CLIP ViT-L/14-336, mlp2x_gelu, Vicuna-7B, SAM ViT-H, its
    # region encoder for boxes given with the question, its prompt template, no mask encoder;
    # LoRA is merged in the released weights.
    "glamm-7b": {
        "decoder": "sam",
        "mask_encoder": {"enabled": False},
        "region_encoder": {"enabled": True},
        "prompt_template": "glamm",
        "trainable": {"llm": "full", "decoder": {"mask_decoder": True}},
    },
    # SegLLM as the paper trains it: the segllm-7b setup with HIPIE-R50 as the decoder (frozen;
    # the LLM and projector train fully), prompted by 8 [SEG] tokens of 768 (hipie_utils.py's
    # output_token_dim = 768 * 8), references supervised as a second class.
    "segllm-7b-hipie": {
        "decoder": "hipie",
        "seg_head": {"num_prompt_tokens": 8},
        "mask_aware_decoding": True,
        "mask_encoder": {"token_dropout": 0.5, "inference_scale": 0.5},
        "video": {"tokens_per_frame": 112},
        "trainable": {"llm": "full"},
    },
}

# CPU tests of the query decoder: the tiny preset with a tiny HIPIE-style decoder (two prompt
# tokens per [SEG], so the reference class of mask-aware decoding has its own half).
PRESETS["hipie-tiny"] = {
    **copy.deepcopy(PRESETS["tiny"]),
    "decoder": "hipie",
    "decoder_config": {
        "image_size": 64, "backbone_block": "basic", "backbone_layers": [1, 1, 1, 1],
        "hidden_dim": 32, "mask_dim": 32, "prompt_dim": 32, "encoder_layers": 2,
        "encoder_ffn_dim": 64, "decoder_layers": 2, "decoder_ffn_dim": 64, "num_heads": 2,
        "num_points": 2, "num_queries": 4, "num_proposals": 4, "query_strategy": "both",
        "loss": {"num_points": 256},
    },
    "seg_head": {"num_prompt_tokens": 2},
    "mask_aware_decoding": True,
}

# SegLLM with the QueryMeldNet-style decoder (decoder: querymeld): the segllm-7b-hipie setup
# (decoder frozen, 8 [SEG] prompt tokens of 768, references a second supervised class) with
# 100 learnable + 300 conditional queries melded by dual-query cross-attention.
PRESETS["segllm-7b-querymeld"] = {
    **copy.deepcopy(PRESETS["segllm-7b-hipie"]),
    "decoder": "querymeld",
    "decoder_config": {"prompt_dim": 768},
}

# CPU tests of decoder: querymeld (the hipie-tiny sizes; 4 learnable + 8 conditional queries).
PRESETS["querymeld-tiny"] = {
    **copy.deepcopy(PRESETS["hipie-tiny"]),
    "decoder": "querymeld",
    "decoder_config": {
        "image_size": 64, "backbone_block": "basic", "backbone_layers": [1, 1, 1, 1],
        "hidden_dim": 32, "mask_dim": 32, "prompt_dim": 32, "encoder_layers": 2,
        "encoder_ffn_dim": 64, "decoder_layers": 2, "decoder_ffn_dim": 64, "num_heads": 2,
        "num_points": 2, "num_learnable": 4, "num_conditional": 8, "query_strategy": "meld",
        "loss": {"num_points": 256},
    },
}
