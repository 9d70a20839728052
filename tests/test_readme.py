"""Every command of README.md's ```bash blocks, run as a user types it, at tiny sizes.

The commands are read from the README itself, so an edited or added command is covered without
touching this file. They run in order (a user builds data before training and evaluating on it)
in one fresh work folder, which stands for the repository root the README's relative paths
assume, with this environment's console scripts first on ``PATH``.

Nothing is guessed; every change to what the README says is one of these explicit rules:

- ``INPUTS``: what a user has before the first command (a model folder, a photo, a public data
  set's files), made tiny here;
- ``TINY``: textual substitutions (4 synthetic conversations, not 1000; a free port; 2 training
  steps);
- an optional part ``[--flag value]`` runs both ways: first without, then with every optional
  part of the command;
- ``STDIN``: what the user types at an interactive prompt (``segllm chat`` without ``--script``);
- ``SERVERS``: commands that serve until stopped: started, asked for one page, stopped;
- ``NOT_RUN``: commands that cannot run here, each with its reason (and what is still checked).

After each command: its exit status is 0, it prints what ``PRINTS`` lists for it, and every
folder it names with ``--output`` / ``--out`` exists and is not empty.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
COMMAND_TIMEOUT_S = 600  # per command; a loaded 2-core machine runs each in 3 to 30 s
SERVER_START_S = 300

NOT_RUN = {
    "make demo": "set-up: creates .venv and installs packages from the network; this test "
                 "already runs inside that environment",
    "make test": "runs the whole suite, this test included",
    "make shapes-model": "retrains the shipped model for about two hours; its steps are the "
                         "README's build-data, train and eval commands, run here at tiny size, "
                         "and its recipe is loaded by tests/test_config.py",
    "deepspeed --num_gpus 8 --module segllm.train.cli --config configs/train/segllm-7b.yaml":
        "trains from LLaVA-1.5-7B and SAM ViT-H checkpoints, which cannot exist offline",
    "accelerate launch --use_deepspeed --num_processes 8 -m segllm.train.cli --config "
    "configs/train/segllm-7b.yaml":
        "trains from LLaVA-1.5-7B and SAM ViT-H checkpoints, which cannot exist offline",
}

TINY = [  # (pattern, replacement, why), applied in order to each command line
    (r"--num \d+", "--num 4", "4 synthetic conversations instead of 1000"),
    (r"--port \d+", "--port {port}", "a free port, so runs never collide"),
    (r"^(segllm train --config configs/train/querymeld\S*)", r"\1 max_steps=2",
     "2 steps of a decoder-only recipe (kind: decoder, which has no validation key)"),
    (r"^(segllm train --config (?!configs/train/querymeld)\S+(?: [\w.]+=\S+)*)",
     r"\1 max_steps=2 validation.max_samples=2",
     "2 training steps, 2 validation conversations; written after the README's own overrides, "
     "because --resume takes the word after it as its checkpoint"),
]

STDIN = "Segment the red shape.\nNow the shape left of <ref:0>.\n"
SERVERS = ("segllm serve",)  # command prefixes that run until stopped
PRINTS = {  # command prefix (the longest that fits) -> what it prints when it worked
    "segllm demo": "mean IoU by round",
    "segllm build-data": '"records_written"',
    "python -m segllm.data_builders.synthetic_multitask": "records to",
    "segllm chat": "[1] ",  # the second question was answered too
    "segllm train": "exported merged model to",
    "segllm train --config configs/train/querymeld-synthetic.yaml": "wrote the trained decoder",
    "segllm eval": "cIoU",
    "segllm eval panoptic": "| pq |",
}


# -- inputs a user brings ------------------------------------------------------------------------

def tiny_model(path: Path) -> None:
    """``out/``: the tiny preset, written as the README's Python block does (``save_pretrained``)."""
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    SegLLMModel.from_config(SegLLMConfig.from_name("tiny")).save_pretrained(path)


def photo(path: Path) -> None:
    """``photo.jpg``: a 64x48 JPEG of random pixels."""
    pixels = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def refer_folder(path: Path) -> None:
    """``refer/refcocog``: the refer layout of the RefCOCO test fixture (its one refs file
    stands for RefCOCOg's ``refs(umd).p``)."""
    shutil.copytree(REPO / "tests" / "fixtures" / "refcoco", path)


