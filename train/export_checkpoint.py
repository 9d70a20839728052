"""Export one checkpoint of a run as a model folder, the same way the run's final export is
written: so a run's progress can be scored with ``segllm eval`` (the model's own answers and
masks) at any checkpoint, not only by the teacher-forced validation it logs.

    python -m segllm.train.export_checkpoint runs/NAME/checkpoint-0002000 OUT [--dtype float32]

The model is rebuilt from the run's own ``train_config.json`` (beside the checkpoint) with the
run's seed, so the weights a checkpoint leaves out (frozen ones) are the run's; the checkpoint's
frozen-weights fingerprint must match, or nothing is written. Trainable weights are the module's
as DeepSpeed saved them (bf16 in a bf16 run, like the final export, which is cast from the
module too; not the fp32 optimizer masters), so exporting a run's last checkpoint gives its
final export. That file is read as plain data only (``checkpoint.load_engine_file``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .args import TrainConfigError, load_train_config
from .backend import deepspeed_config, training_dtype
from .export import export_merged
from .model_setup import build_model
from .trainer import seed_everything


class ExportError(ValueError):
    """A checkpoint that cannot be exported as it is; the message names the file at fault."""


def export_checkpoint(checkpoint: str | Path, output: str | Path, dtype: str = "float32") -> Path:
    """Write ``checkpoint``'s model to ``output`` (atomically); return its path."""
    checkpoint = Path(checkpoint)
    state = ckpt.read_trainer_state(checkpoint)
    config_path = checkpoint.parent / "train_config.json"
    config = load_train_config(config_path)
    seed_everything(config.seed)
    model = build_model(config.model)
    # the engine held the whole module in its training dtype: frozen weights rounded to it too
    model.to(training_dtype(deepspeed_config(config, int(state.get("world_size", 1)))))
    have = ckpt.frozen_fingerprint(model)
    want = state.get("frozen_fingerprint")
    if want is None or not np.allclose(have, want, rtol=1e-9, atol=0):
        raise ExportError(f"{checkpoint}: the frozen weights rebuilt from {config_path} differ from "
                          f"the ones it was trained on (fingerprint {have} vs {want})")
    weights = _module_weights(checkpoint / ckpt.ENGINE_TAG)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of another shape: another model's checkpoint
        raise ExportError(f"{checkpoint}: does not fit the model of {config_path} "
                          f"({' '.join(str(err).split())[:300]})") from None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ExportError(f"{checkpoint}: does not match the model of {config_path} (not in the "
                          f"model: {sorted(unexpected)[:5]}; trained but missing: "
                          f"{sorted(trainable & set(missing))[:5]})")
    return export_merged(model, output, dtype)


def _module_weights(engine_dir: Path) -> dict:
    """The trainable weights DeepSpeed saved from the module (in the dtype it trained in)."""
    files = sorted(engine_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise ExportError(f"{engine_dir}: no mp_rank_*_model_states.pt (not a DeepSpeed checkpoint)")
    state = ckpt.load_engine_file(files[0])
    if not isinstance(state, dict) or not isinstance(state.get("module"), dict):
        raise ExportError(f"{files[0]}: no 'module' weights")
    return state["module"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segllm.train.export_checkpoint",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run's checkpoint-NNNNNNN folder")
    parser.add_argument("output", help="model folder to write (SegLLMModel.from_pretrained)")
    parser.add_argument("--dtype", default="float32", help="weights' dtype in the export")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.output, args.dtype)
    except (ExportError, FileNotFoundError, ckpt.CheckpointError, TrainConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
