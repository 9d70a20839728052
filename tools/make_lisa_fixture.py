"""Make the tiny LISA parity fixture (tests/fixtures/convert/lisa/) with LISA's own code.

Runs OUTSIDE segllm's environment, against a checkout of dvlab-research/LISA and its pinned
transformers (tools/CONVERT_VERSIONS.md says which versions and how to set it up)::

    PYTHONPATH=SITE:LISA_CHECKOUT python tools/make_lisa_fixture.py OUT

What it does, in LISA's own classes (``model.LISA.LISAForCausalLM``, their LLaVA and their
segment_anything fork) at a tiny size with random weights:

1. a tiny Llama sentencepiece tokenizer, then LISA's training-time additions (pad = unk,
   ``[SEG]``, ``<im_start>`` / ``<im_end>``) and a tiny CLIP (224 px, patch 14: 256 image
   tokens, which LISA's hard-coded 255-token shift needs);
2. the model built as LISA's merge script builds it, saved as that script saves it (no
   ``vision_tower`` tensors; ``.bin`` shards and their index), and reloaded as LISA's
   ``chat.py`` loads it (the vision tower from the CLIP folder);
3. for one image and one conversation (LISA's ``llava_v1`` template, ``<im_start><image>
   <im_end>``): their token ids, CLIP and SAM inputs, the LLM's logits and the [SEG] masks of
   ``model_forward(inference=True)``, written to ``reference.safetensors`` / ``reference.json``.

The only changes to their code paths: ``Tensor.cuda`` is the identity (their forward calls
``.cuda()`` unconditionally), and ``build_sam_vit_h`` builds their own SAM modules at a tiny
size instead of ViT-H.
"""

from __future__ import annotations

import io
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

SEED = 0
QUESTION = "What is the red circle on the left? Please output segmentation mask."
ANSWER = "Sure, it is [SEG]."
SAM_SIZE = 64  # the tiny SAM's input side (LISA's real one is 1024)
RELEASED_TOWER = "openai/clip-vit-large-patch14"  # what LISA's released configs name

CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: Sure, it is. What is the red circle on the left?",
    "Please output segmentation mask. Can you segment the dog in this image?",
    "the a an of in on at to and with is are it this that there which what where left right",
] * 20


def tiny_sentencepiece(path: Path) -> None:
    """A Llama-style sentencepiece BPE (byte fallback, unk/bos/eos = 0/1/2), 400 pieces."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, character_coverage=1.0, minloglevel=2)
    path.write_bytes(buffer.getvalue())


def tiny_tokenizer(work: Path):
    """LISA's tokenizer flow (train_ds.py / merge script) on a tiny base Llama tokenizer."""
    from transformers import LlamaTokenizer
    from utils.utils import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN

    work.mkdir(parents=True, exist_ok=True)
    tiny_sentencepiece(work / "tokenizer.model")
    tok = LlamaTokenizer(vocab_file=str(work / "tokenizer.model"), legacy=True)
    tok.pad_token = tok.unk_token
    tok.add_tokens("[SEG]")
    tok.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    return tok


def tiny_clip(path: Path) -> None:
    """A tiny full CLIPModel (text + vision, as openai/clip-vit-large-patch14 is) at 224 px."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": 224, "patch_size": 14},
        projection_dim=32)
    torch.manual_seed(SEED)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
                       ).save_pretrained(path)


def tiny_sam_builder(prompt_dim: int):
    """LISA's ``_build_sam`` layout with their modules, at a tiny size."""
    from model.segment_anything.modeling import (
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


def full_size_keys(path: Path, clip_dir: Path) -> None:
    """Key -> shape of LISA-7B as their merge script saves it (no vision_tower), built from
    their code at Llama-7B / SAM ViT-H size on the meta device. The vocabulary (32004 rows:
    a 32000-piece Llama tokenizer + <im_patch>, [SEG], <im_start>, <im_end>) is an
    assumption; the mapping does not depend on it."""
    import model.LISA as lisa_module
    from model.LISA import LISAForCausalLM
    from model.llava.model.language_model.llava_llama import LlavaConfig
    from model.segment_anything import build_sam_vit_h

    lisa_module.build_sam_vit_h = build_sam_vit_h
    config = LlavaConfig(vocab_size=32004, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32,
                         max_position_embeddings=2048, rms_norm_eps=1e-6,
                         mm_vision_select_layer=-2, mm_hidden_size=1024,
                         mm_use_im_start_end=True, train_mask_decoder=True, out_dim=256,
                         architectures=["LISAForCausalLM"])
    config.mm_vision_tower = config.vision_tower = str(clip_dir)  # only read for its config
    with torch.device("meta"):
        model = LISAForCausalLM(config, seg_token_idx=32001)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if "vision_tower" not in k}
    config_json = {k: v for k, v in config.to_dict().items()
                   if k not in ("vision_tower", "mm_vision_tower")}
    path.write_text(json.dumps({"config": config_json, "shapes": shapes}, indent=0) + "\n")


def scene() -> np.ndarray:
    """A 48 x 80 RGB picture: a red disk on the left, a blue square on the right."""
    yy, xx = np.mgrid[0:48, 0:80]
    image = np.full((48, 80, 3), 230, dtype=np.uint8)
    image[(yy - 24) ** 2 + (xx - 18) ** 2 < 14 ** 2] = (220, 30, 30)
    image[10:38, 50:74] = (30, 40, 210)
    image[..., 1] = (image[..., 1].astype(int) + (xx * 3 % 17)).clip(0, 255)  # some texture
    return image


def main(out: Path) -> None:
    import model.LISA as lisa_module
    from model.LISA import LISAForCausalLM
    from model.llava import conversation as conversation_lib
    from model.llava.mm_utils import tokenizer_image_token
    from model.llava.model.language_model.llava_llama import LlavaConfig
    from model.segment_anything.utils.transforms import ResizeLongestSide
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor
    from utils.utils import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # their forward calls .cuda()
    prompt_dim = 32
    lisa_module.build_sam_vit_h = tiny_sam_builder(prompt_dim)

    out.mkdir(parents=True, exist_ok=True)
    ckpt, clip_dir = out / "checkpoint", out / "clip"
    tok = tiny_tokenizer(out / "work")
    tiny_clip(clip_dir)
    seg_token_idx = tok("[SEG]", add_special_tokens=False).input_ids[0]

    # -- build as the merge script does, save as it saves --------------------------------------
    config = LlavaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6,
        initializer_range=0.2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, mm_vision_select_layer=-2, mm_hidden_size=32,
        architectures=["LISAForCausalLM"])
    config.mm_vision_tower = str(clip_dir)
    torch.manual_seed(SEED)
    model = LISAForCausalLM(config, seg_token_idx=seg_token_idx, vision_tower=str(clip_dir),
                            train_mask_decoder=True, out_dim=prompt_dim, use_mm_start_end=True)
    model.get_model().initialize_vision_modules(model.get_model().config)
    model.get_model().initialize_lisa_modules(model.get_model().config)
    # random weights everywhere the tiny model would otherwise keep SAM's zero / one inits
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
    model.config.vision_tower = RELEASED_TOWER
    model.config.mm_vision_tower = RELEASED_TOWER
    model.save_pretrained(ckpt, state_dict=state, max_shard_size="400KB",
                          safe_serialization=False)
    tok.save_pretrained(ckpt)

    # -- reload as chat.py does ----------------------------------------------------------------
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt, use_fast=False, padding_side="right",
                                        model_max_length=512)
    tok.pad_token = tok.unk_token
    seg_token_idx = tok("[SEG]", add_special_tokens=False).input_ids[0]
    model = LISAForCausalLM.from_pretrained(ckpt, low_cpu_mem_usage=True,
                                            vision_tower=str(clip_dir),
                                            seg_token_idx=seg_token_idx, torch_dtype=torch.float32)
    model.get_model().initialize_vision_modules(model.get_model().config)
    model.eval()

    # -- one conversation, their template and preprocessing ------------------------------------
    conv = conversation_lib.conv_templates["llava_v1"].copy()
    conv.messages = []
    text = (DEFAULT_IMAGE_TOKEN + "\n" + QUESTION).replace(
        DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], "")
    generation_prompt = conv.get_prompt()
    conv.messages[-1][1] = ANSWER
    full_prompt = conv.get_prompt()
    prompt_ids = tokenizer_image_token(generation_prompt, tok, return_tensors="pt")
    input_ids = tokenizer_image_token(full_prompt, tok, return_tensors="pt").unsqueeze(0)

    image = scene()
    Image.fromarray(image).save(out / "image.png")
    clip_px = CLIPImageProcessor.from_pretrained(clip_dir).preprocess(
        image, return_tensors="pt")["pixel_values"]
    resized = ResizeLongestSide(SAM_SIZE).apply_image(image)
    sam_px = torch.from_numpy(resized).permute(2, 0, 1).contiguous().float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    sam_px = (sam_px - mean) / std
    h, w = sam_px.shape[-2:]
    sam_px = torch.nn.functional.pad(sam_px, (0, SAM_SIZE - w, 0, SAM_SIZE - h))[None]

    with torch.no_grad():
        llm_out = super(LISAForCausalLM, model).forward(
            images=clip_px, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            output_hidden_states=True)
        seg = model.model_forward(
            images=sam_px, images_clip=clip_px, input_ids=input_ids, labels=None,
            attention_masks=torch.ones_like(input_ids), offset=torch.tensor([0, 1]),
            masks_list=[torch.zeros(1, *image.shape[:2])],
            label_list=[torch.zeros(image.shape[:2])], resize_list=[resized.shape[:2]],
            inference=True)
        generated = model.generate(images=clip_px, input_ids=prompt_ids[None], max_new_tokens=8,
                                   num_beams=1, do_sample=False)

    save_file({
        "input_ids": input_ids[0].contiguous(),
        "clip_pixel_values": clip_px.contiguous(),
        "sam_pixel_values": sam_px.contiguous(),
        "logits": llm_out.logits[0].float().contiguous(),
        # LISA's forward returns the final (normed) hidden states as one [B, L, D] tensor
        "last_hidden_state": llm_out.hidden_states[0].float().contiguous(),
        "pred_masks": seg["pred_masks"][0].float().contiguous(),
        "generated_ids": generated[0].contiguous(),
    }, out / "reference.safetensors")
    versions = {"transformers": __import__("transformers").__version__,
                "torch": torch.__version__,
                "sentencepiece": __import__("sentencepiece").__version__}
    (out / "reference.json").write_text(json.dumps({
        "question": QUESTION, "answer": ANSWER, "prompt": full_prompt,
        "generation_prompt": generation_prompt, "prompt_ids": prompt_ids.tolist(),
        "seg_token_idx": seg_token_idx, "image_token_index": -200,
        "sam_input_size": list(resized.shape[:2]), "sam_image_size": SAM_SIZE,
        "versions": versions,
    }, indent=2) + "\n")
    import shutil

    shutil.rmtree(out / "work")
    full_size_keys(out / "full_size_keys.json", clip_dir)
    print(f"wrote {out}: {len(input_ids[0])} ids, logits {tuple(llm_out.logits.shape)}, "
          f"masks {tuple(seg['pred_masks'][0].shape)}, generated {generated[0].tolist()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
