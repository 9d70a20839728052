"""Make the tiny GLaMM parity fixture (tests/fixtures/convert/glamm/) with GLaMM's own code.

Runs OUTSIDE segllm's environment, against a checkout of mbzuai-oryx/groundingLMM and the
transformers of tools/CONVERT_VERSIONS.md::

    PYTHONPATH=SITE:GLAMM_CHECKOUT python tools/make_glamm_fixture.py OUT

What it does, in GLaMM's classes (``model.GLaMM.GLaMMForCausalLM``, their LLaVA-with-region
and their SAM fork) at a tiny size with random weights:

1. a tiny Llama sentencepiece tokenizer with GLaMM's training-time additions (train.py:
   pad = unk; ``<im_start>``/``<im_end>``; ``<bbox>``, ``<point>``, ``[SEG]``, ``<p>``,
   ``</p>``) and a tiny CLIP at 336 px / patch 14 (576 image tokens, which GLaMM's hard-coded
   575-position shift needs);
2. the model built and saved as ``save_pretrained`` saves it (``.bin`` shards + index), and
   reloaded as their ``app.py`` loads it;
3. for one image and one question in their ``app.py`` prompt (``llava_v1``, "The <im_start>
   <image><im_end> provides an overview of the picture.\\n..."): their token ids, CLIP and SAM
   inputs, the LLM's logits and the [SEG] masks of ``model_forward(inference=True)``;
4. ``full_size_keys.json``: the key list and shapes of GLaMM at 7B size (Llama-7B, CLIP-L/336,
   SAM ViT-H, their region encoder), built on the meta device.

Changes to their run-time, all here: ``Tensor.cuda`` is the identity (no GPU);
``build_sam_vit_h`` builds their SAM modules at a tiny size; ``mmcv`` / ``mmdet`` (which
their ``model/layers.py`` imports for the region encoder, and which do not build for this
Python / torch) are stand-ins with mmcv's module layout (``ConvModule`` = conv without bias +
``gn`` + ReLU; ``BaseRoIExtractor.roi_layers`` = RoIAlign per stride). In the tiny model the
region encoder is an empty module: its sizes are hard-coded in their code (CLIP width 1024,
a 24 x 24 grid, 1024 -> 4096 output, a 1024*14*14 -> 1024 Linear of 205 M parameters), so it
cannot be built small. Its keys and shapes are checked at full size (step 4) only.
"""

from __future__ import annotations

import json
import sys
import types
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_lisa_fixture import SEED, scene, tiny_sentencepiece  # noqa: E402

QUESTION = "Can you segment the red circle on the left?"
ANSWER = "Sure, it is [SEG]."
# a grounded caption as GLaMM's GCG datasets write it (GranDf_gcg_ds.py)
GCG_ANSWER = "A <p> red circle </p> [SEG] left of <p> a blue square </p> [SEG]."
SAM_SIZE = 64
RELEASED_TOWER = "openai/clip-vit-large-patch14-336"


def install_mm_stand_ins() -> None:
    """``mmcv.cnn`` / ``mmdet.models`` names ``model/layers.py`` imports, with mmcv's layout."""
    import torchvision

    class ConvModule(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                     conv_cfg=None, norm_cfg=None, **_):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                  bias=norm_cfg is None)
            if norm_cfg is not None:
                self.gn = nn.GroupNorm(norm_cfg["num_groups"], out_channels)
            self.activate = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.conv(x)
            if hasattr(self, "gn"):
                x = self.gn(x)
            return self.activate(x)

    class BaseRoIExtractor(nn.Module):
        def __init__(self, roi_layer, out_channels, featmap_strides, init_cfg=None):
            super().__init__()
            self.out_channels = out_channels
            self.featmap_strides = featmap_strides
            size = roi_layer["output_size"]
            self.roi_layers = nn.ModuleList(
                torchvision.ops.RoIAlign((size, size), spatial_scale=1 / s,
                                         sampling_ratio=roi_layer["sampling_ratio"],
                                         aligned=True) for s in featmap_strides)

    mmcv, cnn = types.ModuleType("mmcv"), types.ModuleType("mmcv.cnn")
    cnn.ConvModule, cnn.Linear = ConvModule, nn.Linear
    cnn.normal_init = lambda m, mean=0, std=1: nn.init.normal_(m.weight, mean, std)
    mmdet, models = types.ModuleType("mmdet"), types.ModuleType("mmdet.models")
    models.BaseRoIExtractor = BaseRoIExtractor
    mmcv.cnn, mmdet.models = cnn, models
    sys.modules.update({"mmcv": mmcv, "mmcv.cnn": cnn, "mmdet": mmdet, "mmdet.models": models})


