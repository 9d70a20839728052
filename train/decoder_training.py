"""Multi-task training of the query-meld decoder on its own, on unified (c, b, m) records.

``segllm train --config configs/train/querymeld-synthetic.yaml`` runs this when the recipe
says ``kind: decoder`` (``train/cli.py``): QueryMeldNet's recipe without the LLM. Each step
takes ``batch_size`` images from the seeded mixture of unified sources
(``train/unified_data.py``), encodes them once, encodes each image's texts with the text
encoder (``segllm/modeling/decoders/query/text.py``), runs the meld decoder per image with its
texts as classes and trains on the set loss (Hungarian matching over all queries of each
image, deep supervision; ``QueryMeldDecoder.text_loss``). One process, plain torch AdamW
(``train/optim.py``, whose ``schedule: step`` is the paper's decay at 0.9 and 0.95 of the
steps); no DeepSpeed. ``checkpoint.every`` writes exactly resumable checkpoints
(``train/decoder_checkpoint.py``); ``segllm train --config ... --resume [PATH]`` continues from
the newest one (or PATH) as if the run had never stopped.

Evaluation on a held-out unified file (``evaluation.path``): mask AP (pycocotools, through
``segllm.eval.segmentation_metrics.coco_ap``) of the top-scoring (query, text) pairs of each closed-set
image, and the query-type statistic (``query/meld.py``: the share of thing objects predicted
by conditional queries and of stuff objects by learnable ones; objects without ``isthing``
are left out of it).

Outputs in ``output_dir`` (each written atomically): ``decoder.safetensors`` (the decoder's
state dict, loadable as SegLLM's ``decoder_checkpoint`` with ``decoder: querymeld`` and the
same sizes), ``text_encoder.safetensors`` (a trainable text encoder's), ``querymeld.json``
(decoder config, text encoder, vocabularies, final metrics) and ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from segllm.config import PRESETS, SegLLMConfig
from segllm.files import write_bytes_atomic, write_text_atomic
from segllm.image_check import check_record_images
from segllm.masks import encode_rle
from segllm.modeling.decoders import build_decoder
from segllm.modeling.decoders.query.meld import matched_query_kinds, query_type_shares
from segllm.modeling.decoders.query.text import TextEncoderArgs, build_text_encoder
from segllm.modeling.decoders.querymeld import QueryMeldDecoder
from segllm.typed_config import ConfigError, KeyPath, build_checked

from .args import DataArgs, LoggingArgs, OptimArgs, TrainConfigError, apply_override
from .args import check_optimizer_values as check_optim
from .checkpoint import PREFIX, TMP_PREFIX
from .decoder_checkpoint import (
    DecoderCheckpointArgs,
    load_decoder_checkpoint,
    resolve_resume,
    save_decoder_checkpoint,
)
from .optim import build_optimizer, build_scheduler
from .tracking import MetricsTracker
from .trainer import seed_everything
from .unified_data import MixedUnified, UnifiedExample, evaluation_examples

OUTPUTS = ("decoder.safetensors", "text_encoder.safetensors", "querymeld.json", "metrics.jsonl")
"""The run's outputs; with its checkpoint folders, what ``--overwrite`` may remove."""


@dataclass
class DecoderModelArgs:
    """The decoder trained: a preset's ``decoder_config`` (its decoder must be ``querymeld``)
    with ``overrides`` on its keys; ``prompt_dim`` follows the text encoder."""

    preset: str = "querymeld-tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    freeze_backbone: bool = False  # keep the ResNet as initialised (pretrained: set it true)


@dataclass
class DecoderEvalArgs:
    path: str | None = None  # a held-out unified JSONL file
    image_root: str | None = None
    every: int = 0  # steps between evaluations; 0: only at the end (when path is set)
    max_images: int = 64
    top_k: int = 100  # predictions per image scored by AP (COCO's 100)


