"""Typed training arguments, loaded from YAML with ``key=value`` overrides.

A training YAML has top-level run fields and one section per concern::

    output_dir: runs/tiny-synthetic
    max_steps: 50
    micro_batch_size: 2
    model: {preset: tiny, overrides: {trainable: {decoder: {mask_decoder: true}}}}
    data: {sources: [{path: data/synthetic/synthetic.jsonl, weight: 1.0}]}
    optim: {lr: 1.0e-3, warmup_steps: 5, schedule: cosine}
    checkpoint: {every: 25}

Every key is checked against the dataclasses below: an unknown key, a value of the wrong type
or a missing file fails in :func:`load_train_config`, naming the key (and the file), before
any model is built. Overrides use dotted keys, list items by index
(``optim.lr=3e-4``, ``data.sources.0.weight=2``); values are parsed as YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segllm.typed_config import ConfigError, KeyPath, build_checked

from .augment import AugmentArgs
from .vision_aux import VisionAuxArgs


class TrainConfigError(ConfigError):
    """A training config that cannot be used; the message names the file and the key."""


@dataclass
class ModelArgs:
    """Where the model comes from (exactly one of preset, config_file, pretrained, llava_dir)."""

    preset: str | None = None  # a SegLLMConfig preset name, e.g. "tiny"
    config_file: str | None = None  # a configs/model/*.yaml file
    pretrained: str | None = None  # a directory written by SegLLMModel.save_pretrained
    llava_dir: str | None = None  # a llava-hf directory (with decoder_checkpoint): from_components
    decoder_checkpoint: str | None = None  # the mask decoder's original weights file
    overrides: dict[str, Any] = field(default_factory=dict)  # SegLLMConfig overrides
    quantize_4bit: bool = False  # QLoRA: NF4 base LLM through bitsandbytes (needs llm: lora)
    gradient_checkpointing: bool = False


@dataclass
class SourceArgs:
    """One JSONL source of MRSeg conversations."""

    path: str
    image_root: str | None = None  # default: the folder of the JSONL file
    weight: float = 1.0  # sampling ratio (LISA's 9:3:3:1 is four sources weighted 9, 3, 3, 1)
    name: str | None = None  # for logs; default: the file name
    augment: AugmentArgs = field(default_factory=AugmentArgs)  # off by default (train/augment.py)


@dataclass
class DataArgs:
    sources: list[SourceArgs] = field(default_factory=list)
    # "ratio": draw a source with probability weight / sum(weights) (LISA);
    # "size": weight times the number of records (SegLLM's per-file sampling of concatenated files)
    mixing: Literal["ratio", "size"] = "ratio"
    num_workers: int = 0  # DataLoader workers; the sample order does not depend on it
    # length bucketing: sort each window of this many steps' samples by length into
    # micro-batches, so little of a batch is padding (0: off; train/data.py bucketed_positions)
    bucket_steps: int = 0
    validate_records: bool = True  # run segllm.records validation while reading
    check_images: bool = True  # open every image's header (and size) before step 1


@dataclass
class ValidationArgs:
    """Periodic validation on a held-out JSONL: per-round cIoU, ground-truth references."""

    path: str | None = None
    image_root: str | None = None
    every: int = 0  # optimizer steps; 0: never (only at the end when path is set)
    max_samples: int = 64
    batch_size: int = 2


@dataclass
class OptimArgs:
    """AdamW, warm-up then cosine / linear / constant, gradient clipping."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    # "step": QueryMeldNet's decay, x0.1 at 0.9 and again at 0.95 of max_steps (train/optim.py)
    schedule: Literal["cosine", "linear", "constant", "step"] = "cosine"
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclass
class CheckpointArgs:
    every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep: int = 2  # most recent checkpoints kept (0 keeps all)
    export: bool = True  # at the end, merge LoRA and write a from_pretrained directory
    export_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass
class LoggingArgs:
    every: int = 1  # optimizer steps between metric lines
    progress: bool = True  # a tqdm bar on the main process
    tensorboard: bool = False  # also write TensorBoard events under output_dir/tensorboard


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    max_steps: int = 100  # optimizer steps
    micro_batch_size: int = 1  # conversations per process per forward
    gradient_accumulation_steps: int = 1
    seed: int = 0
    # "deepspeed": the DeepSpeed engine directly (CPU and GPU; the only one that distributes
    # on CPU); "accelerate": accelerate's DeepSpeed plugin; "auto": accelerate on CUDA, else
    # deepspeed. Both drive the same DeepSpeed engine, so checkpoints are interchangeable.
    backend: Literal["auto", "accelerate", "deepspeed"] = "auto"
    deepspeed_config: str = "configs/ds_zero2.json"
    # DeepSpeed's CPU shared-memory all-reduce: a C++ op compiled on first use (minutes);
    # off by default, so CPU runs use gloo's all-reduce
    deepspeed_cpu_shm_comm: bool = False
    threads: int = 0  # torch intra-op threads per process; 0: torch's default
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    validation: ValidationArgs = field(default_factory=ValidationArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    logging: LoggingArgs = field(default_factory=LoggingArgs)
    # per-patch word targets for the image tokens (train/vision_aux.py); off by default
    vision_aux: VisionAuxArgs = field(default_factory=VisionAuxArgs)
    source_file: str | None = None  # the YAML this came from (filled by the loader)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def global_batch_size(self, world_size: int) -> int:
        """Conversations per optimizer step over all processes."""
        return self.micro_batch_size * self.gradient_accumulation_steps * world_size


# --------------------------------------------------------------------------- loading


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a training YAML, apply ``key=value`` overrides and check every key and type.

    Raises:
        TrainConfigError: naming the file and the key (unknown key, wrong type, missing file).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"training config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping at the top level")
    data = copy.deepcopy(data)
    for item in overrides:
        apply_override(data, item, where=str(path))
    config = build_train_config(data, str(path))
    config.source_file = str(path)
    resolve_shipped_configs(config, path)
    check_config(config, str(path))
    return config


