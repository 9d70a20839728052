"""LISA (dvlab-research/LISA) checkpoints -> segllm.

A released LISA folder (``xinlai/LISA-7B-v1``, ``LISA-13B-llama2-v1`` ...) is what LISA's
merge script writes: ``LISAForCausalLM`` with its LoRA merged, saved without the CLIP tower
(their code loads ``openai/clip-vit-large-patch14`` by name at run time, so the converter needs
a local copy of it: ``--vision-tower DIR``). What each part becomes:

==================================================  =============================================
LISA                                                segllm
==================================================  =============================================
``model.embed_tokens``, ``model.layers.*``,          ``llava.model.language_model.*`` (vocabulary
``model.norm``, ``lm_head``                          grown by segllm's tokens: new rows the mean)
``model.mm_projector`` (one Linear)                  projector ``kind: linear``
``model.visual_model.*`` (SAM, any size)             ``decoder.sam.*`` (sizes from the shapes)
``model.text_hidden_fcs.0.{0,2}``                    ``seg_head.mlp.{0,2}``
CLIP ``vision_model.*``                              ``llava.model.vision_tower.*``
==================================================  =============================================

Dropped on purpose: the rotary ``inv_freq`` buffers (recomputed from ``rope_theta``), CLIP's
text half, logit scale and ``position_ids`` buffer. Everything else must map.

What the config says, not offsets: the CLIP layer read (``mm_vision_select_layer``), its
preprocessing (``image_aspect_ratio``: LISA's "square" is CLIPImageProcessor's centre crop), the
``<im_start>``/``<im_end>`` wrapping (``mm_use_im_start_end``), the [SEG] id (from the
tokenizer), the image-token count (from CLIP's sizes; LISA's own code hard-codes 255 extra
positions for it). LISA drops CLIP's CLS token (``mm_vision_select_feature = patch``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import SegLLMConfig
from ..tokens import SEG_TOKEN
from .sam_sizes import sam_config_from_shapes
from .source import ConvertError, SourceTensors, llama_sizes, read_folder_tensors, read_json

PRESET = "lisa-7b"
ROTARY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
TOWER_IN_CHECKPOINT = "model.vision_tower.vision_tower."
LLM_PREFIX = "llava.model.language_model."


def read_lisa_config(folder: Path) -> dict:
    """LISA's config.json, checked to be one (it has ``out_dim`` and ``mm_hidden_size``)."""
    config = read_json(folder / "config.json")
    missing = [k for k in ("out_dim", "mm_hidden_size", "mm_vision_select_layer",
                           "hidden_size", "num_hidden_layers", "vocab_size") if k not in config]
    if missing:
        raise ConvertError(f"{folder / 'config.json'}: not a LISA config (no {missing})")
    unsupported = {"rope_scaling": config.get("rope_scaling"),
                   "hidden_act": config.get("hidden_act", "silu"),
                   "pretraining_tp": config.get("pretraining_tp", 1),
                   "tie_word_embeddings": config.get("tie_word_embeddings", False)}
    expected = {"rope_scaling": None, "hidden_act": "silu", "pretraining_tp": 1,
                "tie_word_embeddings": False}
    for key, value in unsupported.items():
        if value != expected[key] and not (key == "rope_scaling" and not value):
            raise ConvertError(f"{folder / 'config.json'}: {key} {value!r} is not supported "
                               f"(segllm's Llama has {expected[key]!r})")
    return config


def clip_vision_config(folder: Path) -> dict:
    """The vision sizes of a CLIP folder (a whole CLIPModel or a CLIPVisionModel)."""
    config = read_json(folder / "config.json")
    vision = config.get("vision_config", config)
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "image_size", "patch_size")
    missing = [k for k in needed if k not in vision]
    if missing:
        raise ConvertError(f"{folder / 'config.json'}: no CLIP vision sizes {missing}")
    sizes = {k: int(vision[k]) for k in needed}
    sizes["projection_dim"] = int(config.get("projection_dim", vision.get("projection_dim", 768)))
    return sizes


def segllm_config(lisa: dict, clip: dict, sam_shapes: dict, token_ids: dict[str, int],
                  vocab_size: int, projector_bias: bool, source: str) -> SegLLMConfig:
    """The ``lisa-7b`` preset with every size and id taken from the source."""
    if lisa.get("mm_vision_select_feature", "patch") != "patch":
        raise ConvertError(f"{source}: mm_vision_select_feature "
                           f"{lisa['mm_vision_select_feature']!r} (LISA reads 'patch')")
    overrides = {
        "llm": llama_sizes(lisa, vocab_size, max_positions=2048, rms_norm_eps=1e-6),
        "vision": {**clip, "feature_layer": int(lisa["mm_vision_select_layer"]),
                   "select_strategy": "default", "aspect": clip_aspect(lisa)},
        "projector": {"kind": "linear", "bias": projector_bias},
        "decoder_config": sam_config_from_shapes(sam_shapes, source).__dict__,
        "seg_head": {"hidden_dim": None, "num_prompt_tokens": 1},
        # the released weights have LoRA merged into the LLM: no adapters left to train
        "trainable": {"llm": "full"},
        "tokenizer": "pretrained",
        "max_length": min(2048, int(lisa.get("max_position_embeddings", 2048))),
        "token_ids": token_ids,
    }
    return SegLLMConfig.from_name(PRESET, **overrides)


def clip_aspect(lisa: dict) -> str:
    """LLaVA's ``image_aspect_ratio``: "pad" pads to a square; LISA sets "square", which hands
    the image to CLIPImageProcessor as it is (short side resized, centre cropped)."""
    return "pad" if lisa.get("image_aspect_ratio") == "pad" else "crop"


def map_tensors(src: SourceTensors, clip: SourceTensors, clip_prefix: str,
                vocab_size: int) -> dict[str, torch.Tensor]:
    """segllm state dict from LISA's tensors (and CLIP's); every tensor taken or dropped."""
    state: dict[str, torch.Tensor] = {}
    src.drop([k for k in src.keys() if ROTARY.match(k)], "rotary inv_freq buffer (recomputed)")
    state[LLM_PREFIX + "embed_tokens.weight"] = grow_rows(src.take("model.embed_tokens.weight"),
                                                          vocab_size)
    state["llava.lm_head.weight"] = grow_rows(src.take("lm_head.weight"), vocab_size)
    state[LLM_PREFIX + "norm.weight"] = src.take("model.norm.weight")
    for key in src.with_prefix("model.layers."):
        if key not in src.dropped:
            state[LLM_PREFIX + key.removeprefix("model.")] = src.take(key)
    projector = "llava.model.multi_modal_projector.linear_1."
    for part in ("weight", "bias"):
        if f"model.mm_projector.{part}" in src:
            state[projector + part] = src.take(f"model.mm_projector.{part}")
    for key in src.with_prefix("model.visual_model."):
        state["decoder.sam." + key.removeprefix("model.visual_model.")] = src.take(key)
    for i in (0, 2):
        for part in ("weight", "bias"):
            state[f"seg_head.mlp.{i}.{part}"] = src.take(f"model.text_hidden_fcs.0.{i}.{part}")
    for key in clip.with_prefix(clip_prefix + "vision_model."):
        if key.endswith("embeddings.position_ids"):
            clip.drop([key], "CLIP position_ids buffer (recomputed)")
            continue
        state["llava.model.vision_tower." + key.removeprefix(clip_prefix + "vision_model.")] = \
            clip.take(key)
    return state


def grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """[V, H] -> [rows, H]; new rows (segllm's tokens, padding) are the mean of the old ones,
    so a new token's logit is unremarkable rather than 0 or extreme."""
    if rows < weight.shape[0]:
        raise ConvertError(f"vocabulary of {weight.shape[0]} rows cannot shrink to {rows}")
    if rows == weight.shape[0] or weight.is_meta:
        return weight if rows == weight.shape[0] else torch.empty(rows, weight.shape[1],
                                                                  dtype=weight.dtype,
                                                                  device="meta")
    extra = weight.float().mean(dim=0, keepdim=True).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra.to(weight.dtype)])


def drop_clip_extras(clip: SourceTensors, prefix: str) -> None:
    """CLIP's text half and contrastive head, which LLaVA never runs."""
    extras = [k for k in clip.keys() if k.startswith(prefix)
              and not k.startswith(prefix + "vision_model.")]
    clip.drop(extras, "CLIP text tower / contrastive head (unused by LLaVA)")


def vocabulary_size(tokenizer_size: int, source_rows: int) -> int:
    """Rows of the converted embedding: all source rows and every token, padded to 64."""
    rows = max(tokenizer_size, source_rows)
    return (rows + 63) // 64 * 64