def tiny_tokenizer(work: Path):
    from transformers import LlamaTokenizer

    work.mkdir(parents=True, exist_ok=True)
    tiny_sentencepiece(work / "tokenizer.model")
    tok = LlamaTokenizer(vocab_file=str(work / "tokenizer.model"), legacy=True)
    tok.pad_token = tok.unk_token
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    tok.add_tokens(["<bbox>", "<point>", "[SEG]", "<p>", "</p>"], special_tokens=True)
    return tok


def tiny_clip(path: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": 336, "patch_size": 14},
        projection_dim=32)
    torch.manual_seed(SEED)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
                       ).save_pretrained(path)


def tiny_sam_builder(prompt_dim: int):
    from model.SAM.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    def build(checkpoint=None):
        grid = SAM_SIZE // 16
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2, embed_dim=32, img_size=SAM_SIZE, mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=2,
                out_chans=prompt_dim),
            prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                         input_image_size=(SAM_SIZE, SAM_SIZE), mask_in_chans=4),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64,
                                              num_heads=8),
                transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=32),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
        sam.eval()
        return sam

    return build


def glamm_config(**sizes):
    from model.llava.model.language_model.llava_llama import LlavaConfig

    config = LlavaConfig(mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                         mm_use_im_start_end=True, with_region=True, num_level_reg_features=4,
                         train_mask_decoder=True, architectures=["GLaMMForCausalLM"], **sizes)
    config.pretrain_mm_mlp_adapter = None
    return config


def full_size_keys(path: Path, clip_336: Path) -> None:
    """Key -> shape of GLaMM-7B as ``save_pretrained`` writes it, from their classes at
    Llama-7B / SAM ViT-H size on the meta device (vision tower config only: 336 px CLIP-L).
    The vocabulary (32007 = 32000 + 7 added tokens) is an assumption."""
    import model.GLaMM as glamm_module
    from model.GLaMM import GLaMMForCausalLM
    from model.SAM import build_sam_vit_h

    glamm_module.build_sam_vit_h = build_sam_vit_h
    config = glamm_config(vocab_size=32007, hidden_size=4096, intermediate_size=11008,
                          num_hidden_layers=32, num_attention_heads=32,
                          max_position_embeddings=4096, rms_norm_eps=1e-5, mm_hidden_size=1024,
                          out_dim=256)
    config.mm_vision_tower = config.vision_tower = str(clip_336)
    with torch.device("meta"):
        model = GLaMMForCausalLM(config, seg_token_idx=32004, bbox_token_idx=32002,
                                 vision_module=str(clip_336))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if "vision_tower" not in k}
    config_json = {k: v for k, v in config.to_dict().items()
                   if k not in ("vision_tower", "mm_vision_tower", "mm_vision_module",
                                "vision_module")}
    path.write_text(json.dumps({"config": config_json, "shapes": shapes}, indent=0) + "\n")


def clip_l_336_config(path: Path) -> None:
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, image_size=336, patch_size=14,
                     projection_dim=768).save_pretrained(path)