@dataclass
class DecoderTrainConfig:
    kind: Literal["decoder"] = "decoder"
    output_dir: str = "runs/querymeld"
    max_steps: int = 100
    batch_size: int = 2  # images per step
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default
    max_grad_norm: float = 1.0  # 0 disables clipping
    decoder: DecoderModelArgs = field(default_factory=DecoderModelArgs)
    text: TextEncoderArgs = field(default_factory=TextEncoderArgs)
    data: DataArgs = field(default_factory=DataArgs)
    evaluation: DecoderEvalArgs = field(default_factory=DecoderEvalArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    logging: LoggingArgs = field(default_factory=LoggingArgs)
    checkpoint: DecoderCheckpointArgs = field(default_factory=DecoderCheckpointArgs)
    source_file: str | None = None


@dataclass
class DecoderTrainResult:
    output_dir: Path
    losses: list[float]
    metrics: dict[str, Any]
    decoder: QueryMeldDecoder
    text_encoder: torch.nn.Module


# --------------------------------------------------------------------------- config


def is_decoder_recipe(path: str | Path) -> bool:
    """Whether a training YAML is a decoder recipe (top-level ``kind: decoder``)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # the conversation loader reports it
    return isinstance(data, dict) and data.get("kind") == "decoder"


def load_decoder_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                        ) -> DecoderTrainConfig:
    """A decoder recipe with ``key=value`` overrides, every key and type checked."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        apply_override(data, item, where=str(path))
    config = decoder_config_from_dict(data, str(path))
    config.source_file = str(path)
    return config


def decoder_config_from_dict(data: dict[str, Any], where: str = "config") -> DecoderTrainConfig:
    try:
        config = build_checked(DecoderTrainConfig, data, KeyPath(where))
    except ConfigError as err:
        raise TrainConfigError(str(err)) from None
    for name in ("max_steps", "batch_size"):
        if getattr(config, name) < 1:
            raise TrainConfigError(f"{where}: {name} must be >= 1, got {getattr(config, name)}")
    for name in ("every", "keep"):
        if getattr(config.checkpoint, name) < 0:
            raise TrainConfigError(f"{where}: checkpoint.{name} must be >= 0, got "
                                   f"{getattr(config.checkpoint, name)}")
    if not config.data.sources:
        raise TrainConfigError(f"{where}: data.sources is empty")
    if config.decoder.preset not in PRESETS:
        raise TrainConfigError(f"{where}: decoder.preset: unknown preset "
                               f"{config.decoder.preset!r}")
    if not (math.isfinite(config.max_grad_norm) and config.max_grad_norm >= 0):
        raise TrainConfigError(f"{where}: max_grad_norm must be >= 0, got {config.max_grad_norm}")
    check_optim(config.optim, where)
    return config


def check_decoder_paths(config: DecoderTrainConfig) -> None:
    """Every file the run reads exists (the conversation trainer's check, same messages)."""
    where = config.source_file or "config"
    wanted = [(f"data.sources.{i}.path", s.path) for i, s in enumerate(config.data.sources)]
    wanted += [(f"data.sources.{i}.image_root", s.image_root)
               for i, s in enumerate(config.data.sources) if s.image_root]
    if config.evaluation.path:
        wanted.append(("evaluation.path", config.evaluation.path))
    for key, value in wanted:
        if not Path(value).exists():
            raise TrainConfigError(f"{where}: {key}: {value} does not exist")


def is_own_output(name: str) -> bool:
    return name in OUTPUTS or name.startswith((PREFIX, TMP_PREFIX + PREFIX))


def prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    """A fresh run needs an absent or empty folder; ``overwrite`` removes this trainer's own
    outputs and checkpoints (and refuses a folder holding anything else)."""
    if not output_dir.exists():
        output_dir.mkdir(parents=True)
        return
    entries = sorted(p.name for p in output_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ValueError(f"output_dir {output_dir} holds an earlier run ({', '.join(entries[:4])}"
                         "); pass --resume to continue it, --overwrite to replace it, or choose "
                         "another folder")
    foreign = [e for e in entries if not is_own_output(e)]
    if foreign:
        raise ValueError(f"output_dir {output_dir} holds {', '.join(foreign[:4])}, which decoder "
                         "training does not write; --overwrite removes only its own outputs")
    for name in entries:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def build_parts(config: DecoderTrainConfig) -> tuple[QueryMeldDecoder, torch.nn.Module]:
    """The text encoder, then the decoder of ``decoder.preset`` with ``prompt_dim`` = the text
    width (an override that says otherwise is an error)."""
    named = PRESETS[config.decoder.preset].get("decoder", SegLLMConfig.decoder)
    if named != "querymeld":
        raise TrainConfigError(f"decoder.preset {config.decoder.preset!r} has decoder "
                               f"{named!r}; decoder training needs 'querymeld'")
    text_encoder = build_text_encoder(config.text)
    overrides = dict(config.decoder.overrides)
    if overrides.setdefault("prompt_dim", text_encoder.dim) != text_encoder.dim:
        raise TrainConfigError(f"decoder.overrides.prompt_dim {overrides['prompt_dim']} differs "
                               f"from the text encoder's width {text_encoder.dim}")
    model_config = SegLLMConfig.from_name(config.decoder.preset, decoder_config=overrides,
                                          mask_aware_decoding=False)
    decoder = build_decoder(model_config)
    decoder.requires_grad_(True)
    if config.decoder.freeze_backbone:
        decoder.backbone.requires_grad_(False)
    return decoder, text_encoder


# --------------------------------------------------------------------------- steps


def embed_texts(text_encoder: torch.nn.Module, examples: list[UnifiedExample]
                ) -> list[torch.Tensor]:
    """Each image's text embeddings; a text list shared by several images is encoded once."""
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    out = []
    for ex in examples:
        key = tuple(ex.texts)
        if key not in cache:
            cache[key] = text_encoder.encode(list(key))
        out.append(cache[key])
    return out


def forward(decoder: QueryMeldDecoder, text_encoder: torch.nn.Module,
            examples: list[UnifiedExample]):
    features = decoder.encode_image(torch.stack([ex.pixels for ex in examples]))
    return decoder.decode_texts(features, embed_texts(text_encoder, examples))


def train_step(decoder: QueryMeldDecoder, text_encoder: torch.nn.Module,
               examples: list[UnifiedExample], optimizer, scheduler, max_grad_norm: float,
               trained: list[torch.nn.Parameter]) -> dict[str, float]:
    outputs = forward(decoder, text_encoder, examples)
    loss, parts = decoder.text_loss(outputs, [ex.target for ex in examples],
                                    [ex.has_masks for ex in examples])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (torch.nn.utils.clip_grad_norm_(trained, max_grad_norm) if max_grad_norm
                 else None)
    optimizer.step()
    scheduler.step()
    stats = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
    if grad_norm is not None:
        stats["grad_norm"] = float(grad_norm)
    return stats


@torch.no_grad()
def evaluate(decoder: QueryMeldDecoder, text_encoder: torch.nn.Module,
             examples: list[UnifiedExample], top_k: int = 100) -> dict[str, Any]:
    """Mask AP of the ``top_k`` best (query, text) pairs per image
    (``QueryMeldDecoder.instances``), and the query-type statistic."""
    from segllm.eval.segmentation_metrics import coco_ap

    was_training = decoder.training
    decoder.eval()
    gt_images, predictions, kinds, things = [], {}, [], []
    for ex in examples:
        (outputs,) = forward(decoder, text_encoder, [ex])
        gt_images.append({"id": ex.record_id, "size": list(ex.original_size),
                          "segments": [{"category": a["text"], "rle": a["rle"]}
                                       for a in ex.annotations]})
        predictions[ex.record_id] = [
            {"category": ex.texts[inst.text_index], "score": inst.score,
             "rle": encode_rle(inst.mask.numpy().astype(np.uint8))}
            for inst in decoder.instances(outputs, ex.input_size, ex.original_size, top_k=top_k)]
        (matched,) = matched_query_kinds(outputs, [ex.target], decoder.config.loss)
        for kind, isthing in zip(matched.tolist(), ex.isthing, strict=True):
            if isthing is not None:
                kinds.append(kind)
                things.append(isthing)
    decoder.train(was_training)
    ap = coco_ap(gt_images, predictions, iou_type="segm")
    shares = query_type_shares(kinds, things)
    return {"mask_ap": ap["ap"], "mask_ap50": ap["ap50"], "mask_ap75": ap["ap75"],
            **{f"query_type/{k}": v for k, v in dataclasses.asdict(shares).items()}}


def fit_with_frozen_backbone(decoder: QueryMeldDecoder, text_encoder: torch.nn.Module,
                             examples: list[UnifiedExample], *, steps: int, lr: float,
                             max_grad_norm: float = 1.0) -> list[float]:
    """Train everything but the backbone for ``steps`` steps, one example a step in order
    (cycling), with the backbone's features computed once per example: the short runs of the
    tests and the strategy benchmark, which a frozen backbone makes several times cheaper.
    Returns the losses."""
    decoder.backbone.requires_grad_(False)
    with torch.no_grad():
        features = [decoder.backbone(ex.pixels[None]) for ex in examples]
    trained = [p for p in [*decoder.parameters(), *text_encoder.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        example = examples[step % len(examples)]
        memory, _, mask_features = decoder.pixel_decoder(features[step % len(examples)])
        packed = torch.cat([memory.flatten(1), mask_features.flatten(1)], dim=1)
        outputs = decoder.decode_texts(packed, embed_texts(text_encoder, [example]))
        loss, _ = decoder.text_loss(outputs, [example.target], [example.has_masks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# --------------------------------------------------------------------------- the run


def write_outputs(output_dir: Path, decoder: QueryMeldDecoder, text_encoder: torch.nn.Module,
                  config: DecoderTrainConfig, data: MixedUnified, metrics: dict[str, Any]) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in decoder.state_dict().items()}
    write_bytes_atomic(output_dir / "decoder.safetensors", save(state))
    if any(p.requires_grad for p in text_encoder.parameters()):
        text_state = {k: v.detach().contiguous() for k, v in text_encoder.state_dict().items()}
        write_bytes_atomic(output_dir / "text_encoder.safetensors", save(text_state))
    summary = {"decoder": "querymeld", "decoder_config": dataclasses.asdict(decoder.config),
               "text_encoder": {**dataclasses.asdict(config.text), "name": text_encoder.name},
               "vocabularies": {s.name: s.vocabulary for s in data.sources},
               "steps": config.max_steps, "metrics": metrics}
    write_text_atomic(output_dir / "querymeld.json",
                      json.dumps(summary, indent=2, default=float) + "\n")


def train_decoder(config: DecoderTrainConfig, *, overwrite: bool = False,
                  resume: str | None = None, log: bool = True) -> DecoderTrainResult:
    """Run the decoder training ``config`` describes (see the module docstring); ``resume``:
    ``"latest"`` or a checkpoint path, as ``segllm train --resume``."""
    check_decoder_paths(config)
    output_dir = Path(config.output_dir)
    if resume is not None and overwrite:
        raise ValueError("--resume continues the run in output_dir and --overwrite replaces it: "
                         "give one of them")
    resume_from = resolve_resume(resume, output_dir)
    if resume_from is None:
        if resume is not None and output_dir.is_dir() and any(output_dir.iterdir()):
            raise ValueError(f"output_dir {output_dir} holds no checkpoint to resume from; "
                             "pass --overwrite to start afresh")
        prepare_output_dir(output_dir, overwrite)  # "latest" in an empty folder: a fresh run
    elif resume_from.parent.resolve() != output_dir.resolve():
        prepare_output_dir(output_dir, overwrite=False)  # continued elsewhere: a fresh folder
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    decoder, text_encoder = build_parts(config)
    data = MixedUnified(config.data, config.seed, QueryMeldDecoder, decoder.config)
    if config.data.check_images:  # every image opened before step 1 (segllm.image_check)
        for source in data.sources:
            check_record_images(source.path, source.records, source.image_root,
                                desc=f"check images {source.name}")
    held_out = (evaluation_examples(config.evaluation.path, config.evaluation.image_root,
                                    config.evaluation.max_images, QueryMeldDecoder,
                                    decoder.config, seed=config.seed)
                if config.evaluation.path else None)
    module = torch.nn.ModuleDict({"decoder": decoder, "text": text_encoder})
    optimizer = build_optimizer(module, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.max_steps)
    trained = [p for p in module.parameters() if p.requires_grad]
    saved = {"decoder": decoder, **({"text": text_encoder} if any(
        p.requires_grad for p in text_encoder.parameters()) else {})}
    first_step, last_eval = 0, {}
    if resume_from is not None:
        state = load_decoder_checkpoint(resume_from, modules=saved, optimizer=optimizer,
                                        scheduler=scheduler, config=config)
        first_step, last_eval = state["step"], state.get("last_eval") or {}
        if first_step >= config.max_steps:
            raise ValueError(f"checkpoint {resume_from} is at step {first_step}; raise max_steps "
                             f"(now {config.max_steps}) to train on")
    tracker = MetricsTracker(output_dir, enabled=True, tensorboard=config.logging.tensorboard,
                             resume_step=first_step if resume_from is not None else None)
    losses = []
    every, checkpoint_every = config.evaluation.every, config.checkpoint.every
    for step in range(first_step, config.max_steps):
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        stats = train_step(decoder, text_encoder, data.batch(step, config.batch_size),
                           optimizer, scheduler, config.max_grad_norm, trained)
        losses.append(stats["loss"])
        metrics = {"step": step + 1, "lr": lr, **stats,
                   "images_per_s": config.batch_size / (time.perf_counter() - started)}
        done = step + 1 == config.max_steps
        if held_out is not None and (done or (every and (step + 1) % every == 0)):
            last_eval = evaluate(decoder, text_encoder, held_out, config.evaluation.top_k)
            metrics.update(last_eval)
        if done or (step + 1) % config.logging.every == 0:
            tracker.log(metrics)
            if log and config.logging.progress:
                shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
                print(f"step {step + 1}/{config.max_steps} {shown}", flush=True)
        if checkpoint_every and (done or (step + 1) % checkpoint_every == 0):
            save_decoder_checkpoint(output_dir, step + 1, modules=saved, optimizer=optimizer,
                                    scheduler=scheduler, config=config, last_eval=last_eval,
                                    keep=config.checkpoint.keep)
    tracker.close()
    write_outputs(output_dir, decoder, text_encoder, config, data, last_eval)
    return DecoderTrainResult(output_dir=output_dir, losses=losses, metrics=last_eval,
                              decoder=decoder, text_encoder=text_encoder)


def run_decoder_recipe(path: str, overrides: list[str], *, resume: str | None,
                       overwrite: bool) -> DecoderTrainResult:
    """``segllm train`` for a ``kind: decoder`` recipe."""
    config = load_decoder_config(path, overrides)
    return train_decoder(config, overwrite=overwrite, resume=resume)


__all__ = ["DecoderTrainConfig", "evaluate", "fit_with_frozen_backbone", "is_decoder_recipe",
           "load_decoder_config", "run_decoder_recipe", "train_decoder"]
