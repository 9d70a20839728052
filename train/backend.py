"""The distributed backend: one DeepSpeed ZeRO engine, set up by accelerate or by DeepSpeed.

Both backends end with the same object, a ``deepspeed.DeepSpeedEngine`` that owns the bf16
module, the ZeRO-2 partitioned fp32 optimizer, gradient accumulation, clipping and the
scheduler step; the trainer calls only the engine (forward, backward + step, checkpoints),
so there is one training loop for 1 and N processes.

- ``accelerate``: ``Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=...))`` and
  ``accelerator.prepare``; start with ``accelerate launch --use_deepspeed ...``. This is the
  default on CUDA. On the CPU, accelerate 1.15 does not distribute (every process reports one
  process) and a single process hangs at set-up here, so it is not used there.
- ``deepspeed``: ``deepspeed.init_distributed`` + ``deepspeed.initialize``; start with
  ``deepspeed``, ``torchrun`` or plain ``python`` (one process). The default on the CPU, where
  it distributes over gloo.

Gradient synchronisation is DeepSpeed's own (ZeRO-2 reduce-scatter); the only collective
here is the mean of logged scalars.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path
from typing import Any

import torch

from segllm.dtypes import parse_dtype

from .args import TrainConfig

AUTO = "auto"


def free_port() -> int:
    """A free TCP port on this host, for a single process that nobody launched."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON with its "auto" values filled from the training arguments.

    An explicit value that disagrees with the training arguments is an error naming both.
    """
    path = Path(config.deepspeed_config)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    wanted = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.global_batch_size(world_size),
        "gradient_clipping": config.optim.max_grad_norm,
    }
    ds = copy.deepcopy(ds)
    for key, value in wanted.items():
        given = ds.get(key, AUTO)
        if given == AUTO:
            ds[key] = value
        elif given != value:
            raise ValueError(f"{path}: {key} is {given} but the training arguments give {value}; "
                             "set it to \"auto\" or make them agree")
    return ds


def training_dtype(ds: dict[str, Any]) -> torch.dtype:
    """The dtype DeepSpeed casts the module (and so the batch) to."""
    for section in ("bf16", "fp16"):  # DeepSpeed's section names are dtype names
        if ds.get(section, {}).get("enabled"):
            return parse_dtype(section)
    return torch.float32


class Backend:
    """What the trainer needs from the process group and the engine."""

    name = "base"

    def __init__(self):
        self.engine = None

    # -- process group ------------------------------------------------------------------

    def _default_env(self) -> None:
        """Env of a one-process group when no launcher set it."""
        defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        for key, value in defaults.items():
            os.environ.setdefault(key, value)

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if torch.distributed.is_initialized() and self.world_size > 1:
            torch.distributed.barrier()

    def mean_across_processes(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of logged scalars over processes (logging only; gradients are DeepSpeed's)."""
        if self.world_size == 1 or not values:
            return dict(values)
        keys = sorted(values)
        device = self.engine.device if self.engine is not None else "cpu"
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}

    # -- engine -------------------------------------------------------------------------

    def prepare(self, model, optimizer, scheduler, ds_config: dict[str, Any]):
        raise NotImplementedError

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward, then the engine's step (a no-op inside an accumulation window)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine. The process group stays for the life of the process:
        DeepSpeed caches its groups, so a second run in the same process (tests, notebooks)
        must reuse the group rather than a new one."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None


def skip_cpu_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory all-reduce.

    On the CPU accelerator ``init_distributed`` compiles that C++ op on first use (minutes on
    a 2-core machine, before step one); gloo's all-reduce is what our CPU runs need. DeepSpeed
    consults ``deepspeed.ops.__compatible_ops__`` (a dict cached for edits like this one)
    before building, so marking the op incompatible makes it use plain torch.distributed.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedBackend(Backend):
    name = "deepspeed"

    def __init__(self, cpu_shm_comm: bool = False):
        super().__init__()
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        self._default_env()
        if get_accelerator().device_name() == "cpu" and not cpu_shm_comm:
            skip_cpu_shm_comm_build()
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())

    def prepare(self, model, optimizer, scheduler, ds_config):
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                    lr_scheduler=scheduler, config=ds_config)
        return self.engine

    def backward_and_step(self, loss):
        self.engine.backward(loss)
        self.engine.step()


class AccelerateBackend(Backend):
    name = "accelerate"

    def __init__(self, ds_config: dict[str, Any]):
        super().__init__()
        from accelerate import Accelerator
        from accelerate.utils import DeepSpeedPlugin

        self.accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config))

    def prepare(self, model, optimizer, scheduler, ds_config):
        model, _, _ = self.accelerator.prepare(model, optimizer, scheduler)
        self.engine = model  # accelerate hands back the DeepSpeedEngine as the model
        return self.engine

    def backward_and_step(self, loss):
        # accelerate's DeepSpeed wrapper runs engine.backward and engine.step
        self.accelerator.backward(loss)


def choose_backend(name: str) -> str:
    """"auto": accelerate where it distributes (CUDA), the DeepSpeed engine elsewhere."""
    if name != AUTO:
        return name
    return "accelerate" if torch.cuda.is_available() else "deepspeed"


def make_backend(config: TrainConfig) -> Backend:
    """Start the process group. The world size comes from the launcher's environment."""
    name = choose_backend(config.backend)
    if name == "deepspeed":
        return DeepSpeedBackend(cpu_shm_comm=config.deepspeed_cpu_shm_comm)
    if name == "accelerate":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return AccelerateBackend(deepspeed_config(config, world))
    raise ValueError(f"unknown backend {name!r}; known: ['auto', 'accelerate', 'deepspeed']")
