"""Strict checkpoint loading that says exactly what did not match (open_clip's habit)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the file and the keys."""


def read_torch_state_dict(path: str | Path, wrappers: tuple[str, ...] = ("state_dict",)
                          ) -> dict[str, torch.Tensor]:
    """Read a ``torch.save``d state dict safely (``weights_only=True``), onto the CPU.

    ``wrappers``: keys under which a training framework nests the state dict (Lightning's
    ``state_dict``, detectron2's ``model``); the first one present is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, non-tensor payloads
        raise CheckpointError(f"{path}: cannot be read as a weights-only state dict ({err})") from err
    for key in wrappers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = f" (or one nested under {', '.join(map(repr, wrappers))})" if wrappers else ""
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors{nested}")
    return state


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """``module.load_state_dict(state, strict=True)`` with a report of every mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state)
                         if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if wrong_shape:
        details = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in wrong_shape]
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {_preview(details)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True, assign=assign)
