"""Atomic, exactly resumable checkpoints.

Layout of ``output_dir/checkpoint-0000040/``::

    engine/                 DeepSpeed: trainable weights only (adapters for LoRA), each
                            process's ZeRO-2 optimizer partition (fp32 masters, Adam moments),
                            the scheduler
    rng_state_rank{r}.pt    python, numpy and torch (CPU and CUDA) generator states per process,
                            as tensors and plain numbers (``torch.load(weights_only=True)``)
    trainer_state.json      step, data position, world size, seed, frozen-weights fingerprint,
                            the run's id and config hash (``segllm.train.run_dir``)

Every process writes into ``output_dir/.tmp-checkpoint-0000040``; after a barrier the main
process writes ``trainer_state.json`` last and renames the folder. A folder without the
``.tmp-`` prefix is therefore complete; a run killed mid-save leaves only a ``.tmp-`` folder,
which the next save or resume ignores and removes.

The frozen weights are not saved (they come from the base model, or from the seed for a
preset built from scratch); the fingerprint makes a resume on different frozen weights fail
loudly instead of silently training something else.

Nothing in a checkpoint can run code when it is loaded: the RNG files are read with
``weights_only=True``, and DeepSpeed's own files (which DeepSpeed unpickles in full) are first
read the same way, with only the few DeepSpeed data classes they hold allowed
(:func:`check_engine_files`). A file naming anything else is refused before DeepSpeed opens it.
"""

from __future__ import annotations

import json
import os
import pickle
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: incomplete, of another run, or holding
    something that is not plain data."""


RNG_FORMAT = 2
"""Version of the RNG file: 2 holds tensors and plain numbers only; the unversioned files of
earlier releases hold numpy arrays (read by :func:`load_rng_file` only if nothing else)."""


def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch generator states as tensors and plain numbers,
    so that ``torch.load(..., weights_only=True)`` reads them back."""
    version, mt_state, gauss_next = random.getstate()
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "format": RNG_FORMAT,
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` (or an earlier release's pickled form) holds."""
    if state.get("format") == RNG_FORMAT:
        py, npy = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()),
                         py["gauss_next"]))
        np.random.set_state((npy["bit_generator"], npy["keys"].numpy().astype(np.uint32),
                             npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    else:  # an earlier release: the tuples of random.getstate and np.random.get_state
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What earlier releases' RNG files hold beyond tensors: numpy's uint32 key array. Rebuilding an
# array of a plain dtype runs no code (an object array would need classes not listed here).
_LEGACY_RNG_GLOBALS = (np.ndarray, np.dtype, np.dtypes.UInt32DType,
                       np._core.multiarray._reconstruct)


def load_rng_file(path: Path) -> dict[str, Any]:
    """Read an RNG file with ``weights_only=True`` (earlier releases' numpy arrays allowed)."""
    try:
        with torch.serialization.safe_globals(list(_LEGACY_RNG_GLOBALS)):
            state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (every process saves its own RNG file)") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused, not plain data ({_refused_global(exc)}); "
                              "an RNG file holds only tensors and numbers") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(state, dict) or "torch" not in state:
        raise CheckpointError(f"{path}: not an RNG state file")
    return state


# Classes DeepSpeed writes into its optimizer files (ZeRO-1/2/3, fp16, bf16): data holders and
# enums, rebuilt without running anything but their constructor-free state restore.
def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def check_engine_files(folder: Path) -> None:
    """Read every DeepSpeed file under ``folder`` with ``weights_only=True`` (memory-mapped,
    so tensors are not loaded) before DeepSpeed unpickles them in full; refuse one that names
    a class or function outside the allowed data classes."""
    for path in sorted(folder.rglob("*.pt")):
        load_engine_file(path, mmap=True)


def load_engine_file(path: Path, mmap: bool = False) -> Any:
    """One DeepSpeed file read with ``weights_only=True``, only DeepSpeed's data classes
    allowed: ``CheckpointError`` naming the file for anything else or an unreadable file."""
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            if mmap:
                try:
                    return torch.load(path, weights_only=True, mmap=True, map_location="cpu")
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
            return torch.load(path, weights_only=True, map_location="cpu")  # not a zip file
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused, not plain data ({_refused_global(exc)}); "
                              "segllm resumes only from checkpoints that hold tensors, "
                              "numbers and DeepSpeed's data classes") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


def _refused_global(exc: Exception) -> str:
    """The useful line of torch's weights-only refusal: the global it would not load."""
    for line in str(exc).splitlines():
        if "GLOBAL" in line or "WeightsUnpickler error" in line:
            return re.split(r" was not an allowed| whose module|\. Please", line.strip())[0]
    return " ".join(str(exc).split())[:200]


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
    check_engine_files(checkpoint / ENGINE_TAG)  # both refused before DeepSpeed unpickles
    rng = load_rng_file(checkpoint / f"rng_state_rank{backend.rank}.pt")
    load_path, _ = engine.load_checkpoint(str(checkpoint), tag=ENGINE_TAG,
                                          load_module_strict=False, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"{checkpoint}: DeepSpeed found no engine state under {ENGINE_TAG}/")
    set_rng_state(rng)
    return state
