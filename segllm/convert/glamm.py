"""GLaMM (mbzuai-oryx/groundingLMM) checkpoints -> segllm.

A released GLaMM folder (``MBZUAI/GLaMM-FullScope``, ``GLaMM-GCG``, ``GLaMM-RefSeg`` ...) is
what ``GLaMMForCausalLM.save_pretrained`` writes: LLaVA-1.5-style Llama with its CLIP tower
left out (their code loads ``openai/clip-vit-large-patch14-336`` by name: pass a local copy
as ``--vision-tower DIR``). What each part becomes:

==================================================  =============================================
GLaMM                                               segllm
==================================================  =============================================
``model.embed_tokens``, ``model.layers.*``,          ``llava.model.language_model.*`` (vocabulary
``model.norm``, ``lm_head``                          grown by segllm's tokens: new rows the mean)
``model.mm_projector.{0,2}`` (mlp2x_gelu)            projector ``kind: mlp`` ``linear_{1,2}``
``model.grounding_encoder.*`` (SAM)                  ``decoder.sam.*`` (sizes from the shapes)
``model.text_hidden_fcs.0.{0,2}``                    ``seg_head.mlp.{0,2}``
``model.region_encoder.*`` (MLVLROIQueryModule)      ``region_encoder.*`` (``REGION_KEYS``)
CLIP ``vision_model.*``                              ``llava.model.vision_tower.*``
==================================================  =============================================

Dropped on purpose: the rotary ``inv_freq`` buffers, CLIP's text half, logit scale and
``position_ids``. What the config and tokenizer say, not offsets: the [SEG], ``<bbox>``,
``<p>``/``</p>`` and ``<im_start>``/``<im_end>`` ids (GLaMM's app.py hard-codes the
``<bbox>`` id 32002 in its config default and a 575-position image shift; segllm reads both
from the tokenizer and CLIP's sizes), the CLIP layer (``mm_vision_select_layer``), the region
encoder's levels (``num_level_reg_features``) and its sizes (from the shapes). The prompt
template is GLaMM's (``prompt_template: glamm``).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import SegLLMConfig
from .lisa import (
    ROTARY,
    TOWER_IN_CHECKPOINT,
    checked_clip_sizes,
    clip_aspect,
    drop_clip_extras,
    grow_rows,
    read_lisa_config,
    source_tokenizer,
    vocabulary_size,
)
from .sam_sizes import sam_config_from_shapes
from .source import ConvertError, SourceTensors, llama_sizes, read_folder_tensors

PRESET = "glamm-7b"
LLM_PREFIX = "llava.model.language_model."
SAM_PREFIX = "model.grounding_encoder."
REGION_PREFIX = "model.region_encoder."
REGION_TOKEN = "<bbox>"  # GLaMM's region slot (train.py's reg_tokens)
REGION_KEYS = {  # their MLVLROIQueryModule -> segllm's RegionEncoder, by prefix
    "mlvl_fuse.input_conv.": "fuse.input_convs.",
    "roi_align.pconvs.": "level_convs.",
    "roi_align.pos_embedd.": "box_embed.",
    "roi_align.flatten_linear.": "flatten.",
    "roi_align.updims.": "out_proj.",
}
FUSE_BLOCK_PARTS = {"conv.weight": "0.weight", "gn.weight": "1.weight", "gn.bias": "1.bias"}
GLAMM_NORM_GROUPS = 64  # their MLVLFuseModule's GroupNorm (not visible in the shapes)


def read_glamm_config(folder: Path) -> dict:
    """GLaMM's config.json (LISA's checks, plus GLaMM's own region settings)."""
    config = read_lisa_config(folder)
    if config.get("architectures") and "GLaMMForCausalLM" not in config["architectures"]:
        raise ConvertError(f"{folder / 'config.json'}: architectures {config['architectures']}"
                           " is not GLaMM's (GLaMMForCausalLM)")
    return config