def main(out: Path) -> None:
    install_mm_stand_ins()
    import model.GLaMM as glamm_module
    import model.llava.llava_with_region_arch as arch
    from model.GLaMM import GLaMMForCausalLM
    from model.llava import conversation as conversation_lib
    from model.llava.mm_utils import tokenizer_image_token
    from model.SAM.utils.transforms import ResizeLongestSide
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, CLIPImageProcessor

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    prompt_dim = 32
    glamm_module.build_sam_vit_h = tiny_sam_builder(prompt_dim)
    full_region_encoder = arch.MLVLROIQueryModule
    arch.MLVLROIQueryModule = lambda **_: nn.Module()  # hard-coded 7B sizes (docstring)

    out.mkdir(parents=True, exist_ok=True)
    ckpt, clip_dir = out / "checkpoint", out / "clip"
    tok = tiny_tokenizer(out / "work")
    tiny_clip(clip_dir)
    ids = {name: tok(t, add_special_tokens=False).input_ids[0]
           for name, t in (("seg", "[SEG]"), ("bbox", "<bbox>"), ("bop", "<p>"), ("eop", "</p>"))}

    config = glamm_config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6,
        initializer_range=0.2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, mm_hidden_size=32, out_dim=prompt_dim)
    config.mm_vision_tower = config.vision_tower = str(clip_dir)
    torch.manual_seed(SEED)
    model = GLaMMForCausalLM(config, seg_token_idx=ids["seg"], bbox_token_idx=ids["bbox"],
                             vision_module=str(clip_dir))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
    model.config.vision_tower = model.config.mm_vision_tower = RELEASED_TOWER
    model.config.mm_vision_module = model.config.vision_module = RELEASED_TOWER
    model.save_pretrained(ckpt, state_dict=state, max_shard_size="400KB",
                          safe_serialization=False)
    tok.save_pretrained(ckpt)

    # -- reload as app.py does -----------------------------------------------------------------
    tok = AutoTokenizer.from_pretrained(ckpt, use_fast=False, padding_side="right",
                                        model_max_length=1536)
    tok.pad_token = tok.unk_token
    # the saved config names openai's CLIP; point it at the local tiny one (their app.py
    # downloads the named one)
    from model.llava.model.language_model.llava_llama import LlavaConfig

    loaded_config = LlavaConfig.from_pretrained(ckpt)
    loaded_config.vision_tower = loaded_config.mm_vision_tower = str(clip_dir)
    model = GLaMMForCausalLM.from_pretrained(
        ckpt, config=loaded_config, low_cpu_mem_usage=True, torch_dtype=torch.float32,
        seg_token_idx=ids["seg"],
        bbox_token_idx=ids["bbox"], eop_token_idx=ids["eop"], bop_token_idx=ids["bop"])
    model.get_model().initialize_vision_modules(model.get_model().config)
    model.eval()

    conv = conversation_lib.conv_templates["llava_v1"].copy()
    conv.messages = []
    prompt = ("The <image> provides an overview of the picture.\n" + QUESTION).replace(
        "<image>", "<im_start><image><im_end>")
    conv.append_message(conv.roles[0], prompt)
    conv.append_message(conv.roles[1], "")
    generation_prompt = conv.get_prompt()
    conv.messages[-1][1] = ANSWER
    full_prompt = conv.get_prompt()
    prompt_ids = tokenizer_image_token(generation_prompt, tok, return_tensors="pt")
    input_ids = tokenizer_image_token(full_prompt, tok, return_tensors="pt").unsqueeze(0)

    image = scene()
    Image.fromarray(image).save(out / "image.png")
    # stored (and used here) at fp16 precision so the fixture stays small
    clip_px = CLIPImageProcessor.from_pretrained(clip_dir).preprocess(
        image, return_tensors="pt")["pixel_values"].half().float()
    resized = ResizeLongestSide(SAM_SIZE).apply_image(image)
    sam_px = torch.from_numpy(resized).permute(2, 0, 1).contiguous().float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    sam_px = (sam_px - mean) / std
    h, w = sam_px.shape[-2:]
    sam_px = torch.nn.functional.pad(sam_px, (0, SAM_SIZE - w, 0, SAM_SIZE - h))[None]

    with torch.no_grad():
        llm_out = super(GLaMMForCausalLM, model).forward(
            images=clip_px, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            output_hidden_states=True)
        seg = model.model_forward(
            global_enc_images=clip_px, grounding_enc_images=sam_px, bboxes=None,
            input_ids=input_ids, labels=None, attention_masks=torch.ones_like(input_ids),
            offset=torch.tensor([0, 1]), masks_list=[torch.zeros(1, *image.shape[:2])],
            label_list=[torch.zeros(image.shape[:2])], resize_list=[resized.shape[:2]],
            inference=True)
        generated = model.generate(images=clip_px, input_ids=prompt_ids[None], bboxes=None,
                                   max_new_tokens=8, num_beams=1, do_sample=False)

    # positions of the expanded sequence that are text (not one of the 576 image features):
    # their logits and hidden states are kept (all of them would not fit the size budget)
    image_at = int((input_ids[0] == -200).nonzero()[0])
    num_image = llm_out.logits.shape[1] - input_ids.shape[1] + 1
    text_positions = torch.cat([torch.arange(image_at),
                                torch.arange(image_at + num_image, llm_out.logits.shape[1])])
    save_file({
        "input_ids": input_ids[0].contiguous(),
        "clip_pixel_values": clip_px.half().contiguous(),
        "sam_pixel_values": sam_px.contiguous(),
        "text_positions": text_positions.contiguous(),
        "logits": llm_out.logits[0, text_positions].float().contiguous(),
        # in eval mode their forward returns the final (normed) hidden states as one tensor
        "last_hidden_state": llm_out.hidden_states[0][text_positions].float().contiguous(),
        "pred_masks": seg["pred_masks"][0].float().contiguous(),
        "generated_ids": generated[0].contiguous(),
    }, out / "reference.safetensors")
    versions = {"transformers": __import__("transformers").__version__,
                "torch": torch.__version__,
                "sentencepiece": __import__("sentencepiece").__version__}
    (out / "reference.json").write_text(json.dumps({
        "question": QUESTION, "answer": ANSWER, "prompt": full_prompt,
        "generation_prompt": generation_prompt, "prompt_ids": prompt_ids.tolist(),
        "token_ids": ids, "image_token_index": -200, "gcg_answer": GCG_ANSWER,
        "gcg_answer_ids": tok(GCG_ANSWER, add_special_tokens=False).input_ids,
        "sam_input_size": list(resized.shape[:2]), "sam_image_size": SAM_SIZE,
        "versions": versions,
    }, indent=2) + "\n")
    import shutil

    shutil.rmtree(out / "work")
    arch.MLVLROIQueryModule = full_region_encoder
    clip_l_336_config(out / "work_clip_l")
    full_size_keys(out / "full_size_keys.json", out / "work_clip_l")
    shutil.rmtree(out / "work_clip_l")
    print(f"wrote {out}: {len(input_ids[0])} ids, logits {tuple(llm_out.logits.shape)}, "
          f"masks {tuple(seg['pred_masks'][0].shape)}, generated {generated[0].tolist()}")