def configs_link(path: Path) -> None:
    """``configs``: the repository's own, which the README names relative to the repository."""
    path.symlink_to(REPO / "configs", target_is_directory=True)


def coco_val2017(path: Path) -> None:
    """``coco/instances_val2017.json``: a COCO instances file whose one image is not a
    RefCOCO fixture image (the leakage rule has nothing to remove)."""
    path.write_text(json.dumps({"images": [{"id": 999, "file_name": "000000000999.jpg",
                                            "height": 48, "width": 64}],
                                "annotations": [], "categories": []}))


def lisa_checkpoint(path: Path) -> None:
    """``LISA-7B-v1``: the tiny LISA checkpoint LISA's own code wrote (tests/fixtures/convert)."""
    shutil.copytree(REPO / "tests" / "fixtures" / "convert" / "lisa" / "checkpoint", path)


def clip_folder(path: Path) -> None:
    """``clip-vit-large-patch14``: the tiny CLIP folder that checkpoint was made with."""
    shutil.copytree(REPO / "tests" / "fixtures" / "convert" / "lisa" / "clip", path)


def glamm_checkpoint(path: Path) -> None:
    """``GLaMM-FullScope``: the tiny GLaMM checkpoint GLaMM's own code wrote."""
    shutil.copytree(REPO / "tests" / "fixtures" / "convert" / "glamm" / "checkpoint", path)


def glamm_clip_folder(path: Path) -> None:
    """``clip-vit-large-patch14-336``: the tiny 336 px CLIP folder of that checkpoint."""
    shutil.copytree(REPO / "tests" / "fixtures" / "convert" / "glamm" / "clip", path)


INPUTS = {"out": tiny_model, "photo.jpg": photo, "refer/refcocog": refer_folder,
          "refer/refcoco": refer_folder, "coco/instances_val2017.json": coco_val2017,
          "configs": configs_link, "LISA-7B-v1": lisa_checkpoint,
          "clip-vit-large-patch14": clip_folder, "GLaMM-FullScope": glamm_checkpoint,
          "clip-vit-large-patch14-336": glamm_clip_folder}


# -- reading and rewriting commands --------------------------------------------------------------

def readme_commands(text: str) -> list[list[str]]:
    """The words of each command in the ```bash blocks, in order (comments dropped,
    continuation lines joined)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def as_typed(words: list[str]) -> str:
    return " ".join(words)


def optional_variants(words: list[str]) -> list[list[str]]:
    """Without the ``[...]`` parts, then (when there are any) with all of them, brackets off."""
    without, with_all, depth = [], [], 0
    for word in words:
        depth += word.startswith("[")
        plain = word.removeprefix("[").removesuffix("]")
        with_all.append(plain)
        if not depth:
            without.append(plain)
        depth -= word.endswith("]")
    return [without] if without == with_all else [without, with_all]


def tiny_runs(words: list[str], port: int) -> list[list[str]]:
    """The argv of every run of a README command, after the optional parts and ``TINY``."""
    runs = []
    for variant in optional_variants(words):
        line = shlex.join(variant)
        for pattern, replacement, _why in TINY:
            line = re.sub(pattern, replacement.format(port=port), line)
        runs.append(shlex.split(line))
    return runs


def prefix(argv: list[str]) -> str:
    return " ".join(argv[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- running them --------------------------------------------------------------------------------

def user_env(work: Path) -> dict[str, str]:
    """This environment's scripts first on PATH; HOME in the work folder (chat's history file)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(work)
    # an in-process training test of this session set these (and its process group holds
    # MASTER_PORT): a user's shell has none of them
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def failure(argv: list[str], code, output: str) -> str:
    return f"`{shlex.join(argv)}` exited with {code}:\n{output[-4000:]}"


