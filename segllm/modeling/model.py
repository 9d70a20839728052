"""SegLLM: LLaVA + [SEG] seg head + mask decoder + mask encoder.

Flow of one forward (see DESIGN.md section 1)::

    token embeddings ── image tokens <- projector(CLIP patches)
                     └─ <mask_crop> <- projector(CLIP CLS of masked crop), <mask_box> <- Linear(4,H)
    LLM (Llama) ── last hidden state at every position whose *next* token is [SEG]
                └─ seg head -> prompt embeddings -> SAM (image features once per image) -> masks

Positions are found from token ids after placeholder expansion; nothing assumes an offset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from ..batching import SegBatch
from ..config import SegLLMConfig
from ..tokenizer import add_segllm_tokens, build_tiny_tokenizer
from .decoders.sam import SAMDecoder
from .llava import build_llava_config, cls_tokens, image_tokens, load_llava, sizes_from_llava_config
from .loading import CheckpointError, load_state_dict_strict
from .lora import add_lora, is_lora_parameter
from .losses import language_model_loss, mask_losses
from .mask_encoder import MaskEncoder
from .seg_head import SegHead

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "segllm_config.json"


@dataclass
class SegLLMOutput:
    """What ``SegLLMModel.forward`` returns. Per-sample lists follow the batch order."""

    loss: torch.Tensor | None
    ce_loss: torch.Tensor | None
    bce_loss: torch.Tensor | None
    dice_loss: torch.Tensor | None
    num_masks: int
    logits: torch.Tensor  # [B, L, V]
    mask_logits: list[torch.Tensor]  # per sample [n_i, H, W] at the original size
    mask_scores: list[torch.Tensor]  # per sample [n_i] predicted IoU
    mask_rounds: list[torch.Tensor]  # per sample [n_i] round of each mask
    past_key_values: object = None
    seg_embeddings: list[torch.Tensor] = field(default_factory=list)  # per sample [n_i, T, D]

    def masks_by_round(self, sample: int, num_rounds: int) -> list[list[torch.Tensor]]:
        """Mask logits of one sample grouped by round: ``[round][k] -> [H, W]``."""
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
        if config.decoder != "sam":
            raise ValueError(f"unknown mask decoder {config.decoder!r}; known: ['sam']")
        self.config = config
        self.llava = llava if llava is not None else LlavaForConditionalGeneration(
            build_llava_config(config))
        hidden = config.llm.hidden_size
        self.decoder = SAMDecoder(config.sam)
        self.seg_head = SegHead(hidden, self.decoder.prompt_dim, config.seg_head)
        self.mask_encoder = MaskEncoder(hidden) if config.mask_encoder.enabled else None
        if config.trainable.llm == "lora":
            add_lora(self.language_model, config.lora)
        self.tokenizer = None  # attached by the constructors; saved with the weights
        self.apply_trainable()

    # -- parts ------------------------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def device(self) -> torch.device:
        return self.llava.lm_head.weight.device

    def components(self) -> dict[str, nn.Module]:
        """Named components, for parameter reports."""
        parts = {
            "vision_tower": self.llava.model.vision_tower,
            "projector": self.llava.model.multi_modal_projector,
            "language_model": self.language_model,
            "lm_head": self.llava.lm_head,
            "seg_head": self.seg_head,
            "sam_image_encoder": self.decoder.sam.image_encoder,
            "sam_prompt_encoder": self.decoder.sam.prompt_encoder,
            "sam_mask_decoder": self.decoder.sam.mask_decoder,
        }
        if self.mask_encoder is not None:
            parts["mask_encoder_box"] = self.mask_encoder
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
        self.decoder.sam.image_encoder.requires_grad_(t.sam_image_encoder)
        self.decoder.sam.prompt_encoder.requires_grad_(t.sam_prompt_encoder)
        self.decoder.sam.mask_decoder.requires_grad_(t.sam_mask_decoder)
        # No loss supervises SAM's predicted IoU, so its head would be "trainable" without ever
        # receiving a gradient; keep it as loaded (its scores stay SAM's own estimate).
        self.decoder.sam.mask_decoder.iou_prediction_head.requires_grad_(False)

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
                     sample_ids: list[str] | None = None) -> torch.Tensor:
        """Token embeddings with image and mask-encoder tokens written into their slots.

        Args:
            input_ids: [B, L].
            pixel_values: [B, 3, S, S] CLIP input, when the sequence holds image tokens.
            ref_pixel_values, ref_boxes: [R, 3, S, S] crops and [R, 4] boxes, in slot order.
            ref_rounds: per sample, the round of each slot (to name the round in errors).
            round_ids: [B, L] round of each token (to name the round in errors).
            sample_ids: names for error messages.
        Returns:
            [B, L, H] input embeddings.
        """
        ids = self.config.token_ids
        names = sample_ids or [str(i) for i in range(input_ids.shape[0])]
        embeds = self.language_model.embed_tokens(input_ids)
        image_slots = input_ids == ids["image"]
        if pixel_values is not None or image_slots.any():
            embeds = self._scatter_image(embeds, image_slots, pixel_values, names)
        crop_slots = input_ids == ids["mask_crop"]
        box_slots = input_ids == ids["mask_box"]
        if crop_slots.any() or box_slots.any() or (ref_boxes is not None and len(ref_boxes)):
            embeds = self._scatter_refs(embeds, crop_slots, box_slots, ref_pixel_values,
                                        ref_boxes, ref_rounds, round_ids, names)
        elif self._trains(self.mask_encoder):
            # No reference in this batch: still use the box head (times zero) at the point
            # where real box tokens enter, so every process of a ZeRO-2 run produces the same
            # gradients in the same backward order (otherwise gloo/NCCL reductions mismatch).
            embeds = embeds + 0.0 * self.mask_encoder.box_proj(embeds.new_zeros(1, 4)).sum()
        return embeds

    @staticmethod
    def _trains(module: nn.Module | None) -> bool:
        return (module is not None and torch.is_grad_enabled()
                and any(p.requires_grad for p in module.parameters()))

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

    def encode_images_for_decoder(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S', S'] -> SAM image features; compute once per image and keep them."""
        dtype = next(self.decoder.sam.image_encoder.parameters()).dtype
        return self.decoder.encode_image(sam_pixel_values.to(dtype))

    def decode_masks(self, hidden: torch.Tensor, image_features: torch.Tensor,
                     input_size: tuple[int, int], original_size: tuple[int, int]):
        """[S, H] [SEG] states of one image -> (mask logits [S, H, W], scores [S], prompts)."""
        prompts = self.seg_head(hidden)
        logits, scores = self.decoder.decode(image_features, prompts, input_size, original_size)
        return logits, scores, prompts

    def forward(self, batch: SegBatch, compute_loss: bool = True) -> SegLLMOutput:
        """One teacher-forced pass over a batch of multi-round conversations."""
        embeds = self.embed_inputs(batch.input_ids, batch.pixel_values, batch.ref_pixel_values,
                                   batch.ref_boxes, batch.ref_rounds, batch.round_ids,
                                   batch.sample_ids)
        out = self.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                  use_cache=False)
        hidden = out.last_hidden_state
        logits = self.llava.lm_head(hidden)
        rows, cols = self.seg_positions(batch.input_ids)
        self._check_seg_counts(batch, rows, cols)
        features = self.encode_images_for_decoder(batch.sam_pixel_values)
        mask_logits, scores, prompts, rounds = [], [], [], []
        for i in range(batch.input_ids.shape[0]):
            sel = rows == i
            lg, sc, pr = self.decode_masks(hidden[i, cols[sel]], features[i:i + 1],
                                           batch.sam_input_sizes[i], batch.original_sizes[i])
            mask_logits.append(lg)
            scores.append(sc)
            prompts.append(pr)
            rounds.append(batch.round_ids[i, cols[sel] + 1])
        loss = ce = bce = dice = None
        n_masks = sum(m.shape[0] for m in mask_logits)
        if compute_loss:
            w = self.config.loss
            ce = language_model_loss(logits, batch.labels)
            bce, dice, n_masks = mask_losses(mask_logits, [t.to(hidden.device)
                                                           for t in batch.target_masks])
            loss = w.ce_weight * ce + w.bce_weight * bce + w.dice_weight * dice
            if n_masks == 0:
                loss = loss + self._unused_mask_path(hidden, features, batch)
        return SegLLMOutput(loss=loss, ce_loss=ce, bce_loss=bce, dice_loss=dice,
                            num_masks=n_masks, logits=logits, mask_logits=mask_logits,
                            mask_scores=scores, mask_rounds=rounds, seg_embeddings=prompts)

    def _unused_mask_path(self, hidden: torch.Tensor, features: torch.Tensor,
                          batch: SegBatch) -> torch.Tensor:
        """Zero times one decoded mask, for a batch without any [SEG]: the seg head and a
        trainable decoder still get (zero) gradients, as ZeRO-2 needs on every process."""
        if not (self._trains(self.seg_head) or self._trains(self.decoder)):
            return hidden.new_zeros(())
        logits, scores, _ = self.decode_masks(hidden[0, :1], features[:1],
                                              batch.sam_input_sizes[0], batch.original_sizes[0])
        return 0.0 * (logits.sum() + scores.sum()).float()

    def _check_seg_counts(self, batch: SegBatch, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """The number of [SEG] tokens must equal the number of target masks, round by round."""
        for i, name in enumerate(batch.sample_ids):
            n_rounds = int(batch.round_ids[i].max()) + 1
            seg_rounds = batch.round_ids[i, cols[rows == i] + 1]
            have = torch.bincount(seg_rounds, minlength=n_rounds).tolist()
            want = torch.bincount(batch.target_rounds[i].to(seg_rounds.device),
                                  minlength=n_rounds).tolist()
            for r, (a, b) in enumerate(zip(have, want, strict=False)):
                if a != b:
                    raise ValueError(f"sample {name!r} round {r}: {a} [SEG] token(s) in the "
                                     f"sequence but {b} target mask(s)")
            if len(have) != len(want):
                r = min(len(have), len(want))
                raise ValueError(f"sample {name!r} round {r}: targets given for a round that is "
                                 "not in the sequence")

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
    def from_components(cls, llava_dir: str | Path, sam_checkpoint: str | Path | None,
                        preset: str = "segllm-7b", dtype: torch.dtype | None = None,
                        **overrides) -> SegLLMModel:
        """Build from a llava-hf directory and an original SAM ``.pth``, both loaded strictly.

        The preset gives what is not in the checkpoints (decoder sizes, LoRA, freezing); the
        llava-hf config overrides the LLM and vision sizes.
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
        model = cls(config, llava=llava)
        if sam_checkpoint is not None:
            model.decoder.load_sam_checkpoint(sam_checkpoint)
        if dtype is not None:
            model.to(dtype)
        model.tokenizer = tokenizer
        return model

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config, weights (safetensors) and tokenizer; atomically (temp dir, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.config.save(tmp / CONFIG_NAME)
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt", "segllm": "1"})
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / "tokenizer")
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
        gradients). SAM is left alone: it runs once per image and is frozen by default."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.llava, "activation_checkpointing_enable"):  # transformers >= 5.x name
            self.llava.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with as small a window as possible."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)