def convert(src: Path, *, vision_tower: Path | None = None, dtype: torch.dtype | None = None):
    """A ``SegLLMModel`` (with tokenizer) from a LISA folder; and the report of every tensor."""
    from .build import build_model

    lisa = read_lisa_config(src)
    source = SourceTensors(read_folder_tensors(src), str(src))
    if any("lora_" in k for k in source.keys()):
        key = next(k for k in source.keys() if "lora_" in k)
        raise ConvertError(f"{src}: has unmerged LoRA tensors (e.g. {key!r}); merge them with "
                           "LISA's merge_lora_weights_and_save_hf_model.py first")
    if source.with_prefix(TOWER_IN_CHECKPOINT):
        clip, clip_prefix = source, TOWER_IN_CHECKPOINT
        if vision_tower is None:
            raise ConvertError(f"{src}: pass --vision-tower with the CLIP folder its config "
                               f"names ({lisa.get('mm_vision_tower')!r}) for the CLIP sizes")
    else:
        if vision_tower is None:
            raise ConvertError(
                f"{src}: LISA's checkpoints leave the CLIP tower out (its code loads "
                f"{lisa.get('mm_vision_tower', 'openai/clip-vit-large-patch14')!r} by name); "
                "pass --vision-tower DIR with a local copy of that folder")
        clip, clip_prefix = SourceTensors(read_folder_tensors(vision_tower), str(vision_tower)), ""
    clip_sizes = checked_clip_sizes(lisa, vision_tower, src)
    tokenizer, token_ids = source_tokenizer(lisa, src)
    rows = vocabulary_size(len(tokenizer), source.peek("model.embed_tokens.weight").shape[0])
    sam_shapes = {k.removeprefix("model.visual_model."): source.peek(k).shape
                  for k in source.with_prefix("model.visual_model.")}
    config = segllm_config(lisa, clip_sizes, sam_shapes, token_ids, rows,
                           "model.mm_projector.bias" in source, str(src))
    if clip is not source:
        drop_clip_extras(clip, clip_prefix)
    state = map_tensors(source, clip, clip_prefix, rows)
    source.finish()
    clip.finish()
    model = build_model(config, state, tokenizer, source=str(src), dtype=dtype)
    report = {"system": "lisa", "preset": PRESET, "checkpoint": source.summary()}
    if clip is not source:
        report["vision_tower"] = clip.summary()
    return model, report


def checked_clip_sizes(config: dict, vision_tower: Path, src: Path) -> dict:
    """The CLIP tower's sizes, checked against the width the source's projector reads."""
    clip_sizes = clip_vision_config(vision_tower)
    if int(config["mm_hidden_size"]) != clip_sizes["hidden_size"]:
        raise ConvertError(f"{src}: mm_hidden_size {config['mm_hidden_size']} does not match "
                           f"the CLIP tower's hidden size {clip_sizes['hidden_size']}")
    return clip_sizes


def source_tokenizer(config: dict, src: Path):
    """The source's tokenizer (as the transformers that wrote it read it; LISA and GLaMM pin
    4.31, so a config without the version was written by that too) with segllm's tokens, and
    the ids: [SEG] checked to be one token, ``<im_start>``/``<im_end>`` when the source wraps
    its image in them."""
    from .tokenizer import load_source_tokenizer

    tokenizer, token_ids = load_source_tokenizer(src, config.get("transformers_version", "4.31.0"))
    check_seg_token(tokenizer, token_ids, src)
    if config.get("mm_use_im_start_end", False):
        token_ids.update(image_wrapper_ids(tokenizer, src))
    return tokenizer, token_ids


def check_seg_token(tokenizer, token_ids: dict[str, int], src: Path) -> None:
    """LISA takes [SEG]'s id as ``tokenizer("[SEG]").input_ids[0]``; it must be one token."""
    ids = tokenizer(SEG_TOKEN, add_special_tokens=False)["input_ids"]
    if ids != [token_ids["seg"]]:
        raise ConvertError(f"{src}: the tokenizer splits {SEG_TOKEN} into {ids}")


def image_wrapper_ids(tokenizer, src: Path) -> dict[str, int]:
    """``<im_start>`` / ``<im_end>``, which must already be single tokens of the checkpoint."""
    ids = {}
    for key, token in (("image_start", "<im_start>"), ("image_end", "<im_end>")):
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ConvertError(f"{src}: mm_use_im_start_end is set but the tokenizer has no "
                               f"{token!r}")
        ids[key] = int(tid)
    return ids
