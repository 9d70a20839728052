"""``segllm chat``: talk to a model about one image, in the terminal or from a script.

    segllm chat --model ckpt/ --image photo.jpg                 # interactive (readline history)
    segllm chat --model ckpt/ --image photo.jpg --script q.txt  # one question a line
    segllm chat --model glamm/ --image photo.jpg --box 40,60,120,90  # <region> = that box

Each round writes ``OUT/round_NN/``: ``mask_J.png`` (0/255), ``masks.json`` (question, answer,
and per mask its COCO RLE, box and score) and ``overlay.png`` (the round's masks in colour,
labelled with the round). An ``OUT`` that already holds files (an earlier chat) is left alone:
the new chat goes to the first free ``OUT-2``, ``OUT-3``, ... Interactive commands: ``/undo``,
``/history``, ``/quit``; Ctrl-C cancels the question being typed or answered (the chat goes
on), Ctrl-D ends the chat. A refused question prints why and the chat goes on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

HISTORY_FILE = Path.home() / ".segllm_chat_history"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="directory written by save_pretrained (default: the "
                        "shipped models/segllm-shapes)")
    from .video import add_video_input_arguments, add_video_model_arguments

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="the image to talk about")
    source.add_argument("--video", help="a video file or a folder of frames: each question is "
                        "segmented through the whole video (as `segllm video`)")
    parser.add_argument("--script", help="file with one question a line (# starts a comment)")
    parser.add_argument("--out", default="chat_outputs", help="where rounds are saved")
    parser.add_argument("--history-file", default=str(HISTORY_FILE),
                        help="readline history of the interactive prompt")
    add_model_arguments(parser)
    video = parser.add_argument_group("with --video")
    add_video_input_arguments(video)
    add_video_model_arguments(video)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Loading and decoding options shared with ``segllm serve``."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto (default): bf16 on a CPU where it is measured faster, else "
                             "fp32; on a GPU the saved dtype")
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument("--load-in-4bit", action="store_true", help="NF4 LLM (bitsandbytes)")
    quant.add_argument("--load-in-8bit", action="store_true", help="int8 LLM (bitsandbytes)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 decodes greedily; above 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--box", action="append", default=[], metavar="X,Y,W,H",
                        type=parse_box,
                        help="a region in pixels that <region> (the first --box) or "
                             "<region:i> in a question stands for; repeat for more regions. "
                             "GLaMM models read it with their region encoder, SegLLM models "
                             "as a mask")


def parse_box(text: str) -> list[float]:
    """``x,y,w,h`` in pixels -> four numbers (argparse reports a bad one with exit code 2)."""
    parts = text.split(",")
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not x,y,w,h with a positive width and "
                                         "height")
    return box


def generation_from_args(args):
    """The ``GenerationConfig`` the command-line options describe."""
    from segllm.pipeline import GenerationConfig

    sample = args.temperature > 0
    return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=sample,
                            temperature=args.temperature if sample else 1.0, top_p=args.top_p,
                            seed=args.seed)


def load_pipeline(args):
    """The pipeline of ``--model`` (the shipped model when it is not given)."""
    from segllm.pipeline import SegLLMPipeline
    from segllm.shipped import resolve_model_dir

    return SegLLMPipeline.from_pretrained(resolve_model_dir(args.model), dtype=args.dtype, device=args.device,
                                          load_in_4bit=args.load_in_4bit,
                                          load_in_8bit=args.load_in_8bit,
                                          generation=generation_from_args(args))


class ChatError(Exception):
    """A bad ``--script`` or ``--out``: one line for the user, exit code 2."""


def run(args: argparse.Namespace) -> int:
    from segllm.pipeline import ImageError

    if args.video:
        from . import video

        args.query = []
        return video.run(args)

    try:
        questions = read_script(Path(args.script)) if args.script else None
        pipeline = load_pipeline(args)
        session = pipeline.start(args.image, orientation="exif")  # a user's photo
        out = claim_output_folder(Path(args.out))
    except ImageError as err:
        print(f"error: {args.image}: {err}", file=sys.stderr)
        return 2
    except (ChatError, FileNotFoundError) as err:  # FileNotFoundError: no model folder
        print(f"error: {err}", file=sys.stderr)
        return 2
    session = RegionSession(session, args.box) if args.box else session
    if questions is not None:
        try:
            return run_script(session, questions, out)
        except KeyboardInterrupt:
            print(f"\ninterrupted after {session.num_rounds} round(s); they are in {out}")
            return 130
    return run_interactive(session, out, history_file=Path(args.history_file))


def read_script(path: Path) -> list[str]:
    """Questions of a script file: one a line (split at ``\n`` only: ``str.splitlines`` would
    also split at characters such as U+2028 or \\x1c inside a question), blank lines and ``#``
    comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChatError(f"{path}: no such script file") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ChatError(f"{path}, line {line}: not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise ChatError(f"{path}: cannot read the script ({err.strerror})") from None
    lines = [line.strip() for line in text.split("\n")]
    return [line for line in lines if line and not line.startswith("#")]


def claim_output_folder(out: Path) -> Path:
    """The folder this chat writes to: ``out`` when it is new or empty, else the first
    ``out-N`` (N = 2, 3, ...) that is, so two chats' rounds never mix. Created here (``mkdir``
    claims a name even against another chat starting at the same time)."""
    if out.exists() and not out.is_dir():
        raise ChatError(f"--out {out}: exists and is not a folder")
    candidates = [out] + [out.with_name(f"{out.name}-{n}") for n in range(2, 1000)]
    for folder in candidates:
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            if not folder.is_dir() or any(folder.iterdir()):
                continue
        except OSError as err:
            raise ChatError(f"--out {folder}: cannot create the folder ({err.strerror})") from None
        if folder != out:
            print(f"note: {out} holds an earlier chat; this one is saved in {folder}")
        return folder
    raise ChatError(f"--out {out}: {out}-2 to {out}-999 are all in use; choose another --out")


class RegionSession:
    """A chat session whose questions get the ``--box`` regions when they name one (a
    question without a region tag is asked as it is)."""

    def __init__(self, session, boxes: list[list[float]]):
        self._session = session
        self._boxes = boxes

    def ask(self, question: str, **kwargs):
        from segllm.tokens import REGION_PATTERN

        if REGION_PATTERN.search(question) and "regions" not in kwargs:
            kwargs["regions"] = self._boxes
        return self._session.ask(question, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def run_script(session, questions: Iterable[str], out: Path) -> int:
    """Ask every question; 0 when all were answered, 1 when any was refused."""
    failures = 0
    for question in questions:
        failures += not ask_and_save(session, question, out)
    return 1 if failures else 0


def run_interactive(session, out: Path, lines: Iterator[str] | None = None,
                    history_file: Path = HISTORY_FILE) -> int:
    """A prompt loop; ``lines`` replaces the terminal (tests)."""
    history = _start_readline(history_file)
    print(f"image {session.size[1]}x{session.size[0]}; refer to round k with <ref:k>; "
          "/undo, /history, /quit")
    source = lines if lines is not None else _prompts(session)
    try:
        for line in source:
            command = line.strip()
            if command in ("/quit", "/exit"):
                break
            if command == "/undo":
                undo(session, out)
            elif command == "/history":
                for reply in session.history:
                    print(f"[{reply.round}] {reply.question} -> {reply.text}")
            else:
                ask_or_cancel(session, line, out)
    finally:
        _save_readline(history, history_file)
    return 0


def _prompts(session) -> Iterator[str]:
    """Lines typed at the prompt: Ctrl-C drops the line being typed, Ctrl-D (end of input)
    ends the chat."""
    while True:
        try:
            yield input(f"round {session.num_rounds}> ")
        except KeyboardInterrupt:
            print("\n(cancelled; Ctrl-D or /quit ends the chat)")
        except EOFError:
            print()
            return


def ask_or_cancel(session, question: str, out: Path) -> bool:
    """``ask_and_save``, where Ctrl-C while the model answers cancels the round: the session
    and ``out`` are left as they were before the question."""
    rounds = session.num_rounds
    try:
        return ask_and_save(session, question, out)
    except KeyboardInterrupt:
        while session.num_rounds > rounds:  # interrupted after the round was stored
            shutil.rmtree(round_folder(out, session.undo().round), ignore_errors=True)
        print(f"\ncancelled: round {rounds} was not asked; the chat goes on")
        return False


def ask_and_save(session, question: str, out: Path) -> bool:
    """Ask, print the answer and where its files went; print the reason when refused."""
    from segllm.pipeline import InputError

    try:
        reply = session.ask(question)
    except InputError as err:
        print(f"refused: {err}")
        return False
    folder = save_round(out, session.image, reply)
    print(f"[{reply.round}] {reply.text}")
    for note in reply.warnings:
        print(f"  note: {note}")
    print(f"  {len(reply.masks)} mask(s) -> {folder}")
    return True


def undo(session, out: Path) -> None:
    from segllm.pipeline import InputError

    try:
        reply = session.undo()
    except InputError as err:
        print(f"refused: {err}")
        return
    shutil.rmtree(round_folder(out, reply.round), ignore_errors=True)
    print(f"undid round {reply.round}: {reply.question}")


def round_folder(out: Path, round_index: int) -> Path:
    return out / f"round_{round_index:02d}"


OVERLAY_MIN_SIDE = 384
"""Overlays of smaller images are enlarged to this so the round labels stay small beside them."""


def save_round(out: Path, image, reply) -> Path:
    """Write a round's masks (PNG), their RLE (JSON) and the overlay; returns the folder."""
    from PIL import Image

    from segllm.masks import encode_rle, render_overlay

    folder = round_folder(out, reply.round)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for j, (mask, score, box) in enumerate(zip(reply.masks, reply.scores, reply.boxes,
                                               strict=True)):
        Image.fromarray(mask.astype("uint8") * 255, mode="L").save(folder / f"mask_{j}.png")
        entries.append({"index": j, "rle": encode_rle(mask), "bbox": box, "score": score,
                        "png": f"mask_{j}.png"})
    record = {"round": reply.round, "question": reply.question, "answer": reply.text,
              "height": image.height, "width": image.width, "masks": entries,
              "warnings": reply.warnings}
    (folder / "masks.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    render_overlay(image, reply.masks, labels=overlay_labels(reply),
                   min_side=OVERLAY_MIN_SIDE).save(folder / "overlay.png")
    return folder


def overlay_labels(reply) -> list[str]:
    """``round r`` for a single mask, ``round r.j`` when the round has several."""
    if len(reply.masks) == 1:
        return [f"round {reply.round}"]
    return [f"round {reply.round}.{j}" for j in range(len(reply.masks))]


def _start_readline(history_file: Path):
    """Load the readline history; None where readline is missing."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline
        return None
    if history_file.is_file():
        try:
            readline.read_history_file(history_file)
        except OSError:
            pass
    readline.set_history_length(1000)
    return readline


def _save_readline(readline, history_file: Path) -> None:
    if readline is None:
        return
    try:
        readline.write_history_file(history_file)
    except OSError:
        pass
