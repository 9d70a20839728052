"""Reading a published checkpoint folder, and accounting for every tensor in it.

A Hugging Face folder holds ``config.json`` and its weights as one file or as shards listed
by an index (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``). ``.bin``
files are read with ``torch.load(weights_only=True)`` only (no pickled code runs).

``SourceTensors`` hands each tensor out once: a converter ``take``s what it maps and
``drop``s what it leaves out on purpose, with the reason; ``finish`` then fails naming any
tensor that was neither, so nothing in a checkpoint is ever silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ..modeling.loading import read_torch_state_dict

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


class ConvertError(ValueError):
    """A source checkpoint that cannot be converted; the message names the file or key."""


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConvertError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: the shards its index lists, or its one file."""
    for name in INDEX_NAMES:
        index = folder / name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConvertError(f"{index}: no 'weight_map'")
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ConvertError(f"{index}: lists shard(s) that are not there: {missing}")
            return files
    for name in SINGLE_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    raise ConvertError(f"{folder}: no weights (none of {INDEX_NAMES + SINGLE_NAMES})")


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # a truncated or foreign file
            raise ConvertError(f"{path}: cannot be read as safetensors ({err})") from err
    return read_torch_state_dict(path, wrappers=())


def read_folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder (all shards), by key; a key in two shards fails."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        for key, value in read_weight_file(path).items():
            if key in tensors:
                raise ConvertError(f"{path}: tensor {key!r} is also in another shard")
            tensors[key] = value
    return tensors


class SourceTensors:
    """The tensors of one source, each to be taken (mapped) or dropped exactly once.

    Args:
        tensors: key -> tensor.
        source: the folder or file, for messages.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], source: str):
        self.tensors = tensors
        self.source = source
        self.taken: set[str] = set()
        self.dropped: dict[str, str] = {}  # key -> why

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> list[str]:
        return sorted(self.tensors)

    def with_prefix(self, prefix: str) -> list[str]:
        return sorted(k for k in self.tensors if k.startswith(prefix))

    def peek(self, key: str) -> torch.Tensor:
        """A tensor, to read its shape, without taking it."""
        if key not in self.tensors:
            raise ConvertError(f"{self.source}: has no tensor {key!r}")
        return self.tensors[key]

    def take(self, key: str) -> torch.Tensor:
        tensor = self.peek(key)
        if key in self.taken or key in self.dropped:
            raise ConvertError(f"{self.source}: tensor {key!r} would be used twice")
        self.taken.add(key)
        return tensor

    def drop(self, keys: Iterable[str], why: str) -> None:
        for key in keys:
            self.peek(key)
            if key in self.taken or key in self.dropped:
                raise ConvertError(f"{self.source}: tensor {key!r} would be used twice")
            self.dropped[key] = why

    def finish(self) -> None:
        """Fail naming every tensor that was neither taken nor dropped."""
        left = sorted(set(self.tensors) - self.taken - set(self.dropped))
        if left:
            shown = ", ".join(left[:8]) + (f", ... ({len(left) - 8} more)" if len(left) > 8 else "")
            raise ConvertError(f"{self.source}: {len(left)} tensor(s) this converter does not "
                               f"know what to do with: {shown}")

    def summary(self) -> dict:
        """For the conversion report: counts, and every dropped key with its reason."""
        reasons: dict[str, list[str]] = {}
        for key, why in sorted(self.dropped.items()):
            reasons.setdefault(why, []).append(key)
        return {"source": self.source, "tensors": len(self.tensors), "mapped": len(self.taken),
                "dropped": {why: keys for why, keys in reasons.items()}}


def llama_sizes(config: dict, vocab_size: int, *, max_positions: int, rms_norm_eps: float) -> dict:
    """The LLM part of a segllm config from a LLaVA-family ``config.json`` (LISA, GLaMM);
    ``max_positions`` / ``rms_norm_eps``: the source's defaults where its file leaves them out."""
    heads = int(config["num_attention_heads"])
    return {"hidden_size": int(config["hidden_size"]),
            "intermediate_size": int(config["intermediate_size"]),
            "num_hidden_layers": int(config["num_hidden_layers"]),
            "num_attention_heads": heads,
            "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
            "vocab_size": vocab_size,
            "max_position_embeddings": int(config.get("max_position_embeddings", max_positions)),
            "rms_norm_eps": float(config.get("rms_norm_eps", rms_norm_eps)),
            "rope_theta": float(config.get("rope_theta", 10000.0))}
