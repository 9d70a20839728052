"""The training loop: one code path for 1 and N processes.

Per optimizer step, each process runs ``gradient_accumulation_steps`` micro-batches through
the DeepSpeed engine (forward, backward, step); the engine reduces gradients across processes
(ZeRO-2), clips, steps AdamW and the scheduler at the accumulation boundary. Logged losses are
the mean over the step's micro-batches and processes, so one process with accumulation k logs
the same numbers as k processes without accumulation.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segllm.image_check import check_record_images
from segllm.modeling.model import SegLLMModel

from . import checkpoint as ckpt
from . import run_dir
from .args import TrainConfig, check_paths
from .backend import Backend, deepspeed_config, make_backend, training_dtype
from .data import MixedConversations, StepBatches, batch_loader, count_tokens, read_validation
from .export import export_merged
from .model_setup import build_model
from .objective import compute_objective
from .optim import build_optimizer, build_scheduler
from .tracking import MetricsTracker, Progress
from .validation import per_round_ciou
from .vision_aux import VisionAuxLoss

EXPORT_DIR = "export"


@dataclass
class TrainResult:
    """What :func:`train` hands back (on every process; paths are the main process's)."""

    output_dir: Path
    steps_done: int
    losses: list[float] = field(default_factory=list)  # per optimizer step of this invocation
    checkpoint: Path | None = None
    export_dir: Path | None = None
    model: SegLLMModel | None = None  # the trained (unmerged) module, when keep_model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def micro_losses(out) -> dict[str, float]:
    """Scalars of one forward for the log (the mask loss is the decoder's weighted total:
    BCE + Dice for SAM, the set loss over every query for a query decoder)."""
    def scalar(t: torch.Tensor) -> float:
        return float(t.detach().float().item())

    losses = {"loss": scalar(out.loss), "ce_loss": scalar(out.ce_loss),
              "mask_loss": scalar(out.mask_loss), "bce_loss": scalar(out.bce_loss),
              "dice_loss": scalar(out.dice_loss), "num_masks": float(out.num_masks)}
    if out.aux_loss is not None:
        losses["aux_loss"] = scalar(out.aux_loss)
    return losses


def train(config: TrainConfig, resume: str | None = None, keep_model: bool = False,
          overwrite: bool = False) -> TrainResult:
    """Run (or continue) the training that ``config`` describes.

    ``resume``: ``None`` (a fresh run, into an absent or empty ``output_dir``; ``overwrite``
    replaces an earlier run there), ``"latest"`` or a checkpoint path (the same run only; see
    ``segllm.train.run_dir``). Bad input raises before the model is built where it can.
    """
    check_paths(config)
    plan = run_dir.plan_run(config, resume, overwrite)  # every process, before any writes
    if config.threads:
        torch.set_num_threads(config.threads)
    backend = make_backend(config)
    try:
        return _train(config, backend, plan, keep_model)
    finally:
        backend.close()


def check_images(data: MixedConversations, val_source, config: TrainConfig, show: bool) -> None:
    """Open the header of every image the run will read (training and validation records)
    before step 1; the first bad one raises ``ImageCheckError`` naming file, line and record."""
    if not config.data.check_images:
        return
    sources = [(args.path, source)
               for args, source in zip(config.data.sources, data.sources, strict=True)]
    if val_source is not None:
        sources.append((config.validation.path, val_source))
    for path, source in sources:
        check_record_images(path, source.records, source.image_root, progress=show,
                            desc=f"check images {source.name}")


def _train(config: TrainConfig, backend: Backend, plan: run_dir.RunPlan,
           keep_model: bool) -> TrainResult:
    world, rank = backend.world_size, backend.rank
    output_dir, resume_from = plan.output_dir, plan.resume_from
    seed_everything(config.seed)
    model = build_model(config.model)
    data = MixedConversations.from_args(config.data, config.seed, model.tokenizer, model.config)
    val_source = (read_validation(config.validation.path, config.validation.image_root,
                                  config.validation.max_samples, config.data.validate_records)
                  if config.validation.path else None)
    check_images(data, val_source, config, show=backend.is_main and config.logging.progress)
    vision_aux = (VisionAuxLoss.build(config.vision_aux, data.sources, model.tokenizer,
                                      model.config.vision.num_image_tokens)
                  if config.vision_aux.enabled else None)
    ds_config = deepspeed_config(config, world)
    dtype = training_dtype(ds_config)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.max_steps)
    engine = backend.prepare(model, optimizer, scheduler, ds_config)
    module: SegLLMModel = engine.module
    fingerprint = ckpt.frozen_fingerprint(module)
    global_batch = config.global_batch_size(world)
    expected = {"world_size": world, "global_batch_size": global_batch,
                "frozen_fingerprint": fingerprint}

    start_step = 0
    if resume_from is not None:
        state = ckpt.load_checkpoint(engine, backend, resume_from, expected)
        start_step = int(state["step"])
    if backend.is_main:
        run_dir.claim(plan, config)
    backend.barrier()
    tracker = MetricsTracker(output_dir, backend.is_main, config.logging.tensorboard,
                             resume_step=start_step if resume_from is not None else None)
    progress = Progress(backend.is_main and config.logging.progress, config.max_steps, start_step)

    batches = StepBatches(data, start_step, config.max_steps, rank, world,
                          config.micro_batch_size, config.gradient_accumulation_steps,
                          bucket_steps=config.data.bucket_steps)
    loader = iter(batch_loader(batches, model.config.token_ids["pad"], config.data.num_workers))
    result = TrainResult(output_dir=output_dir, steps_done=start_step)
    accumulation = config.gradient_accumulation_steps

    def trainer_state(step: int) -> dict[str, Any]:
        return {"step": step, "samples_seen": step * global_batch,
                "data_position": step * global_batch, "seed": config.seed, **expected,
                run_dir.RUN_KEY: plan.checkpoint_entry(config)}

    for step in range(start_step, config.max_steps):
        started = time.perf_counter()
        lr = float(engine.get_lr()[0])
        sums: dict[str, float] = defaultdict(float)
        tokens = 0
        data_wait = 0.0  # seconds this step spent waiting for its batches
        for _ in range(accumulation):
            waited = time.perf_counter()
            batch = next(loader).to(engine.device, dtype)
            data_wait += time.perf_counter() - waited
            out = compute_objective(module, batch, forward=engine, vision_aux=vision_aux)
            backend.backward_and_step(out.loss)
            for key, value in micro_losses(out).items():
                sums[key] += value / accumulation
            tokens += count_tokens(batch)
        stats = backend.mean_across_processes({**sums, "tokens": float(tokens)})
        elapsed = time.perf_counter() - started
        grad_norm = engine.get_global_grad_norm()
        metrics = {"step": step + 1, "lr": lr, **{k: v for k, v in stats.items() if k != "tokens"},
                   "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "samples_per_s": global_batch / elapsed,
                   "tokens_per_s": stats["tokens"] * world / elapsed,
                   "data_wait_share": data_wait / elapsed,
                   "samples_seen": (step + 1) * global_batch}
        result.losses.append(stats["loss"])
        result.steps_done = step + 1
        if backend.is_main and (step + 1) % config.logging.every == 0:
            tracker.log(metrics)
        progress.update(metrics)
        done = step + 1 == config.max_steps
        if done or (config.checkpoint.every and (step + 1) % config.checkpoint.every == 0):
            result.checkpoint = ckpt.save_checkpoint(engine, backend, output_dir, step + 1,
                                                     trainer_state(step + 1),
                                                     keep=config.checkpoint.keep)
        if val_source is not None and (done or (config.validation.every
                                                and (step + 1) % config.validation.every == 0)):
            if backend.is_main:
                tracker.log({"step": step + 1, **per_round_ciou(
                    module, val_source, config.validation.batch_size, engine.device, dtype)})
            backend.barrier()
    progress.close()
    tracker.close()
    if config.checkpoint.export and result.steps_done == config.max_steps and backend.is_main:
        result.export_dir = export_merged(module, output_dir / EXPORT_DIR,
                                          config.checkpoint.export_dtype)
    backend.barrier()
    if keep_model:
        result.model = module
    return result
