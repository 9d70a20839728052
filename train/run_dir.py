"""Which run an ``output_dir`` belongs to, and when a run may write into it.

- A fresh run needs an absent or empty ``output_dir``. With ``overwrite`` it first removes what
  an earlier run wrote there (:data:`TRAINER_OUTPUTS`); anything else in the folder is kept.
  Without it a used folder is an error: two runs in one folder would mix their metrics, prune
  each other's checkpoints and resume from each other's weights.
- A run has an id (new for each fresh run, kept across resumes) and a config hash: a hash of
  the config fields that define what is trained (model, data, optimizer, seed, batch), not of
  those that may change between a run and its resumption (:data:`RESUMABLE_FIELDS`, e.g.
  ``max_steps``, logging, checkpoint frequency). ``output_dir/run.json`` records both, and
  every checkpoint's ``trainer_state.json`` holds them with the defining fields themselves.
- A resume must be the same run: the checkpoint's config must equal the current one on every
  defining field both know (a field added or removed by a newer segllm is not a difference),
  and the folder's ``run.json`` must name the checkpoint's run. A checkpoint of an earlier
  release (no run id) is compared against the ``train_config.json`` beside it.

:func:`plan_run` only reads, so every process can call it before the process group exists;
the main process then calls :func:`claim` to clear and mark the folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segllm.files import write_text_atomic

from . import checkpoint as ckpt
from .args import TrainConfig

RUN_FILE = "run.json"
CONFIG_FILE = "train_config.json"
RUN_KEY = "run"  # the run's entry in a checkpoint's trainer_state.json

RESUMABLE_FIELDS = (
    "output_dir", "source_file", "max_steps", "threads", "backend", "deepspeed_config",
    "deepspeed_cpu_shm_comm", "data.num_workers", "data.validate_records", "data.check_images",
    "validation", "checkpoint", "logging",
)
"""Config fields that may differ between a run and its resumption (dotted paths)."""

TRAINER_OUTPUTS = ("checkpoint-*", ".tmp-checkpoint-*", "metrics.jsonl", CONFIG_FILE, RUN_FILE,
                   "export", ".export.*", "tensorboard")
"""What a training run writes in its folder (globs); ``overwrite`` removes exactly these."""


class RunDirError(ValueError):
    """An output folder or checkpoint that this run must not use; the message says why."""


@dataclass(frozen=True)
class RunPlan:
    """What :func:`plan_run` decided: where to start and under which run id."""

    output_dir: Path
    resume_from: Path | None
    run_id: str
    config_hash: str
    clear: bool  # remove an earlier run's outputs before writing

    def checkpoint_entry(self, config: TrainConfig) -> dict[str, Any]:
        """The run's entry of a checkpoint's trainer state."""
        return {"id": self.run_id, "config_hash": self.config_hash,
                "config": defining_config(_as_json(config))}


def _as_json(config: TrainConfig) -> dict[str, Any]:
    """``config`` as JSON reads it back (tuples become lists), so saved and current compare."""
    return json.loads(json.dumps(config.to_dict()))


def defining_config(config: dict[str, Any],
                    resumable: tuple[str, ...] = RESUMABLE_FIELDS) -> dict[str, Any]:
    """``config`` (a ``TrainConfig.to_dict()``) without the ``resumable`` fields."""
    kept = copy.deepcopy(config)
    for dotted in resumable:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return kept


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the defining fields, key order independent."""
    text = json.dumps(defining_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_differences(saved: Any, current: Any, name: str = "") -> list[str]:
    """Dotted keys whose values differ; mappings compare only the keys both hold (a field
    added or removed by another segllm version is no difference), lists item by item."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) & set(current)):
            out += config_differences(saved[key], current[key], f"{name}.{key}" if name else key)
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            out += config_differences(a, b, f"{name}.{i}")
        return out
    return [] if saved == current else [f"{name} ({saved!r} then, {current!r} now)"]


def plan_run(config: TrainConfig, resume: str | None, overwrite: bool = False) -> RunPlan:
    """Decide how this run uses ``config.output_dir``; raises :class:`RunDirError` naming the
    folder or checkpoint when it must not start (``FileNotFoundError`` for an incomplete
    checkpoint). Reads only."""
    output_dir = Path(config.output_dir)
    current = _as_json(config)
    digest = config_hash(current)
    if resume is not None and overwrite:
        raise RunDirError("--resume continues the run in output_dir and --overwrite replaces it: "
                          "give one of them")
    resume_from = _resolve_resume(resume, output_dir)
    if resume_from is None:
        restarting = resume is not None and _owned_by_same_config(output_dir, digest)
        if not (overwrite or restarting):
            _require_unused(output_dir)
        return RunPlan(output_dir, None, uuid.uuid4().hex, digest, clear=overwrite or restarting)
    run_id = _check_same_run(resume_from, current, digest)
    owner = _read_run_file(output_dir)
    if run_id is None:  # an earlier release's checkpoint: it joins the folder's run, if any
        run_id = owner.get("id") if owner is not None else uuid.uuid4().hex
    if owner is not None and owner.get("id") != run_id:
        raise RunDirError(f"{output_dir} belongs to run {owner.get('id')}, but checkpoint "
                          f"{resume_from} is from run {run_id}")
    if owner is None and resume_from.parent.resolve() != output_dir.resolve():
        _require_unused(output_dir)  # continuing a run elsewhere: into a fresh folder only
    return RunPlan(output_dir, resume_from, run_id, digest, clear=False)


def claim(plan: RunPlan, config: TrainConfig) -> None:
    """Main process only: clear an earlier run's outputs if planned, then write ``run.json``
    and ``train_config.json``."""
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    if plan.clear:
        for pattern in TRAINER_OUTPUTS:
            for path in plan.output_dir.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    write_text_atomic(plan.output_dir / RUN_FILE,
                      json.dumps({"id": plan.run_id, "config_hash": plan.config_hash}, indent=2) + "\n")
    write_text_atomic(plan.output_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")


# --------------------------------------------------------------------------- helpers


def _resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """``None``: fresh run; ``"latest"``: the newest complete checkpoint (fresh when none);
    a path: that checkpoint, which must be complete."""
    if resume is None:
        return None
    if resume == "latest":
        return ckpt.latest_checkpoint(output_dir)
    path = Path(resume)
    ckpt.read_trainer_state(path)  # raises, naming the path, when incomplete
    return path


def _require_unused(output_dir: Path) -> None:
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise RunDirError(f"output_dir {output_dir} is a file")
    entries = sorted(p.name for p in output_dir.iterdir())
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise RunDirError(f"output_dir {output_dir} is not empty ({shown}): pass --resume to "
                          "continue the run in it, or --overwrite to replace it")


def _read_run_file(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return data


def _owned_by_same_config(output_dir: Path, digest: str) -> bool:
    """A folder whose run (same config) stopped before its first checkpoint: restartable."""
    owner = _read_run_file(output_dir) if output_dir.is_dir() else None
    return owner is not None and owner.get("config_hash") == digest


def _check_same_run(checkpoint: Path, current: dict[str, Any], digest: str) -> str | None:
    """The checkpoint's run id (``None`` for an earlier release's), after checking that its
    run is this config's run."""
    state = ckpt.read_trainer_state(checkpoint)
    run = state.get(RUN_KEY)
    if run is None:  # an earlier release: compare with the config saved beside it
        saved_file = checkpoint.parent / CONFIG_FILE
        saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
        run = {"id": None, "config_hash": None,
               "config": defining_config(saved) if isinstance(saved, dict) else None}
    saved_config = run.get("config")
    if run.get("config_hash") != digest and isinstance(saved_config, dict):
        differences = config_differences(saved_config, defining_config(current))
        if differences:
            raise RunDirError(f"checkpoint {checkpoint} is from another run: "
                              f"{'; '.join(differences[:5])}")
    return run.get("id")
