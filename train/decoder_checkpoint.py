"""Atomic, exactly resumable checkpoints of decoder-only training (``kind: decoder``).

Layout of ``output_dir/checkpoint-0000040/``::

    weights.safetensors   the decoder's state (``decoder.`` keys) and a trainable text
                          encoder's (``text.`` keys)
    optimizer.pt          the optimizer's and the scheduler's state dicts (tensors, numbers)
    rng_state.pt          python, numpy and torch generator states (``train/checkpoint.py``)
    trainer_state.json    the step, the defining config, the last evaluation; written last

As in ``train/checkpoint.py`` a checkpoint is written into ``.tmp-checkpoint-...`` and renamed,
so a folder without the prefix is complete. The data order is a pure function of the seed and
the step (``MixedUnified.batch``), so the step alone says where the data resumes. Everything is
read back with ``weights_only=True``: nothing in a checkpoint can run code.

A resume must be the same run: the config fields that define what is trained (all but
:data:`RESUMABLE_FIELDS`) must equal the checkpoint's; a difference is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from segllm.files import write_bytes_atomic, write_text_atomic

from .checkpoint import (
    STATE_NAME,
    TMP_PREFIX,
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    load_rng_file,
    prune_checkpoints,
    read_trainer_state,
    rng_state,
    set_rng_state,
)
from .run_dir import config_differences, defining_config

WEIGHTS_NAME = "weights.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
RNG_NAME = "rng_state.pt"

RESUMABLE_FIELDS = ("output_dir", "source_file", "max_steps", "threads", "data.num_workers",
                    "data.validate_records", "data.check_images", "evaluation", "checkpoint",
                    "logging")
"""Decoder-recipe fields that may differ between a run and its resumption (dotted paths)."""


@dataclasses.dataclass
class DecoderCheckpointArgs:
    every: int = 0  # steps between checkpoints; 0: none (the final outputs are still written)
    keep: int = 2  # newest complete checkpoints kept; 0 keeps all


def run_config(config) -> dict[str, Any]:
    """The defining fields of a ``DecoderTrainConfig``, as JSON reads them back."""
    as_json = json.loads(json.dumps(dataclasses.asdict(config)))
    return defining_config(as_json, RESUMABLE_FIELDS)


def save_decoder_checkpoint(output_dir: Path, step: int, *, modules: dict[str, torch.nn.Module],
                            optimizer, scheduler, config, last_eval: dict[str, Any],
                            keep: int) -> Path:
    """Write checkpoint ``step`` atomically and prune to the ``keep`` newest; return its path."""
    from safetensors.torch import save

    final = output_dir / checkpoint_name(step)
    tmp = output_dir / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
    tmp.mkdir(parents=True)
    weights = {f"{name}.{key}": value.detach().contiguous()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    write_bytes_atomic(tmp / WEIGHTS_NAME, save(weights))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp / OPTIMIZER_NAME)
    torch.save(rng_state(), tmp / RNG_NAME)
    state = {"step": step, "config": run_config(config), "last_eval": last_eval}
    write_text_atomic(tmp / STATE_NAME, json.dumps(state, indent=2, default=float) + "\n")
    if final.exists():  # a re-run of the same step: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_checkpoints(output_dir, keep)
    return final


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """``None``: a fresh run; ``"latest"``: the newest complete checkpoint in ``output_dir``
    (a fresh run when there is none); a path: that checkpoint, which must be complete."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    read_trainer_state(path)  # raises, naming the path, when incomplete
    return path


def load_decoder_checkpoint(checkpoint: Path, *, modules: dict[str, torch.nn.Module],
                            optimizer, scheduler, config) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from ``checkpoint`` after checking that
    it is this config's run; return its trainer state (``step``, ``last_eval``)."""
    from safetensors.torch import load_file

    state = read_trainer_state(checkpoint)
    differences = config_differences(state.get("config"), run_config(config))
    if differences:
        raise CheckpointError(f"checkpoint {checkpoint} is from another run: "
                              f"{'; '.join(differences[:5])}")
    weights = load_file(str(checkpoint / WEIGHTS_NAME))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                                if k.startswith(prefix)}, strict=True)
    path = checkpoint / OPTIMIZER_NAME
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused, not plain data ({exc})") from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(load_rng_file(checkpoint / RNG_NAME))
    return state


__all__ = ["DecoderCheckpointArgs", "RESUMABLE_FIELDS", "load_decoder_checkpoint",
           "resolve_resume", "save_decoder_checkpoint"]