REGION_KEYS = {  # their region_encoder.* -> segllm's RegionEncoder (segllm/convert/glamm.py)
    "mlvl_fuse.input_conv.": "fuse.input_convs.", "roi_align.pconvs.": "level_convs.",
    "roi_align.pos_embedd.": "box_embed.", "roi_align.flatten_linear.": "flatten.",
    "roi_align.updims.": "out_proj."}


def region_check(segllm_file: Path) -> None:
    """Their MLVLROIQueryModule (full size, as their code fixes it; bf16, the only dtype their
    forward runs in) against segllm's RegionEncoder with the same random weights, on four
    4 x 4-patch levels given as [B, C, h, w] (their 24 x 24 assert is for token input only)."""
    import importlib.util

    install_mm_stand_ins()
    from model.layers import MLVLROIQueryModule

    spec = importlib.util.spec_from_file_location("region_encoder", segllm_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(SEED)
    theirs = MLVLROIQueryModule(embed_dims=1024, out_dims=4096, num_levels=4)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = module.RegionEncoder(feature_dim=1024, out_dim=4096, patch_size=14)
    state = {}
    for key, value in theirs.state_dict().items():
        for old, new in REGION_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith("mlvl_fuse.fuse_convs."):
            i, rest = key[len("mlvl_fuse.fuse_convs."):].split(".", 1)
            key = f"fuse.blocks.{i}." + {"conv.weight": "0.weight", "gn.weight": "1.weight",
                                         "gn.bias": "1.bias"}[rest]
        state[key] = value
    box_map = {"0": "0", "2": "2", "3": "3", "5": "5"}
    assert all(k.split(".")[1] in box_map for k in state if k.startswith("box_embed."))
    ours.load_state_dict(state, strict=True)
    theirs, ours = theirs.bfloat16().eval(), ours.bfloat16().eval()
    side = 4
    grids = [torch.randn(1, 1024, side, side).bfloat16() for _ in range(4)]
    boxes = [torch.tensor([[0.02, 0.03, 0.2, 0.22], [0.1, 0.05, 0.24, 0.15]]).bfloat16()]
    with torch.no_grad():
        want = theirs([g.clone() for g in grids], boxes)[0].float()
        tokens = [g.flatten(2).transpose(1, 2) for g in grids]
        got = ours(tokens, boxes)[0].float()
    diff = (want - got).abs()
    print(f"region encoder: their {tuple(want.shape)} vs segllm {tuple(got.shape)}: max abs "
          f"diff {diff.max():.3g}, max |theirs| {want.abs().max():.3g}")


if __name__ == "__main__":
    if sys.argv[1] == "--region-check":
        region_check(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]))
