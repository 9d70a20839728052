"""``SegLLMPipeline``: a loaded model and its decoding settings; ``start(image)`` opens a chat
session, ``ask_batch`` runs one round of several sessions together."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..dtypes import resolve_dtype
from ..images import ImageLimits, InputError, Orientation, load_image
from .engine import Engine, Job, Outcome
from .generation import GenerationConfig
from .session import ChatSession, Reply, _reference_frame_pixels


class SegLLMPipeline:
    """A loaded model plus decoding settings; ``start(image)`` opens a chat session.

    Args:
        model: a ``SegLLMModel`` with its tokenizer attached.
        generation: default decoding settings (a session's ``ask`` may override them).
        limits: what images ``start`` accepts.
        reuse_cache: keep the KV cache and the decoder features between rounds (default). False
            recomputes the whole history, image features included, every round: the baseline.
    """

    def __init__(self, model, generation: GenerationConfig | None = None,
                 limits: ImageLimits | None = None, reuse_cache: bool = True):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer attached; load it with "
                             "SegLLMModel.from_pretrained or pass tokenizer= to from_config")
        self.model = _decoder_in_float32(model.eval())
        self.tokenizer = model.tokenizer
        self.config = model.config
        self.token_ids = dict(model.config.token_ids)
        self.generation = generation or GenerationConfig()
        self.limits = limits or ImageLimits()
        self.reuse_cache = reuse_cache
        self.max_length = min(model.config.max_length, model.config.llm.max_position_embeddings)
        self.engine = Engine(self.model, self.tokenizer, self.token_ids)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str | torch.dtype | None = "auto",
                        load_in_4bit: bool = False, load_in_8bit: bool = False,
                        int8_dynamic: bool = False, device: str | torch.device = "cpu",
                        **kwargs) -> SegLLMPipeline:
        """Load what ``SegLLMModel.save_pretrained`` wrote.

        ``dtype``: bf16 / fp16 / fp32 for the whole model (the compute dtype of the quantized
        layers too); ``"auto"`` (default): on the CPU bf16 where this machine runs it faster
        than fp32, else fp32 (``segllm.dtypes.default_cpu_dtype``), elsewhere the saved dtype;
        None: the saved dtype. ``load_in_4bit`` (NF4) / ``load_in_8bit`` quantize the LLM's
        linear layers through bitsandbytes; ``int8_dynamic`` through PyTorch's dynamic int8
        quantization (CPU, fp32; ``segllm.inference.dynamic_int8``); the vision tower,
        projector, lm_head, seg head and mask decoder stay in ``dtype``. ``kwargs`` go to the
        constructor.
        """
        from ..modeling.model import SegLLMModel

        if sum([load_in_4bit, load_in_8bit, int8_dynamic]) > 1:
            raise ValueError("choose one of load_in_4bit and load_in_8bit, or int8_dynamic alone")
        torch_dtype = resolve_dtype(dtype, device)
        if int8_dynamic:  # the dynamic int8 layers take fp32 weights and inputs
            if dtype not in ("auto", None) and torch_dtype != torch.float32:
                raise ValueError(f"int8_dynamic runs in fp32; dtype={dtype!r} does not apply")
            torch_dtype = torch.float32
        model = SegLLMModel.from_pretrained(path, dtype=torch_dtype, device=device)
        if int8_dynamic:
            from .dynamic_int8 import quantize_language_model_int8

            quantize_language_model_int8(model)
        if load_in_4bit or load_in_8bit:
            from ..quantization import quantize_language_model

            quantize_language_model(model, bits=4 if load_in_4bit else 8,
                                    compute_dtype=torch_dtype or torch.float32)
        return cls(model, **kwargs)

    # -- sessions ------------------------------------------------------------------------------

    def start(self, image, reuse_cache: bool | None = None,
              generation: GenerationConfig | None = None, *,
              orientation: Orientation = "exif",
              reference_frames: Sequence | None = None,
              reference_frame_tokens: torch.Tensor | None = None) -> ChatSession:
        """Open a session on ``image`` (anything ``segllm.images.load_image`` takes); the mask
        decoder's image features are computed here.

        ``orientation``: ``"exif"`` (default) for a user's photo, shown and answered as EXIF
        says; ``"stored"`` for a data-set image, whose annotations are on the stored pixels
        (what evaluation passes). Masks come back in that orientation.
        ``reference_frames``: a video's reference frames (VISA's global-local frames, in
        temporal order), given to the LLM beside ``image``, the target frame; only for a model
        that takes them (``config.video.tokens_per_frame`` > 0, ``takes_reference_frames``).
        ``reference_frame_tokens``: the same frames already encoded by
        ``encode_reference_frames`` (several sessions on one video share the work).
        """
        if reference_frames and reference_frame_tokens is not None:
            raise InputError("give a video's reference frames as images or as their tokens, "
                             "not both")
        if reference_frame_tokens is not None:
            self._check_frame_tokens(reference_frame_tokens)
        pil = load_image(image, orientation=orientation, limits=self.limits)
        frames = [load_image(f, orientation=orientation, limits=self.limits)
                  for f in reference_frames or []]
        return ChatSession(self, pil, self.reuse_cache if reuse_cache is None else reuse_cache,
                           generation or self.generation, reference_frames=frames,
                           reference_frame_tokens=reference_frame_tokens)

    def _check_frame_tokens(self, tokens: torch.Tensor) -> None:
        if not self.takes_reference_frames:
            raise InputError("reference frames were given but this model takes none "
                             "(config.video.tokens_per_frame is 0)")
        expected = (self.config.video.tokens_per_frame, self.config.llm.hidden_size)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != expected:
            raise InputError(f"reference_frame_tokens of shape {tuple(tokens.shape)}: this "
                             f"model takes [F, {expected[0]}, {expected[1]}] "
                             "(encode_reference_frames)")

    @torch.inference_mode()
    def encode_reference_frames(self, frames: Sequence, *,
                                orientation: Orientation = "exif") -> torch.Tensor:
        """A video's reference frames (anything ``load_image`` takes) -> their LLM tokens
        [F, tokens_per_frame, H], as a session given them as ``reference_frames`` computes
        them; for ``start(reference_frame_tokens=...)``."""
        images = [load_image(f, orientation=orientation, limits=self.limits) for f in frames]
        pixels = _reference_frame_pixels(self, images)
        if not len(pixels):
            return torch.zeros((0, self.config.video.tokens_per_frame,
                                self.config.llm.hidden_size))
        return self.model.reference_frame_tokens(pixels.to(self.model.device))

    def start_batch(self, images: Sequence, reuse_cache: bool | None = None,
                    generation: GenerationConfig | None = None, *,
                    orientation: Orientation = "exif") -> list[ChatSession]:
        """Open a session on each of ``images`` (as ``start``), the mask decoder's image
        encoder running once over all of them; for ``ask_batch``."""
        reuse = self.reuse_cache if reuse_cache is None else reuse_cache
        sessions = [ChatSession(self, load_image(image, orientation=orientation,
                                                 limits=self.limits),
                                reuse, generation or self.generation, encode_decoder=False)
                    for image in images]
        if reuse:
            self.decoder_features(sessions)
        return sessions

    @property
    def takes_reference_frames(self) -> bool:
        """Whether the model's LLM takes a video's reference frames."""
        return self.config.video.tokens_per_frame > 0

    def ask_batch(self, requests: Sequence[tuple[ChatSession, str]],
                  generation: GenerationConfig | None = None,
                  ref_masks: Sequence[Mapping[int, Sequence[np.ndarray]] | None] | None = None,
                  regions: Sequence[Sequence[np.ndarray] | None] | None = None) -> list[Reply]:
        """One round for several sessions in one batched run (prefill and decode together; the
        vision tower once for all the new images and mask crops, the decoder's image encoder
        once for the images whose features no session keeps yet).

        Every request is validated first: if one is refused, ``InputError`` names it and no
        session changes. Results match asking each session alone (up to float rounding).
        ``ref_masks`` and ``regions`` hold one entry per request (see ``ChatSession.ask``).
        """
        sessions = [s for s, _ in requests]
        if len({id(s) for s in sessions}) != len(sessions):
            raise InputError("a session may appear only once in a batch")
        for s in sessions:
            if s.pipeline is not self:
                raise InputError("every session of a batch must come from this pipeline")
        refs = list(ref_masks) if ref_masks is not None else [None] * len(requests)
        areas = list(regions) if regions is not None else [None] * len(requests)
        jobs = []
        for i, ((session, text), ref, area) in enumerate(zip(requests, refs, areas, strict=True)):
            try:
                jobs.append(session.prepare(text, ref_masks=ref, answer=None,
                                            generation=generation or session.generation,
                                             regions=area))
            except InputError as err:
                raise type(err)(f"request {i}: {err}") from err
        features = self.decoder_features(sessions)  # images not encoded yet: in one call
        outcomes = self.run_jobs(jobs)
        return [job.session.commit(job, out, features=feats)
                for job, out, feats in zip(jobs, outcomes, features, strict=True)]

    def answer_token_ids(self, answer: str) -> list[int]:
        """An answer as the template encodes it: `` {answer}`` then ``</s>``."""
        ids = self.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        return list(ids) + [self.token_ids["eos"]]

    def run_jobs(self, jobs: list[Job]) -> list[Outcome]:
        """Run prepared jobs (``ChatSession.prepare``) through the engine, together."""
        return self.engine.run(jobs)

    # -- masks ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decoder_features(self, sessions: Sequence[ChatSession]) -> list[torch.Tensor]:
        """The mask decoder's image features [1, ...] of each session: kept ones as they are,
        the others computed together, one image-encoder call per input shape (and kept by
        the sessions that keep their cache)."""
        pending: dict[tuple[int, ...], list[ChatSession]] = {}
        for session in sessions:
            if session.decoder_input is not None:
                pending.setdefault(tuple(session.decoder_input.shape), []).append(session)
        computed = {}
        for group in pending.values():
            pixels = torch.stack([s.decoder_input for s in group]).to(self.model.device)
            encoded = self.model.encode_images_for_decoder(pixels)
            for session, features in zip(group, encoded, strict=True):
                computed[id(session)] = features[None].clone()  # its own storage, not the batch's
                session.keep_decoder_features(computed[id(session)])
        return [computed[id(s)] if id(s) in computed else s.decoder_features() for s in sessions]

    @torch.inference_mode()
    def decode_masks(self, states: list[torch.Tensor], *, features: torch.Tensor,
                     input_size: tuple[int, int], original_size: tuple[int, int],
                     ref_mask: np.ndarray | None = None) -> tuple[list[np.ndarray], list[float]]:
        """Binary masks and scores for a round's [SEG] states; ``ref_mask`` [H, W] is the union
        of the masks the question references (every [SEG] of the round shares it)."""
        if not states:
            return [], []
        refs = None
        if ref_mask is not None:
            refs = torch.from_numpy(ref_mask).to(features.device).float()[None].expand(
                len(states), -1, -1)
        logits, scores, _ = self.model.decode_masks(torch.stack(states), features, input_size,
                                                    original_size, ref_masks=refs)
        binary = (logits.float() > self.model.decoder.mask_threshold).cpu().numpy()
        return [m for m in binary], [float(s) for s in scores.float().cpu()]


def _decoder_in_float32(model):
    """Keep the mask decoder in float32 when the rest is bf16 / fp16, where it asks for that
    (``MaskDecoder.keep_float32``: mask logits near the threshold are the part most sensitive
    to rounding). The decoder casts prompts to its image features' dtype.
    """
    decoder = model.decoder
    if decoder.keep_float32 and any(p.dtype != torch.float32 for p in decoder.parameters()):
        decoder.float()
    return model
