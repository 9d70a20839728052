"""SegLLM: LLaVA + [SEG] seg head + mask decoder + mask encoder.

Flow of one forward (docs/architecture.md, "Data flow")::

    token embeddings ── image tokens <- projector(CLIP patches)
                     └─ <mask_crop> <- projector(CLIP CLS of masked crop), <mask_box> <- Linear(4,H)
    LLM (Llama) ── last hidden state at every position whose *next* token is [SEG]
                └─ seg head -> prompt embeddings -> mask decoder (image features once per
                   image) -> masks

Positions are found from token ids after placeholder expansion; nothing assumes an offset.
Shapes: H is the LLM's hidden size, MH x MW a mask's height and width (the image's size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from ..config import SegLLMConfig
from ..files import atomic_directory
from ..tokenizer import add_segllm_tokens, build_tiny_tokenizer
from .decoders import build_decoder, decoder_class
from .frame_tokens import frame_tokens, pooling_grid
from .llava import build_llava, cls_tokens, image_tokens, load_llava, sizes_from_llava_config
from .loading import CheckpointError, load_state_dict_strict
from .lora import add_lora, is_lora_parameter
from .mask_encoder import MaskEncoder
from .region_encoder import build_region_encoder, clip_levels
from .seg_head import SegHead

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "segllm_config.json"


@dataclass
class SegLLMOutput:
    """What ``SegLLMModel.forward`` returns. Per-sample lists follow the batch order."""

    logits: torch.Tensor  # [B, L, V]
    hidden_states: torch.Tensor  # [B, L, D] the LLM's last hidden states
    image_features: torch.Tensor  # the decoder's image encoding of every sample's image
    mask_logits: list[torch.Tensor]  # per sample [n_i, H_i, W_i] at the original size
    mask_scores: list[torch.Tensor]  # per sample [n_i] predicted IoU
    mask_rounds: list[torch.Tensor] | None  # per sample [n_i] round of each mask (with round_ids)
    seg_embeddings: list[torch.Tensor] = field(default_factory=list)  # per sample [n_i, T, P]
    # per sample, what the decoder's training loss needs (MaskDecoder.decode_for_training)
    decoder_extras: list = field(default_factory=list)

    @property
    def num_masks(self) -> int:
        return sum(m.shape[0] for m in self.mask_logits)

    def masks_by_round(self, sample: int, num_rounds: int) -> list[list[torch.Tensor]]:
        """Mask logits of one sample grouped by round: ``[round][k] -> [H, W]``."""
        if self.mask_rounds is None:
            raise ValueError("masks_by_round needs the forward's round_ids")
        grouped: list[list[torch.Tensor]] = [[] for _ in range(num_rounds)]
        for m, r in zip(self.mask_logits[sample], self.mask_rounds[sample].tolist(), strict=True):
            grouped[r].append(m)
        return grouped


class SegLLMModel(nn.Module):
    """The whole model. Build with ``from_config``, ``from_components`` or ``from_pretrained``.

    Args:
        config: sizes, presets and special-token ids (``config.token_ids`` must match the
            tokenizer the model is used with).
        llava: an existing backbone (e.g. loaded from llava-hf); built from ``config`` if None.
    """

    def __init__(self, config: SegLLMConfig, llava: LlavaForConditionalGeneration | None = None):
        super().__init__()
        self.config = config
        self.llava = llava if llava is not None else build_llava(config)
        hidden = config.llm.hidden_size
        self.decoder = build_decoder(config)
        self.seg_head = SegHead(hidden, self.decoder.prompt_dim, config.seg_head)
        menc = config.mask_encoder
        self.mask_encoder = (MaskEncoder(hidden, menc.token_dropout, menc.inference_scale)
                             if menc.enabled else None)
        self.region_encoder = build_region_encoder(config)
        self._check_video_config(config)
        if config.trainable.llm == "lora":
            add_lora(self.language_model, config.lora)
        self.tokenizer = None  # attached by the constructors; saved with the weights
        self.apply_trainable()

    @staticmethod
    def _check_video_config(config: SegLLMConfig) -> None:
        """Reference frames need a ``<frame>`` token and a pooling grid that fits the tower."""
        count = config.video.tokens_per_frame
        if count == 0:
            return
        if "frame" not in config.token_ids:
            raise ValueError("config.video.tokens_per_frame is set but config.token_ids has no "
                             "'frame' id (a tokenizer from before video input)")
        pooling_grid(count, _patch_grid(config))

    @property
    def takes_reference_frames(self) -> bool:
        """Whether the LLM takes a video's reference frames (``config.video.tokens_per_frame``)."""
        return self.config.video.tokens_per_frame > 0

    # -- parts ------------------------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def device(self) -> torch.device:
        return self.llava.lm_head.weight.device

    def components(self) -> dict[str, nn.Module]:
        """Named components, for parameter reports; the decoder's trainable groups appear as
        ``{decoder name}_{group}``."""
        parts = {
            "vision_tower": self.llava.model.vision_tower,
            "projector": self.llava.model.multi_modal_projector,
            "language_model": self.language_model,
            "lm_head": self.llava.lm_head,
            "seg_head": self.seg_head,
        }
        for group, module in self.decoder.trainable_groups().items():
            parts[f"{self.config.decoder}_{group}"] = module
        if self.mask_encoder is not None:
            parts["mask_encoder_box"] = self.mask_encoder
        if self.region_encoder is not None:
            parts["region_encoder"] = self.region_encoder
        return parts

    def apply_trainable(self) -> None:
        """Set ``requires_grad`` as ``config.trainable`` says; everything else is frozen."""
        t = self.config.trainable
        self.requires_grad_(False)
        lm = self.language_model
        if t.llm == "full":
            lm.requires_grad_(True)
            self.llava.lm_head.requires_grad_(True)
        elif t.llm == "lora":
            for name, p in lm.named_parameters():
                p.requires_grad_(is_lora_parameter(name))
        elif t.llm != "frozen":
            raise ValueError(f"trainable.llm must be 'lora', 'full' or 'frozen', got {t.llm!r}")
        if t.token_embeddings:
            lm.embed_tokens.requires_grad_(True)
            self.llava.lm_head.requires_grad_(True)
        self.llava.model.multi_modal_projector.requires_grad_(t.projector)
        self.llava.model.vision_tower.requires_grad_(t.vision_tower)
        self.seg_head.requires_grad_(t.seg_head)
        if self.mask_encoder is not None:
            self.mask_encoder.requires_grad_(t.mask_encoder_box)
        self.decoder.apply_trainable(t.decoder)

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """``{component: {"total": n, "trainable": n}}`` plus an ``"all"`` row."""
        rows = {}
        for name, module in self.components().items():
            params = list(module.parameters())
            rows[name] = {"total": sum(p.numel() for p in params),
                          "trainable": sum(p.numel() for p in params if p.requires_grad)}
        everything = list(self.parameters())
        rows["all"] = {"total": sum(p.numel() for p in everything),
                       "trainable": sum(p.numel() for p in everything if p.requires_grad)}
        return rows

    # -- the forward, in pieces that inference reuses ----------------------------------------

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                     ref_pixel_values: torch.Tensor | None = None,
                     ref_boxes: torch.Tensor | None = None,
                     ref_rounds: list[torch.Tensor] | None = None,
                     round_ids: torch.Tensor | None = None,
                     sample_ids: list[str] | None = None,
                     frame_pixel_values: torch.Tensor | None = None,
                     frame_counts: list[int] | None = None,
                     frame_tokens: torch.Tensor | None = None,
                     region_boxes: list[torch.Tensor] | None = None,
                     region_pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image, reference-frame and mask-encoder tokens in their slots.

        Args:
            input_ids: [B, L].
            pixel_values: [B, 3, S, S] CLIP input, when the sequence holds image tokens.
            ref_pixel_values, ref_boxes: [R, 3, S, S] crops and [R, 4] boxes, in slot order.
            ref_rounds: per sample, the round of each slot (to name the round in errors).
            round_ids: [B, L] round of each token (to name the round in errors).
            sample_ids: names for error messages.
            frame_pixel_values: [F, 3, S, S] CLIP input of the video reference frames of the
                whole batch, sample by sample, each sample's in its slot order.
            frame_counts: per sample, how many of them are its own (default: all, one sample).
            frame_tokens: [F, tokens_per_frame, H] the reference frames' tokens already
                computed by :meth:`reference_frame_tokens` (a video query encodes each frame
                once for all its candidate frames), in place of ``frame_pixel_values``.
            region_boxes: per sample [k, 4] normalised x1y1x2y2 boxes for its ``<bbox>``
                slots, in order (region-encoder models: ``config.region_encoder``).
            region_pixel_values: the CLIP input the boxes are read from (default
                ``pixel_values``; given apart when the image's tokens are already cached).
        Returns:
            [B, L, H] input embeddings.
        """
        ids = self.config.token_ids
        names = sample_ids or [str(i) for i in range(input_ids.shape[0])]
        embeds = self.language_model.embed_tokens(input_ids)
        image_slots = input_ids == ids["image"]
        if pixel_values is not None or image_slots.any():
            embeds = self._scatter_image(embeds, image_slots, pixel_values, names)
        frame_slots = input_ids == ids["frame"] if "frame" in ids else None
        if frame_tokens is not None and frame_pixel_values is not None:
            raise ValueError("give a video's reference frames as frame_pixel_values or as "
                             "frame_tokens, not both")
        frames = frame_tokens if frame_tokens is not None else frame_pixel_values
        has_frames = frames is not None and len(frames) > 0
        if has_frames or (frame_slots is not None and frame_slots.any()):
            embeds = self._scatter_frames(embeds, frame_slots, frames, frame_counts, names,
                                          encoded=frame_tokens is not None)
        crop_slots = input_ids == ids["mask_crop"]
        box_slots = input_ids == ids["mask_box"]
        if crop_slots.any() or box_slots.any() or (ref_boxes is not None and len(ref_boxes)):
            embeds = self._scatter_refs(embeds, crop_slots, box_slots, ref_pixel_values,
                                        ref_boxes, ref_rounds, round_ids, names)
        region_slots = input_ids == ids["region"] if "region" in ids else None
        if region_boxes is not None or (region_slots is not None and region_slots.any()):
            embeds = self._scatter_regions(
                embeds, region_slots,
                region_pixel_values if region_pixel_values is not None else pixel_values,
                region_boxes, names)
        return embeds

    def _scatter_regions(self, embeds, slots, pixel_values, boxes, names) -> torch.Tensor:
        """GLaMM's ``<bbox>`` slots: the region encoder's token of each box, in order."""
        if self.region_encoder is None or slots is None:
            raise ValueError("regions were given as boxes but this model has no region encoder "
                             "(config.region_encoder.enabled is False)")
        given = [len(b) for b in boxes] if boxes is not None else [0] * embeds.shape[0]
        for i, n in enumerate(slots.sum(dim=1).tolist()):
            if n != given[i]:
                raise ValueError(f"sample {names[i]!r}: {n} region slot(s) but {given[i]} "
                                 "box(es) were given")
        if sum(given) == 0:
            return embeds
        if pixel_values is None:
            raise ValueError("the region encoder reads the image's CLIP features; no image "
                             "was given")
        rcfg, vcfg = self.config.region_encoder, self.config.vision
        tower = self.llava.model.vision_tower
        dtype = next(tower.parameters()).dtype
        hidden = tower(pixel_values.to(dtype), output_hidden_states=True).hidden_states
        levels = clip_levels(hidden, last_layer=vcfg.feature_layer,
                             num_levels=rcfg.num_levels, step=rcfg.layer_step)
        tokens = torch.cat(self.region_encoder(levels, [b.to(embeds.device) for b in boxes]))
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))

    def _scatter_image(self, embeds, slots, pixel_values, names) -> torch.Tensor:
        per_sample = slots.sum(dim=1).tolist()
        if pixel_values is None:
            bad = next(i for i, n in enumerate(per_sample) if n)
            raise ValueError(f"sample {names[bad]!r} round 0: the sequence has image tokens "
                             "but no image was given")
        vcfg = self.config.vision
        feats = image_tokens(self.llava, pixel_values, vcfg.feature_layer, vcfg.select_strategy)
        for i, n in enumerate(per_sample):
            if n != feats.shape[1]:
                raise ValueError(
                    f"sample {names[i]!r} round 0: {n} image tokens in the sequence but the "
                    f"vision tower gives {feats.shape[1]} features per image")
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))

    def reference_frame_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[F, 3, S, S] CLIP input of a video's reference frames -> [F, tokens_per_frame, H]
        their pooled, projected tokens (what their ``<frame>`` slots take)."""
        return frame_tokens(self.llava, pixel_values, layer=self.config.vision.feature_layer,
                            grid=_patch_grid(self.config),
                            count=self.config.video.tokens_per_frame)

    def _scatter_frames(self, embeds, slots, frames, counts, names, *,
                        encoded: bool = False) -> torch.Tensor:
        """Fill the ``<frame>`` slots from ``frames``: CLIP input [F, 3, S, S], or their
        tokens [F, tokens_per_frame, H] when ``encoded``."""
        per_frame = self.config.video.tokens_per_frame
        if per_frame == 0:
            raise ValueError("reference frames were given but this model takes none "
                             "(config.video.tokens_per_frame is 0)")
        given = len(frames) if frames is not None else 0
        counts = counts if counts is not None else [given] + [0] * (embeds.shape[0] - 1)
        if len(counts) != embeds.shape[0] or sum(counts) != given:
            raise ValueError(f"frame_counts {counts} do not share out the {given} reference "
                             f"frames among the batch's {embeds.shape[0]} sample(s)")
        slot_counts = slots.sum(dim=1).tolist() if slots is not None else [0] * len(counts)
        for i, (n_slots, n_frames) in enumerate(zip(slot_counts, counts, strict=True)):
            if n_slots != n_frames * per_frame:
                raise ValueError(
                    f"sample {names[i]!r} round 0: {n_slots} reference-frame slots but "
                    f"{n_frames} frame(s) of {per_frame} tokens were given")
        if given == 0:
            return embeds
        if encoded and tuple(frames.shape[1:]) != (per_frame, embeds.shape[-1]):
            raise ValueError(f"frame_tokens of shape {tuple(frames.shape)}: expected "
                             f"[F, {per_frame}, {embeds.shape[-1]}]")
        tokens = frames if encoded else self.reference_frame_tokens(frames)
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype))

    def _scatter_refs(self, embeds, crop_slots, box_slots, crops, boxes, ref_rounds,
                      round_ids, names) -> torch.Tensor:
        counts = crop_slots.sum(dim=1)
        given = [len(r) for r in ref_rounds] if ref_rounds is not None else None
        for i in range(embeds.shape[0]):
            n_crop, n_box = int(counts[i]), int(box_slots[i].sum())
            n_given = given[i] if given is not None else n_crop
            if n_crop != n_box or n_crop != n_given:
                rounds = round_ids[i][crop_slots[i] | box_slots[i]].unique().tolist() \
                    if round_ids is not None else []
                where = f"round {rounds[0]}" if rounds else "a referring round"
                raise ValueError(
                    f"sample {names[i]!r} {where}: {n_crop} mask-crop and {n_box} mask-box "
                    f"slots but {n_given} referenced mask(s) were given")
        total = int(counts.sum())
        if boxes is None or len(boxes) != total:
            raise ValueError(f"the batch has {total} reference slots but "
                             f"{0 if boxes is None else len(boxes)} reference masks were given")
        if self.mask_encoder is None:
            raise ValueError("the sequence references earlier masks but this model has no "
                             "mask encoder (config.mask_encoder.enabled is False)")
        vcfg = self.config.vision
        crop_tok, box_tok = self.mask_encoder(
            crops, boxes, lambda px: cls_tokens(self.llava, px, vcfg.feature_layer))
        embeds = embeds.masked_scatter(crop_slots.unsqueeze(-1), crop_tok.to(embeds.dtype))
        return embeds.masked_scatter(box_slots.unsqueeze(-1), box_tok.to(embeds.dtype))

    def seg_positions(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample, position) of every state that predicts a [SEG]: the token before it."""
        predicts_seg = input_ids[:, 1:] == self.config.token_ids["seg"]
        return predicts_seg.nonzero(as_tuple=True)

    def encode_images_for_decoder(self, decoder_pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S', S'] -> the decoder's image features; compute once per image and keep them."""
        return self.decoder.encode_image(decoder_pixel_values)

    def decode_masks(self, hidden: torch.Tensor, image_features: torch.Tensor,
                     input_size: tuple[int, int], original_size: tuple[int, int],
                     ref_masks: torch.Tensor | None = None, extras: list | None = None):
        """[S, H] [SEG] states of one image -> (mask logits [S, MH, MW], scores [S], prompts).

        ``ref_masks`` [S, MH, MW]: for mask-aware decoding, the union of the masks each [SEG]'s
        question references (all zero where it references none); ignored otherwise.
        ``extras``: a list to append what the decoder's training loss needs of this image.
        """
        prompts = self.seg_head(hidden)
        if extras is None:
            logits, scores = self.decoder.decode(image_features, prompts, input_size,
                                                 original_size, ref_masks=ref_masks)
        else:
            logits, scores, extra = self.decoder.decode_for_training(
                image_features, prompts, input_size, original_size, ref_masks=ref_masks)
            extras.append(extra)
        return logits, scores, prompts

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_pixel_values: torch.Tensor, decoder_input_sizes: list[tuple[int, int]],
                original_sizes: list[tuple[int, int]], pixel_values: torch.Tensor | None = None,
                ref_pixel_values: torch.Tensor | None = None,
                ref_boxes: torch.Tensor | None = None,
                ref_rounds: list[torch.Tensor] | None = None,
                round_ids: torch.Tensor | None = None,
                seg_ref_masks: list[torch.Tensor] | None = None,
                sample_ids: list[str] | None = None,
                inputs_embeds: torch.Tensor | None = None,
                frame_pixel_values: torch.Tensor | None = None,
                frame_counts: list[int] | None = None) -> SegLLMOutput:
        """One teacher-forced pass over a batch of (multi-round) conversations.

        Args:
            input_ids, attention_mask: [B, L] tokens (placeholders expanded) and their mask.
            decoder_pixel_values: [B, ...] the mask decoder's preprocessed images.
            decoder_input_sizes: per sample, the resized (h, w) inside the decoder's input.
            original_sizes: per sample, (H, W); masks come back at this size.
            pixel_values, ref_pixel_values, ref_boxes, ref_rounds, round_ids, sample_ids:
                see :meth:`embed_inputs` (``round_ids`` also labels each mask with its round).
            seg_ref_masks: per sample [n_i, H, W], for each [SEG] the union of the masks its
                question references (mask-aware decoding; all zero where it references none).
            inputs_embeds: [B, L, D] embeddings already built by :meth:`embed_inputs` (a
                training objective may add to them); the image and reference inputs are then
                not read again.
            frame_pixel_values, frame_counts: a video's reference frames (see
                :meth:`embed_inputs`).

        Returns:
            logits, last hidden states, decoder image features, and per sample the mask
            logits, scores and prompt embeddings of every [SEG] in sequence order.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, ref_pixel_values,
                                              ref_boxes, ref_rounds, round_ids, sample_ids,
                                              frame_pixel_values=frame_pixel_values,
                                              frame_counts=frame_counts)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  use_cache=False)
        hidden = out.last_hidden_state
        logits = self.llava.lm_head(hidden)
        rows, cols = self.seg_positions(input_ids)
        features = self.encode_images_for_decoder(decoder_pixel_values)
        mask_logits, scores, prompts, rounds, extras = [], [], [], [], []
        for i in range(input_ids.shape[0]):
            sel = rows == i
            refs = seg_ref_masks[i] if seg_ref_masks is not None else None
            if refs is not None and refs.shape[0] != int(sel.sum()):
                name = sample_ids[i] if sample_ids else str(i)
                raise ValueError(f"sample {name!r}: {int(sel.sum())} [SEG] token(s) but "
                                 f"{refs.shape[0]} reference mask(s) for them")
            lg, sc, pr = self.decode_masks(hidden[i, cols[sel]], features[i:i + 1],
                                           decoder_input_sizes[i], original_sizes[i],
                                           ref_masks=refs, extras=extras)
            mask_logits.append(lg)
            scores.append(sc)
            prompts.append(pr)
            if round_ids is not None:
                rounds.append(round_ids[i, cols[sel] + 1])
        return SegLLMOutput(logits=logits, hidden_states=hidden, image_features=features,
                            mask_logits=mask_logits, mask_scores=scores,
                            mask_rounds=rounds if round_ids is not None else None,
                            seg_embeddings=prompts, decoder_extras=extras)

    # -- construction and weights ------------------------------------------------------------

    @classmethod
    def from_config(cls, config: SegLLMConfig, tokenizer=None) -> SegLLMModel:
        """A randomly initialised model. The tiny tokenizer is built when the config asks for it."""
        if tokenizer is None and config.tokenizer == "tiny":
            tokenizer = build_tiny_tokenizer()
        if tokenizer is not None:
            config.token_ids = add_segllm_tokens(tokenizer)
            if len(tokenizer) > config.llm.vocab_size:
                config.llm.vocab_size = _round_up(len(tokenizer), 64)
        model = cls(config)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_components(cls, llava_dir: str | Path, decoder_checkpoint: str | Path | None,
                        preset: str = "segllm-7b", dtype: torch.dtype | None = None,
                        **overrides) -> SegLLMModel:
        """Build from a llava-hf directory and the decoder's original checkpoint (e.g. a
        segment-anything ``.pth``), both loaded strictly.

        The preset gives what is not in the checkpoints (LoRA, freezing, the decoder's sizes
        where its checkpoint does not tell them); the llava-hf config overrides the LLM and
        vision sizes, and the decoder's checkpoint its own sizes where it can tell them
        (``MaskDecoder.config_for_checkpoint``: e.g. any official size of the decoder).
        """
        from transformers import AutoTokenizer

        llava = load_llava(llava_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(llava_dir)
        config = SegLLMConfig.from_name(preset, **sizes_from_llava_config(llava.config), **overrides)
        config.token_ids = add_segllm_tokens(tokenizer)
        if config.token_ids["image"] != llava.config.image_token_index:
            raise CheckpointError(
                f"{llava_dir}: the tokenizer's image token id {config.token_ids['image']} differs "
                f"from the model's image_token_index {llava.config.image_token_index}")
        if len(tokenizer) > llava.config.text_config.vocab_size:
            llava.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        config.llm.vocab_size = llava.config.text_config.vocab_size
        state = _read_decoder_checkpoint(config, decoder_checkpoint)
        model = cls(config, llava=llava)
        if state is not None:
            model.decoder.load_checkpoint(state, source=str(decoder_checkpoint))
        if dtype is not None:
            model.to(dtype)
        model.tokenizer = tokenizer
        return model

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config, weights (safetensors) and tokenizer; atomically (a temporary sibling
        folder swapped in whole), with the usual 0755 / 0644 permissions."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_directory(path) as tmp:
            self.config.save(tmp / CONFIG_NAME)
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt", "segllm": "1"})
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "tokenizer")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> SegLLMModel:
        """Load what ``save_pretrained`` wrote, strictly (every key, every shape)."""
        from accelerate import init_empty_weights
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        path = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: not a segllm model directory (no {name})")
        config = SegLLMConfig.load(path / CONFIG_NAME)
        with init_empty_weights(include_buffers=False):  # parameters on meta: no random init
            model = cls(config)
        state = load_file(path / WEIGHTS_NAME, device=str(device))
        load_state_dict_strict(model, state, source=str(path / WEIGHTS_NAME), assign=True)
        model.to(device)
        if dtype is not None:
            model.to(dtype)
        model.apply_trainable()
        if (path / "tokenizer").is_dir():
            model.tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        return model

    # -- training ---------------------------------------------------------------------------

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward for the LLM and the CLIP tower (transformers'
        checkpointing, non-reentrant so frozen inputs and LoRA-only training still get
        gradients). The mask decoder is left alone: it runs once per image and its image
        encoder is frozen by default."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.llava, "activation_checkpointing_enable"):  # transformers >= 5.x name
            self.llava.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _read_decoder_checkpoint(config: SegLLMConfig, path: str | Path | None
                             ) -> dict[str, torch.Tensor] | None:
    """The decoder checkpoint's tensors (None without a path), with ``config.decoder_config``
    set to the sizes they imply; read before the model is built, so it is built to fit."""
    if path is None:
        return None
    cls = decoder_class(config.decoder)
    state = cls.read_checkpoint(path)
    config.decoder_config = cls.config_for_checkpoint(state, config.decoder_config)
    return state


def _patch_grid(config: SegLLMConfig) -> tuple[int, int]:
    """(rows, cols) of the vision tower's patch grid."""
    side = config.vision.image_size // config.vision.patch_size
    return side, side


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple

