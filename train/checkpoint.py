"""Atomic, exactly resumable checkpoints.

Layout of ``output_dir/checkpoint-0000040/``::

    engine/                 DeepSpeed: trainable weights only (adapters for LoRA), each
                            process's ZeRO-2 optimizer partition (fp32 masters, Adam moments),
                            the scheduler
    rng_state_rank{r}.pt    python, numpy and torch (CPU and CUDA) generator states per process
    trainer_state.json      step, data position, world size, seed, frozen-weights fingerprint

Every process writes into ``output_dir/.tmp-checkpoint-0000040``; after a barrier the main
process writes ``trainer_state.json`` last and renames the folder. A folder without the
``.tmp-`` prefix is therefore complete; a run killed mid-save leaves only a ``.tmp-`` folder,
which the next save or resume ignores and removes.

The frozen weights are not saved (they come from the base model, or from the seed for a
preset built from scratch); the fingerprint makes a resume on different frozen weights fail
loudly instead of silently training something else.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segllm.files import write_text_atomic

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
STATE_NAME = "trainer_state.json"
ENGINE_TAG = "engine"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def frozen_fingerprint(model: torch.nn.Module) -> list[float]:
    """(sum, sum of squares) over every frozen tensor, in float64: cheap, order-fixed."""
    total = torch.zeros((), dtype=torch.float64)
    squares = torch.zeros((), dtype=torch.float64)
    for _, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if param.requires_grad:
            continue
        values = param.detach().to("cpu", torch.float64)
        total += values.sum()
        squares += values.square().sum()
    return [float(total), float(squares)]


def save_checkpoint(engine, backend, output_dir: str | Path, step: int,
                    trainer_state: dict[str, Any], keep: int = 0) -> Path:
    """Write checkpoint ``step`` atomically from every process; return its path."""
    root = Path(output_dir)
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if backend.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
        tmp.mkdir(parents=True)
    backend.barrier()
    engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, exclude_frozen_parameters=True)
    torch.save(rng_state(), tmp / f"rng_state_rank{backend.rank}.pt")
    backend.barrier()
    if backend.is_main:
        write_text_atomic(tmp / STATE_NAME, json.dumps(trainer_state, indent=2))
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(root, keep)
    backend.barrier()
    return final


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: not a complete checkpoint (no {STATE_NAME})")
    return json.loads(path.read_text())


def load_checkpoint(engine, backend, checkpoint: str | Path,
                    expected: dict[str, Any]) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG; return the trainer state.

    ``expected`` holds what must match (world size, global batch, frozen fingerprint); a
    mismatch is an error naming the field.
    """
    checkpoint = Path(checkpoint)
    state = read_trainer_state(checkpoint)
    for key, want in expected.items():
        have = state.get(key)
        if key == "frozen_fingerprint":
            if have is None or not np.allclose(have, want, rtol=1e-9, atol=0):
                raise ValueError(f"{checkpoint}: the frozen weights differ from the ones this "
                                 f"checkpoint was trained on (fingerprint {have} vs {want})")
        elif have != want:
            raise ValueError(f"{checkpoint}: {key} was {have} when saved but is {want} now")
    load_path, _ = engine.load_checkpoint(str(checkpoint), tag=ENGINE_TAG,
                                          load_module_strict=False, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"{checkpoint}: DeepSpeed found no engine state under {ENGINE_TAG}/")
    rng_file = checkpoint / f"rng_state_rank{backend.rank}.pt"
    set_rng_state(torch.load(rng_file, weights_only=False))
    return state