def run_to_end(argv: list[str], work: Path, env: dict) -> str:
    proc = subprocess.run(argv, cwd=work, env=env, input=STDIN, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, failure(argv, proc.returncode, output)
    return proc.stdout


def serve_one_page(argv: list[str], work: Path, env: dict, port: int) -> str:
    """Start a server command, fetch its page once, stop it; the page's text."""
    log = work / f"server-{port}.log"
    with open(log, "w") as out:
        server = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        return wait_for_page(f"http://127.0.0.1:{port}/", server, argv, log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_for_page(url: str, server: subprocess.Popen, argv: list[str], log: Path) -> str:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(failure(argv, server.returncode, log.read_text()))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                return response.read().decode("utf-8", "replace")
        except OSError:  # not listening yet
            time.sleep(1)
    pytest.fail(f"`{shlex.join(argv)}` did not answer {url} in {SERVER_START_S} s:\n"
                f"{log.read_text()[-4000:]}")


def check_outputs(argv: list[str], printed: str, work: Path) -> None:
    typed = shlex.join(argv)
    fitting = [key for key in PRINTS if typed == key or typed.startswith(key + " ")]
    expected = PRINTS[max(fitting, key=len)] if fitting else None
    assert expected is None or expected in printed, f"`{shlex.join(argv)}` printed:\n{printed[-4000:]}"
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("--output", "--out"):
            folder = work / value
            assert folder.is_dir() and any(folder.iterdir()), f"`{shlex.join(argv)}`: {value} is empty"


# -- tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    return readme_commands(README.read_text(encoding="utf-8"))


@pytest.mark.slow  # about a dozen processes, each loading torch
def test_every_readme_command_runs_as_typed(commands, tmp_path):
    work = tmp_path / "repo"
    for relative, make in INPUTS.items():
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        make(work / relative)
    env = user_env(work)
    ran = 0
    for words in commands:
        if as_typed(words) in NOT_RUN:
            continue
        port = free_port()
        for argv in tiny_runs(words, port):
            assert shutil.which(argv[0], path=env["PATH"]), f"{argv[0]}: not installed"
            if prefix(argv) in SERVERS:
                page = serve_one_page(argv, work, env, port)
                assert "<html" in page.lower() and "gradio" in page.lower()
                continue
            check_outputs(argv, run_to_end(argv, work, env), work)
            ran += 1
    assert ran, "no README command ran: are its ```bash blocks still found?"


def test_not_run_commands_are_in_the_readme_and_what_can_be_checked_is(commands):
    typed = [as_typed(words) for words in commands]
    assert set(NOT_RUN) <= set(typed), f"stale NOT_RUN entries: {set(NOT_RUN) - set(typed)}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for command in NOT_RUN:
        words = command.split()
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.M), command
        for flag, value in zip(words, words[1:], strict=False):
            if flag in ("--module", "-m"):
                assert importlib.util.find_spec(value) is not None, command
            if flag == "--config":
                assert_needs_7b_checkpoints(REPO / value)


def assert_needs_7b_checkpoints(config_file: Path) -> None:
    """The training config loads, and its model starts from checkpoint files (the reason)."""
    from segllm.train.args import load_train_config

    model = load_train_config(config_file).model
    assert model.llava_dir and model.decoder_checkpoint, config_file


def test_inputs_are_named_by_the_readme(commands):
    named = {word.rstrip("/") for words in commands for word in words}
    named |= {str(parent) for word in named for parent in Path(word).parents}
    assert [name for name in INPUTS if name not in named] == []


def test_optional_parts_and_tiny_rules():
    words = shlex.split("segllm train --config c.yaml optim.lr=1e-3 [--resume] [--dtype bf16]")
    assert tiny_runs(words, port=1) == [
        shlex.split("segllm train --config c.yaml optim.lr=1e-3 max_steps=2 validation.max_samples=2"),
        shlex.split("segllm train --config c.yaml optim.lr=1e-3 max_steps=2 validation.max_samples=2 "
                    "--resume --dtype bf16"),
    ]
    assert tiny_runs(shlex.split("segllm serve --model out/ --port 7860"), port=5123) == [
        ["segllm", "serve", "--model", "out/", "--port", "5123"]]
    assert tiny_runs(["segllm", "build-data", "synthetic", "--num", "1000"], port=1) == [
        ["segllm", "build-data", "synthetic", "--num", "4"]]
    text = "x\n```bash\nmake a   # why\nsegllm b --x 1 \\\n  --y 2\n```\n```python\nnot(me)\n```\n"
    assert readme_commands(text) == [["make", "a"], ["segllm", "b", "--x", "1", "--y", "2"]]
