"""Where the small model we ship lives, and the bundled scenes it is shown on.

``models/segllm-shapes`` (a ``save_pretrained`` folder, trained here on synthetic scenes by
``configs/train/segllm-shapes-v3.yaml``) sits at the top of the repository; commands that take
``--model`` use it when none is given. ``SEGLLM_MODEL`` names another folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_MODEL_NAME = "segllm-shapes"
ENV_VAR = "SEGLLM_MODEL"
SCENES_DIR = Path(__file__).resolve().parent / "demo" / "scenes"
"""Six synthetic conversations (seed 2026, never used in training) with their images and
grounded captions: ``scenes.jsonl``, ``scenes_gcg.jsonl``, ``images/``."""


def shipped_model_dir() -> Path:
    """The default model folder: ``$SEGLLM_MODEL``, else the repository's ``models/segllm-shapes``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return Path(__file__).resolve().parent.parent / "models" / SHIPPED_MODEL_NAME


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """``model`` when given, else the shipped model; a clear error when neither exists."""
    path = Path(model) if model else shipped_model_dir()
    if not (path / "segllm_config.json").is_file():
        if model:
            raise FileNotFoundError(f"{path}: not a segllm model folder (no segllm_config.json)")
        raise FileNotFoundError(
            f"no --model given and the shipped model is not at {path}: it comes with the git "
            f"repository (models/{SHIPPED_MODEL_NAME}); pass --model DIR or set {ENV_VAR}")
    return path