def region_encoder_config(src: SourceTensors, glamm: dict, clip: dict, hidden: int) -> dict:
    """``config.region_encoder`` from the region encoder's shapes; disabled if it is absent."""
    keys = src.with_prefix(REGION_PREFIX)
    if not keys:
        return {"enabled": False}

    def shape(name: str):
        return src.peek(REGION_PREFIX + name).shape

    levels = sum(1 for k in keys if k.startswith(REGION_PREFIX + "mlvl_fuse.input_conv.")
                 and k.endswith(".weight"))
    fuse = sum(1 for k in keys if k.startswith(REGION_PREFIX + "mlvl_fuse.fuse_convs.")
               and k.endswith("conv.weight"))
    feature_dim = shape("mlvl_fuse.input_conv.0.weight")[0]
    query_dim, flat_in = shape("roi_align.flatten_linear.weight")
    roi = math.isqrt(flat_in // feature_dim)
    problems = []
    if feature_dim != clip["hidden_size"]:
        problems.append(f"its width {feature_dim} is not CLIP's {clip['hidden_size']}")
    if shape("roi_align.updims.weight")[0] != hidden:
        problems.append(f"its output {shape('roi_align.updims.weight')[0]} is not the LLM's "
                        f"width {hidden}")
    if roi * roi * feature_dim != flat_in:
        problems.append(f"flatten_linear's input {flat_in} is not {feature_dim} x a square")
    if levels != int(glamm.get("num_level_reg_features", levels)):
        problems.append(f"{levels} levels but num_level_reg_features is "
                        f"{glamm['num_level_reg_features']}")
    if problems:
        raise ConvertError(f"{src.source}: the region encoder does not fit: "
                           + "; ".join(problems))
    return {"enabled": True, "num_levels": levels, "num_fuse": fuse, "roi_size": roi,
            "query_dim": query_dim, "box_hidden": shape("roi_align.pos_embedd.0.weight")[0],
            "norm_groups": GLAMM_NORM_GROUPS}


def region_key(key: str) -> str:
    """Their ``region_encoder.*`` key (prefix removed) -> segllm's ``RegionEncoder`` key."""
    if key.startswith("mlvl_fuse.fuse_convs."):
        index, rest = key.removeprefix("mlvl_fuse.fuse_convs.").split(".", 1)
        if rest not in FUSE_BLOCK_PARTS:
            raise ConvertError(f"region encoder tensor {key!r}: unknown part {rest!r}")
        return f"fuse.blocks.{index}.{FUSE_BLOCK_PARTS[rest]}"
    for old, new in REGION_KEYS.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    raise ConvertError(f"region encoder tensor {key!r}: not a part of GLaMM's "
                       "MLVLROIQueryModule this converter knows")


def segllm_config(glamm: dict, clip: dict, sam_shapes: dict, region: dict,
                  token_ids: dict[str, int], vocab_size: int, source: str) -> SegLLMConfig:
    """The ``glamm-7b`` preset with every size and id taken from the source."""
    if glamm.get("mm_vision_select_feature", "patch") != "patch":
        raise ConvertError(f"{source}: mm_vision_select_feature "
                           f"{glamm['mm_vision_select_feature']!r} (GLaMM reads 'patch')")
    overrides = {
        "llm": llama_sizes(glamm, vocab_size, max_positions=4096, rms_norm_eps=1e-5),
        "vision": {**clip, "feature_layer": int(glamm["mm_vision_select_layer"]),
                   "select_strategy": "default", "aspect": clip_aspect(glamm)},
        "decoder_config": sam_config_from_shapes(sam_shapes, source).__dict__,
        "region_encoder": region,
        "token_ids": token_ids,
        "max_length": min(4096, int(glamm.get("max_position_embeddings", 4096))),
    }
    return SegLLMConfig.from_name(PRESET, **overrides)


def map_tensors(src: SourceTensors, clip: SourceTensors, clip_prefix: str,
                vocab_size: int) -> dict:
    """segllm state dict from GLaMM's tensors (and CLIP's); every tensor taken or dropped."""
    state = {}
    src.drop([k for k in src.keys() if ROTARY.match(k)], "rotary inv_freq buffer (recomputed)")
    state[LLM_PREFIX + "embed_tokens.weight"] = grow_rows(src.take("model.embed_tokens.weight"),
                                                          vocab_size)
    state["llava.lm_head.weight"] = grow_rows(src.take("lm_head.weight"), vocab_size)
    state[LLM_PREFIX + "norm.weight"] = src.take("model.norm.weight")
    for key in src.with_prefix("model.layers."):
        if key not in src.dropped:
            state[LLM_PREFIX + key.removeprefix("model.")] = src.take(key)
    projector = "llava.model.multi_modal_projector."
    for theirs, ours in (("0", "linear_1"), ("2", "linear_2")):
        for part in ("weight", "bias"):
            state[f"{projector}{ours}.{part}"] = src.take(f"model.mm_projector.{theirs}.{part}")
    for key in src.with_prefix(SAM_PREFIX):
        state["decoder.sam." + key.removeprefix(SAM_PREFIX)] = src.take(key)
    for i in (0, 2):
        for part in ("weight", "bias"):
            state[f"seg_head.mlp.{i}.{part}"] = src.take(f"model.text_hidden_fcs.0.{i}.{part}")
    for key in src.with_prefix(REGION_PREFIX):
        state["region_encoder." + region_key(key.removeprefix(REGION_PREFIX))] = src.take(key)
    for key in clip.with_prefix(clip_prefix + "vision_model."):
        if key.endswith("embeddings.position_ids"):
            clip.drop([key], "CLIP position_ids buffer (recomputed)")
            continue
        state["llava.model.vision_tower." + key.removeprefix(clip_prefix + "vision_model.")] = \
            clip.take(key)
    return state


def region_token_id(tokenizer, src: Path) -> int:
    tid = tokenizer.convert_tokens_to_ids(REGION_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ConvertError(f"{src}: the tokenizer has no {REGION_TOKEN!r} token (GLaMM's "
                           "region slot)")
    return int(tid)


def convert(src: Path, *, vision_tower: Path | None = None, dtype=None):
    """A ``SegLLMModel`` (with tokenizer) from a GLaMM folder; and the report of every tensor."""
    from .build import build_model

    glamm = read_glamm_config(src)
    source = SourceTensors(read_folder_tensors(src), str(src))
    if any("lora_" in k for k in source.keys()):
        key = next(k for k in source.keys() if "lora_" in k)
        raise ConvertError(f"{src}: has unmerged LoRA tensors (e.g. {key!r}); merge them with "
                           "GLaMM's scripts/merge_lora_weights.py first")
    if vision_tower is None:
        raise ConvertError(
            f"{src}: GLaMM's checkpoints leave the CLIP tower out (its code loads "
            f"{glamm.get('mm_vision_tower', 'openai/clip-vit-large-patch14-336')!r} by name); "
            "pass --vision-tower DIR with a local copy of that folder")
    if source.with_prefix(TOWER_IN_CHECKPOINT):
        clip, clip_prefix = source, TOWER_IN_CHECKPOINT
    else:
        clip, clip_prefix = SourceTensors(read_folder_tensors(vision_tower), str(vision_tower)), ""
    clip_sizes = checked_clip_sizes(glamm, vision_tower, src)
    tokenizer, token_ids = source_tokenizer(glamm, src)
    rows = vocabulary_size(len(tokenizer), source.peek("model.embed_tokens.weight").shape[0])
    region = region_encoder_config(source, glamm, clip_sizes, int(glamm["hidden_size"]))
    if region["enabled"]:
        token_ids["region"] = region_token_id(tokenizer, src)
    sam_shapes = {k.removeprefix(SAM_PREFIX): source.peek(k).shape
                  for k in source.with_prefix(SAM_PREFIX)}
    config = segllm_config(glamm, clip_sizes, sam_shapes, region, token_ids, rows, str(src))
    if clip is not source:
        drop_clip_extras(clip, clip_prefix)
    state = map_tensors(source, clip, clip_prefix, rows)
    source.finish()
    clip.finish()
    model = build_model(config, state, tokenizer, source=str(src), dtype=dtype)
    report = {"system": "glamm", "preset": PRESET, "checkpoint": source.summary(),
              "region_encoder": region["enabled"]}
    if clip is not source:
        report["vision_tower"] = clip.summary()
    return model, report