def resolve_shipped_configs(config: TrainConfig, source: Path) -> None:
    """Let a recipe name the project's own config files (``configs/ds_zero2.json``) from
    anywhere: a relative path missing from the working directory is looked up beside the
    recipe and in its parent folders. Data paths stay relative to the working directory."""
    def resolve(value: str | None) -> str | None:
        if not value or Path(value).is_absolute() or Path(value).exists():
            return value
        for folder in source.resolve().parents:
            candidate = folder / value
            if candidate.exists():
                return str(candidate)
        return value

    config.deepspeed_config = resolve(config.deepspeed_config)
    config.model.config_file = resolve(config.model.config_file)


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The same checks as :func:`load_train_config`, for a dict built in code (tests, notebooks)."""
    data = copy.deepcopy(data)
    for item in overrides:
        apply_override(data, item, where="config")
    config = build_train_config(data, "config")
    check_config(config, "config")
    return config


def apply_override(data: dict[str, Any], item: str, where: str) -> None:
    """Set ``a.b.0.c=value`` in nested dicts/lists; the value is parsed as YAML."""
    if "=" not in item:
        raise TrainConfigError(f"{where}: override {item!r} is not KEY=VALUE")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        target = _child(target, part, ".".join(parts[:depth + 1]), where)
    leaf = parts[-1]
    if isinstance(target, list):
        index = _list_index(target, leaf, key, where)
        target[index] = value
    else:
        target[leaf] = value


def _child(target: Any, part: str, key: str, where: str) -> Any:
    if isinstance(target, list):
        return target[_list_index(target, part, key, where)]
    if not isinstance(target, dict):
        raise TrainConfigError(f"{where}: override key {key!r} goes inside a non-mapping value")
    return target.setdefault(part, {})


def _list_index(target: list, part: str, key: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(target):
        raise TrainConfigError(f"{where}: override key {key!r}: {part!r} is not an index of a "
                               f"list of {len(target)}")
    return int(part)


def build_train_config(data: Any, where: str) -> TrainConfig:
    """``TrainConfig`` from nested dicts, every key and type checked (``segllm.typed_config``);
    ``where`` (the file) starts each message."""
    try:
        return build_checked(TrainConfig, data, KeyPath(where))
    except ConfigError as err:
        raise TrainConfigError(str(err)) from None


def check_config(config: TrainConfig, where: str) -> None:
    """Cross-field checks that need no files (files are checked by :func:`check_paths`)."""
    m = config.model
    given = [k for k in ("preset", "config_file", "pretrained", "llava_dir") if getattr(m, k)]
    if len(given) != 1:
        raise TrainConfigError(f"{where}: model needs exactly one of preset, config_file, "
                               f"pretrained, llava_dir; got {given or 'none'}")
    for name in ("max_steps", "micro_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise TrainConfigError(f"{where}: {name} must be >= 1, got {getattr(config, name)}")
    if not config.data.sources:
        raise TrainConfigError(f"{where}: data.sources is empty")
    for i, src in enumerate(config.data.sources):
        if src.weight <= 0:
            raise TrainConfigError(f"{where}: data.sources.{i}.weight must be > 0, got {src.weight}")
    if config.optim.warmup_steps < 0 or not 0.0 <= config.optim.min_lr_ratio <= 1.0:
        raise TrainConfigError(f"{where}: optim.warmup_steps must be >= 0 and optim.min_lr_ratio "
                               "in [0, 1]")
    check_optimizer_values(config.optim, where)
    aux = config.vision_aux
    if not (math.isfinite(aux.weight) and aux.weight >= 0 and math.isfinite(aux.scale)
            and aux.scale > 0):
        raise TrainConfigError(f"{where}: vision_aux.weight must be >= 0 and vision_aux.scale "
                               f"> 0, got {aux.weight} and {aux.scale}")


def check_optimizer_values(optim: OptimArgs, where: str) -> None:
    """Numbers AdamW and the schedule can use: a NaN or negative learning rate would train
    nothing (or diverge) without any error, so each is refused here, naming its key."""
    def finite(key: str, value: float) -> None:
        if not math.isfinite(value):
            raise TrainConfigError(f"{where}: optim.{key} must be a finite number, got {value}")

    for key in ("lr", "weight_decay", "eps", "max_grad_norm"):
        value = getattr(optim, key)
        finite(key, value)
        if value < 0:
            raise TrainConfigError(f"{where}: optim.{key} must be >= 0, got {value}")
    if optim.eps <= 0:
        raise TrainConfigError(f"{where}: optim.eps must be > 0, got {optim.eps}")
    for i, beta in enumerate(optim.betas):
        finite(f"betas.{i}", beta)
        if not 0.0 <= beta < 1.0:
            raise TrainConfigError(f"{where}: optim.betas.{i} must be in [0, 1), got {beta}")


def check_paths(config: TrainConfig) -> None:
    """Every file the run will read exists; called before the model is built."""
    where = config.source_file or "config"
    wanted = [("deepspeed_config", config.deepspeed_config)]
    m = config.model
    wanted += [(f"model.{k}", getattr(m, k)) for k in ("config_file", "pretrained", "llava_dir",
                                                          "decoder_checkpoint") if getattr(m, k)]
    for i, src in enumerate(config.data.sources):
        wanted.append((f"data.sources.{i}.path", src.path))
        if src.image_root:
            wanted.append((f"data.sources.{i}.image_root", src.image_root))
    if config.validation.path:
        wanted.append(("validation.path", config.validation.path))
    if config.vision_aux.labels:
        wanted.append(("vision_aux.labels", config.vision_aux.labels))
    for key, value in wanted:
        if not Path(value).exists():
            raise TrainConfigError(f"{where}: {key}: {value} does not exist")
