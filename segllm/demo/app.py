"""``segllm serve``: a gradio page to chat with a model about an image.

Click one of the bundled example scenes (its questions are offered as suggestions to click) or
upload an image; ask questions over several rounds, see each round's overlay, undo the last
round, download every mask as a zip (PNG masks, COCO RLE in JSON, overlays). Without
``--model`` the shipped model (``segllm.shipped``) is served.

Two controls write the question's mask inputs for the visitor: clicking an earlier round's
overlay inserts ``<ref:k>`` at the cursor (round k's masks come back; the CLI and the API take
the same text), and a box drawn on the image (click two opposite corners), inserted with
"Insert region", comes in as ``<region>`` (``ChatSession.ask(regions=[box])``).

Uploads are limited in bytes and pixels (PIL's decompression-bomb guard stays on); a file that
is not an image gets a message, not a stack trace.

The "Video" section takes a video file and a query through the video path (``segllm.video``,
``segllm/demo/video.py``): the overlay GIF is shown and the per-frame masks offered to download;
a long video is read at a stride that keeps at most ``--video-max-frames`` frames.

The page logic is ``SegLLMDemo``: plain methods that the gradio events call, testable without a
browser. Sessions live in this process (a key in the page's state points to them). What a
visitor costs is bounded: an image is kept at most ``max_side`` pixels across (never less than
the model's own inputs take; masks come back at the kept size), a chat idle for ``session_ttl``
seconds or the least recently used one past ``max_sessions`` is dropped with every file it
wrote, gradio's cache forgets files older than ``session_ttl`` (``Blocks(delete_cache=...)``),
and a visitor whose chat was dropped is told it expired. ``segllm serve`` keeps everything it
writes in one folder and removes it when it stops (Ctrl-C or SIGTERM), hands freed memory back
to the system, and bounds how many pages' state gradio keeps.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import html
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from segllm.commands.chat import add_model_arguments, load_pipeline, save_round
from segllm.shipped import SCENES_DIR
from segllm.tokens import REF_PATTERN, REGION_PATTERN

from .video import MAX_VIDEO_FRAMES, VIDEO_TYPES, segment_video

Outputs = tuple  # what an event returns, in the order of its gradio outputs

SUGGESTIONS = 4
"""Scene questions offered at a time."""

BOX_COLOR = (255, 40, 40)

PREVIEW_MIN_SIDE = 512
"""A small image is shown enlarged to this (whole factors): larger than the page shows it, so
the browser only shrinks it and gradio's click coordinates (natural-size pixels) stay exact."""

HOW_TO = ("Ask a question (or click a suggestion). Click a round's overlay below to refer to it "
          "(`<ref:k>`); click two opposite corners on the image to draw a box, then "
          "**Insert region** (`<region>`).")

MAX_SIDE = 1024
"""Default for the longest side an image is kept at (SAM's input; CLIP's is smaller)."""

SESSION_TTL_S = 1800.0
"""Default for how long an idle chat is kept, in seconds."""

NO_IMAGE = "Upload an image first."

WORKER_THREADS = 8
"""Threads gradio runs events on (its default is 40): events share the model one at a time per
kind of event anyway, and every thread keeps memory of its own."""

_CACHE_FOLDER = re.compile(r"[0-9a-f]{64}")
"""How gradio names the folder of a cached file (its SHA-256)."""

CSS = "#scenes img { image-rendering: pixelated; }"
"""The 64-pixel example scenes stay crisp when their thumbnails are enlarged."""

CURSOR_JS = """(question, cursor, ...rest) => {
  const box = document.querySelector('#question textarea');
  return [question, box ? box.selectionStart : null, ...rest];
}"""
"""Runs in the browser before ``refer`` / ``insert_region``: passes the question box's cursor
(the position it keeps after losing focus) so the tag lands where the visitor was typing."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="directory written by save_pretrained (default: the "
                        "shipped models/segllm-shapes, or $SEGLLM_MODEL)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-mb", type=float, default=10.0, help="largest upload")
    parser.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image")
    parser.add_argument("--max-sessions", type=_positive(int), default=32,
                        help="chats kept in memory; the least recently used is dropped past this")
    parser.add_argument("--session-ttl", type=_positive(float), default=SESSION_TTL_S,
                        help="seconds an idle chat (and gradio's copy of its files) is kept")
    parser.add_argument("--max-side", type=_positive(int), default=MAX_SIDE,
                        help="longest side, in pixels, an image is kept at (never below what "
                        "the model takes)")
    parser.add_argument("--video-max-frames", type=_positive(int), default=MAX_VIDEO_FRAMES,
                        help="frames a video is read at most (a longer one is strided)")
    parser.add_argument("--workdir", default=None,
                        help="where a folder for the chats' files and gradio's cache is made "
                        "(removed at exit; default: the system's temp folder)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    max_file_bytes = upload_limit_bytes(args.max_file_mb)
    try:
        pipeline = load_pipeline(args)
        root = Path(tempfile.mkdtemp(prefix="segllm-serve-", dir=args.workdir))
    except (FileNotFoundError, NotADirectoryError) as err:  # no model / no --workdir: no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    # every file of this server in one folder: gradio reads its cache folder from the
    # environment when its components are made (so before build)
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    demo = SegLLMDemo(pipeline, max_file_bytes=max_file_bytes, max_pixels=args.max_pixels,
                      max_sessions=args.max_sessions, session_ttl=args.session_ttl,
                      max_side=args.max_side, output_root=root / "chats",
                      cache_dir=root / "gradio", video_max_frames=args.video_max_frames)
    demo.start_sweeper()
    previous = _stop_on_sigterm()
    try:
        blocks = demo.build()
        # gradio keeps every page's state (here a key) until an hour after the page closes and
        # a client without a page never closes: bound it so visitors cannot grow it for ever
        blocks.queue(max_size=32).launch(server_name=args.host, server_port=args.port,
                                         max_file_size=max_file_bytes, show_error=True, css=CSS,
                                         state_session_capacity=state_capacity(args.max_sessions),
                                         max_threads=WORKER_THREADS)
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _stop_on_sigterm():
    """A service manager's stop (SIGTERM) ends the server as Ctrl-C does, so its folder is
    removed; returns the handler it replaces."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _positive(kind):
    """An argparse type: a number of ``kind`` above zero."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def upload_limit_bytes(max_file_mb: float) -> int:
    """The upload limit in bytes: gradio takes an int as bytes, while its strings accept only
    whole numbers ("10.0mb" is refused), so the MiB of ``--max-file-mb`` are converted here."""
    return int(max_file_mb * 2**20)


@dataclass
class _Chat:
    """One visitor's conversation and the files it produced."""

    session: object
    folder: Path
    overlays: list[tuple[str, str]] = field(default_factory=list)  # (path, caption)
    messages: list[dict] = field(default_factory=list)
    scene: dict | None = None  # the example scene's record (questions, ground truth)
    scale: int = 1  # preview pixels per image pixel
    corner: tuple[int, int] | None = None  # a box's first click, in image pixels
    box: list[int] | None = None  # the drawn box, [x, y, w, h] in image pixels
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  # events running on it: never dropped then

    @property
    def rounds_dir(self) -> Path:
        return self.folder / "rounds"


class SegLLMDemo:
    """The demo's behaviour, independent of gradio's widgets.

    Args:
        pipeline: a ``SegLLMPipeline``.
        generation: decoding settings for every chat (default: the pipeline's).
        max_file_bytes, max_pixels: upload limits (checked before decoding).
        max_sessions: chats kept; past it the least recently used is dropped.
        session_ttl: seconds a chat is kept without activity (and gradio's cached files).
        max_side: the longest side an image is kept at, raised to what the model's inputs take.
        output_root: where each chat's masks and overlays are written (a temp dir by default).
        cache_dir: gradio's cache folder when it is this server's own (empty folders that
            gradio leaves there are removed); None leaves gradio's folder alone.
        scenes_dir: example scenes (``scenes.jsonl`` + images); the bundled ones by default.
        video_max_frames: frames a video is read at most (a longer one is strided).
    """

    def __init__(self, pipeline, generation=None, max_file_bytes: int = 10 * 2**20,
                 max_pixels: int = 25_000_000, max_sessions: int = 32,
                 session_ttl: float = SESSION_TTL_S, max_side: int = MAX_SIDE,
                 output_root: str | Path | None = None, cache_dir: str | Path | None = None,
                 scenes_dir: str | Path = SCENES_DIR, video_max_frames: int = MAX_VIDEO_FRAMES):
        from segllm.images import ImageLimits

        self.pipeline = pipeline
        self.generation = generation
        self.limits = ImageLimits(max_pixels=max_pixels, max_file_bytes=max_file_bytes,
                                  max_model_side=pipeline.limits.max_model_side)
        self._owns_root = output_root is None  # a temp folder of its own: removed by close()
        self.output_root = Path(output_root or tempfile.mkdtemp(prefix="segllm-demo-"))
        self.output_root.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_sessions = max_sessions
        self.session_ttl = session_ttl
        self.max_side = max(max_side, model_input_side(pipeline))
        self._chats: OrderedDict[str, _Chat] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.scenes_dir = Path(scenes_dir)
        self.scenes = read_scenes(self.scenes_dir)
        self.video_max_frames = video_max_frames

    # -- events (each returns the new values of its outputs) ---------------------------------

    def upload(self, path: str | None, key: str | None) -> Outputs:
        """A new image: (key, preview, chat, gallery, download, status, suggestions)."""
        from segllm.images import ImageError, load_image

        self._drop(key)
        if not path:
            return None, None, [], [], None, "Upload an image or click an example scene.", []
        try:
            # a user's photo: shown, and answered, as EXIF says
            image = load_image(path, orientation="exif", limits=self.limits)
        except ImageError as err:
            return _refused_image(err)
        return self._open(image, orientation="exif", loaded="Image loaded")

    def load_scene(self, index: int, key: str | None) -> Outputs:
        """An example scene clicked: like ``upload``, its questions offered as suggestions."""
        from segllm.images import load_image

        self._drop(key)
        scene = self.scenes[index]
        image = load_image(self.scenes_dir / scene["image"], orientation="stored",
                           limits=self.limits)
        return self._open(image, orientation="stored", scene=scene, loaded=f"Scene {index} loaded")

    def ask(self, question: str, key: str | None) -> Outputs:
        """A question: (chat, gallery, download, status, question box, suggestions)."""
        with self._using(key) as chat:
            if chat is None:
                return [], [], None, self._missing(key), question, []
            return self._ask(chat, question)

    def _ask(self, chat: _Chat, question: str) -> Outputs:
        from segllm.pipeline import InputError

        # the drawn box goes in only when the question asks for it (no note about an unused box)
        regions = [chat.box] if chat.box and REGION_PATTERN.search(question) else None
        try:
            reply = chat.session.ask(question, regions=regions)
        except InputError as err:
            return (chat.messages, chat.overlays, self._zip(chat),
                    f"**Refused:** {html.escape(str(err))}", question, self._suggest(chat))
        round_dir = save_round(chat.rounds_dir, chat.session.image, reply)
        if regions:  # the round's overlay shows the box its question used
            _mark_overlay(round_dir / "overlay.png", box=chat.box,
                          width=chat.session.image.width)
        caption = f"round {reply.round}: {reply.text}"
        chat.overlays.append((str(round_dir / "overlay.png"), caption))
        chat.messages += [{"role": "user", "content": _shown(f"[{reply.round}] {question}")},
                          {"role": "assistant", "content": _shown(reply.text or "(no text)")}]
        notes = "".join(f" Note: {html.escape(n)}." for n in reply.warnings)
        status = f"Round {reply.round}: {len(reply.masks)} mask(s).{_scene_note(chat, reply)}{notes}"
        return chat.messages, chat.overlays, self._zip(chat), status, "", self._suggest(chat)

    def undo(self, key: str | None) -> Outputs:
        """Undo the last round: (chat, gallery, download, status, suggestions)."""
        from segllm.pipeline import InputError

        with self._using(key) as chat:
            if chat is None:
                return [], [], None, self._missing(key), []
            try:
                reply = chat.session.undo()
            except InputError as err:
                return (chat.messages, chat.overlays, self._zip(chat), f"**Refused:** {err}",
                        self._suggest(chat))
            shutil.rmtree(chat.rounds_dir / f"round_{reply.round:02d}", ignore_errors=True)
            chat.overlays.pop()
            del chat.messages[-2:]
            return (chat.messages, chat.overlays, self._zip(chat), f"Undid round {reply.round}.",
                    self._suggest(chat))

    def segment_video(self, path: str | None, query: str, key: str | None) -> Outputs:
        """A query over an uploaded video: (key, overlay GIF, masks file, status). Its files
        live and expire like a chat's; a new query replaces the last one's."""
        from segllm.video.pipeline import VideoSegmenter

        self._drop(key)
        key = uuid.uuid4().hex
        folder = self.output_root / key
        folder.mkdir(parents=True)
        self._remember(key, _Chat(session=None, folder=folder))
        with self._using(key):
            segmenter = VideoSegmenter(self.pipeline, num_candidates=4,
                                       generation=self.generation)
            answer = segment_video(segmenter, path, query, folder,
                                   max_frames=self.video_max_frames, limits=self.limits)
        return (key, str(answer.gif) if answer.gif else None,
                str(answer.masks) if answer.masks else None, answer.status)

    def suggestions(self, key: str | None) -> list[str]:
        """Questions to offer: an example scene's next question while the chat follows the
        scene (so its ``<ref:k>`` mean what the scene means), then its questions that refer
        to no round."""
        return self._suggest(self._chats.get(key) if key else None)

    def _suggest(self, chat: _Chat | None) -> list[str]:
        if chat is None or chat.scene is None:
            return []
        questions = [rnd["question"] for rnd in chat.scene["rounds"]]
        asked = [reply.question.strip() for reply in chat.session.history]
        offered = questions[len(asked):len(asked) + 1] if _follows(asked, questions) else []
        offered += [q for q in questions
                    if not REF_PATTERN.search(q) and q not in asked and q not in offered]
        return offered[:SUGGESTIONS]

    def refer(self, index: int, question: str, cursor: float | None,
              key: str | None) -> Outputs:
        """Round ``index``'s overlay clicked: ``<ref:index>`` into the question at the cursor:
        (question box, status)."""
        with self._using(key) as chat:
            if chat is None:
                return question, self._missing(key)
            history = chat.session.history
        if not 0 <= index < len(history):
            return question, f"There is no round {index}."
        if not any(mask.any() for mask in history[index].masks):
            return question, f"Round {index} has no mask to refer to."
        return (insert_tag(question, f"<ref:{index}>", cursor=cursor),
                f"Inserted `<ref:{index}>`: round {index}'s mask(s) come back with the question.")

    def click_image(self, x: int, y: int, key: str | None) -> Outputs:
        """A click on the shown image at (x, y): a box's first corner, then the opposite one
        (a third click starts a new box): (preview, status)."""
        with self._using(key) as chat:
            if chat is None:
                return None, self._missing(key)
            return self._click(chat, x, y)

    def _click(self, chat: _Chat, x: int, y: int) -> Outputs:
        width, height = chat.session.image.size
        point = (min(max(int(x) // chat.scale, 0), width - 1),
                 min(max(int(y) // chat.scale, 0), height - 1))
        if chat.corner is None:
            chat.corner, chat.box = point, None
            return self._preview(chat), f"Corner at {point}: click the opposite corner."
        (x0, y0), (x1, y1) = chat.corner, point
        chat.corner = None
        chat.box = [min(x0, x1), min(y0, y1), abs(x1 - x0) + 1, abs(y1 - y0) + 1]
        return (self._preview(chat), f"Box [x, y, w, h] = {chat.box} drawn: "
                "**Insert region** puts `<region>` in the question.")

    def insert_region(self, question: str, cursor: float | None, key: str | None) -> Outputs:
        """``<region>`` (the drawn box) into the question at the cursor: (question box, status)."""
        with self._using(key) as chat:
            if chat is None:
                return question, self._missing(key)
        if chat.box is None:
            return question, "Draw a box first: click two opposite corners on the image."
        return (insert_tag(question, "<region>", cursor=cursor),
                f"Inserted `<region>`: the box {chat.box} comes in with the question.")

    def clear_box(self, key: str | None) -> Outputs:
        """Forget the drawn box: (preview, status)."""
        with self._using(key) as chat:
            if chat is None:
                return None, self._missing(key)
            chat.corner = chat.box = None
            return self._preview(chat), "Box cleared."

    # -- the page -----------------------------------------------------------------------------

    def build(self):
        """The gradio Blocks; element ids (#scenes, #upload, #preview, #insert-region,
        #clear-box, #suggestions, #question, #send, #undo, #overlays, #status, #chat,
        #download; #video, #video-file, #video-query, #video-send, #video-overlay,
        #video-status, #video-masks) are what the browser test drives. Launch it with
        ``css=CSS``."""
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr

        # the bundled scenes are served from where they are, not copied into gradio's cache
        # (where an upload of the same picture would share, and so expire, their copy)
        gr.set_static_paths([self.scenes_dir])

        with gr.Blocks(title="SegLLM", analytics_enabled=False,
                       delete_cache=self.cache_schedule()) as blocks:
            gr.Markdown("## SegLLM: multi-round reasoning segmentation")
            # gradio deletes a closed page's state (an hour after): its chat goes with it
            key = gr.State(None, delete_callback=self._drop)
            cursor = gr.Number(None, visible=False, precision=0)  # filled in by CURSOR_JS
            with gr.Row():
                with gr.Column(scale=1):
                    scenes = gr.Dataset(components=["image"], samples=self.scene_samples(),
                                        type="index", label="Example scenes: click one",
                                        elem_id="scenes", samples_per_page=len(self.scenes) or 1,
                                        visible=bool(self.scenes))
                    upload = gr.UploadButton("…or upload an image", file_types=["image"],
                                             type="filepath", elem_id="upload", size="sm")
                    preview = gr.Image(label="Image: click two opposite corners to draw a box",
                                       interactive=False, elem_id="preview", type="pil",
                                       height=400)
                    with gr.Row():
                        region = gr.Button("Insert region", elem_id="insert-region", size="sm")
                        clear = gr.Button("Clear box", elem_id="clear-box", size="sm")
                with gr.Column(scale=1):
                    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=320)
                    # buttons, not a gr.Dataset: its samples are cut at 60 characters
                    with gr.Column(elem_id="suggestions"):
                        heading = gr.Markdown("Suggested questions (click one to use it):",
                                              visible=False)
                        offers = [gr.Button(visible=False, size="sm") for _ in range(SUGGESTIONS)]
                    question = gr.Textbox(label="Question", elem_id="question", lines=1,
                                          placeholder="Segment the red shape. / Segment the "
                                                      "shape left of <ref:0>.")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        undo = gr.Button("Undo last round", elem_id="undo")
                    status = gr.Markdown("Click an example scene or upload an image to start.",
                                         elem_id="status")
                    download = gr.File(label="Masks (zip)", interactive=False,
                                       elem_id="download", height=100)
            gallery = gr.Gallery(label="Rounds: click one to refer to it in the question "
                                       "(<ref:k>)", elem_id="overlays", columns=6, height=260,
                                 object_fit="contain", allow_preview=False, fit_columns=False)
            video = self._video_section(gr)

            suggestions = [heading, *offers]

            def offered(outputs: Outputs) -> Outputs:  # the last output: suggestions
                *rest, questions = outputs
                shown = [gr.Button(q, visible=True) for q in questions]
                shown += [gr.Button(visible=False) for _ in range(SUGGESTIONS - len(questions))]
                return *rest, gr.Markdown(visible=bool(questions)), *shown

            # api names: what gradio_client (and the load test) call
            opened = [key, preview, chatbot, gallery, download, status, *suggestions]
            scenes.click(lambda i, k: offered(self.load_scene(i, k)), [scenes, key], opened,
                         api_name="load_scene")
            upload.upload(lambda path, k: offered(self.upload(path, k)), [upload, key], opened,
                          api_name="upload")
            for trigger, name in ((send.click, "ask"), (question.submit, "ask_on_enter")):
                trigger(lambda q, k: offered(self.ask(q, k)), [question, key],
                        [chatbot, gallery, download, status, question, *suggestions],
                        api_name=name)
            undo.click(lambda k: offered(self.undo(k)), [key],
                       [chatbot, gallery, download, status, *suggestions], api_name="undo")
            for offer in offers:
                offer.click(lambda text: text, [offer], [question])
            gallery.select(_on_select(gr, self.refer), [question, cursor, key],
                           [question, status], js=CURSOR_JS)
            preview.select(_on_select(gr, lambda xy, k: self.click_image(*xy, k)), [key],
                           [preview, status])
            region.click(self.insert_region, [question, cursor, key], [question, status],
                         js=CURSOR_JS)
            clear.click(self.clear_box, [key], [preview, status])
            video_key, video_file, video_query, video_send, *video_outputs = video
            for trigger, name in ((video_send.click, "segment_video"),
                                  (video_query.submit, "segment_video_on_enter")):
                trigger(self.segment_video, [video_file, video_query, video_key],
                        [video_key, *video_outputs], api_name=name)
        return blocks

    def _video_section(self, gr) -> tuple:
        """The "Video" section's components: (key, file, query, send, GIF, masks, status)."""
        # its own key: a video's files expire like a chat's, apart from the image chat
        video_key = gr.State(None, delete_callback=self._drop)
        with gr.Accordion("Video: upload a video and say what to segment", open=False,
                          elem_id="video"):
            with gr.Row():
                with gr.Column(scale=1):
                    video_file = gr.File(label=f"Video ({', '.join(VIDEO_TYPES)})",
                                         file_types=list(VIDEO_TYPES), type="filepath",
                                         elem_id="video-file", height=100)
                    video_query = gr.Textbox(label="What to segment", elem_id="video-query",
                                             placeholder="the shape that ends up on the left")
                    video_send = gr.Button("Segment the video", variant="primary",
                                           elem_id="video-send")
                    video_status = gr.Markdown("The query picks a target frame, its mask is "
                                               "carried to every frame.", elem_id="video-status")
                with gr.Column(scale=1):
                    overlay = gr.Image(label="Overlay (GIF)", type="filepath", interactive=False,
                                       elem_id="video-overlay", height=320)
                    masks = gr.File(label="Masks per frame (COCO RLE, JSON Lines)",
                                    interactive=False, elem_id="video-masks", height=100)
        return video_key, video_file, video_query, video_send, overlay, masks, video_status

    def scene_samples(self) -> list[list[str]]:
        """The example scenes' image paths, one sample each."""
        return [[str(self.scenes_dir / scene["image"])] for scene in self.scenes]

    # -- what a visitor may cost --------------------------------------------------------------

    def cache_schedule(self) -> tuple[int, int]:
        """gradio's ``delete_cache`` (frequency, age) in whole seconds: its copies of uploads,
        overlays and zips live as long as an idle chat."""
        age = max(1, round(self.session_ttl))
        return max(1, min(age // 4, 600)), age

    def expire_idle(self, now: float | None = None) -> int:
        """Drop the chats idle for more than ``session_ttl`` (not those an event is using);
        returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [key for key, chat in self._chats.items()
                    if not chat.busy and now - chat.last_used > self.session_ttl]
            dropped = [self._chats.pop(key) for key in idle]
        for chat in dropped:
            shutil.rmtree(chat.folder, ignore_errors=True)
        return len(dropped)

    def prune_cache(self, now: float | None = None) -> int:
        """Remove what gradio's cache deletion leaves behind once it is older than one deletion
        period: the empty folder (named by the file's SHA-256) of every file it ever cached,
        and the empty ``tmp*`` file its upload parser leaves per upload (gradio 6); nothing
        else. Only in a cache folder this demo owns."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.cache_schedule()[0]
        removed = 0
        for entry in self.cache_dir.iterdir():
            try:
                info = entry.lstat()
                if info.st_mtime >= cutoff:
                    continue
                if entry.is_dir() and _CACHE_FOLDER.fullmatch(entry.name):
                    entry.rmdir()  # only when empty: refuses otherwise
                elif entry.name.startswith("tmp") and entry.is_file() and info.st_size == 0:
                    entry.unlink()
                else:
                    continue
                removed += 1
            except OSError:
                continue
        return removed

    def start_sweeper(self, period: float | None = None) -> None:
        """Expire idle chats, prune the cache and hand freed memory back every ``period``
        seconds (a quarter of the time to live, at most a minute, by default) in a daemon
        thread, until ``close``."""
        period = period or max(0.5, min(self.session_ttl / 4, 60.0))

        def sweep():
            while not self._stop.wait(period):
                self.expire_idle()
                self.prune_cache()
                release_freed_memory()  # dropped chats, events' temporaries (a few ms)

        self._sweeper = threading.Thread(target=sweep, name="segllm-demo-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stop the sweeper and drop every chat with its files (and the output folder when
        the demo made it)."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join()
        with self._lock:
            chats = list(self._chats.values())
            self._chats.clear()
        for chat in chats:
            shutil.rmtree(chat.folder, ignore_errors=True)
        if self._owns_root:
            shutil.rmtree(self.output_root, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------

    @contextmanager
    def _using(self, key: str | None):
        """The chat of ``key`` (None when there is none), kept from expiry and eviction while
        the event runs, and marked as the most recently used."""
        self.expire_idle()
        with self._lock:
            chat = self._chats.get(key) if key else None
            if chat is not None:
                chat.busy += 1
                self._chats.move_to_end(key)
        try:
            yield chat
        finally:
            if chat is not None:
                with self._lock:
                    chat.busy -= 1
                    chat.last_used = time.monotonic()

    def _missing(self, key: str | None) -> str:
        """Why an event has no chat: none started, or it was dropped."""
        if not key:
            return NO_IMAGE
        minutes = self.session_ttl / 60
        kept = f"{minutes:.0f} minutes" if minutes >= 1 else f"{self.session_ttl:.0f} seconds"
        return (f"**Your chat expired** and its rounds are gone: the server keeps a chat for "
                f"{kept} without activity and at most {self.max_sessions} chats at a time. "
                "Upload the image again or click an example scene to start over.")

    def _open(self, image, *, orientation: str, loaded: str, scene: dict | None = None
              ) -> Outputs:
        """Start a chat on ``image``: (key, preview, chat, gallery, download, status,
        suggestions)."""
        from segllm.images import ImageError

        kept = fit_within(image, self.max_side)
        size = f"{image.width}x{image.height}"
        if kept is not image:
            size += f", kept at {kept.width}x{kept.height}"
        try:
            session = self.pipeline.start(kept, generation=self.generation,
                                          orientation=orientation)
        except ImageError as err:
            return _refused_image(err)
        key = uuid.uuid4().hex
        folder = self.output_root / key
        folder.mkdir(parents=True)
        chat = _Chat(session=session, folder=folder, scene=scene,
                     scale=_preview_scale(*session.image.size))
        self._remember(key, chat)
        return (key, self._preview(chat), [], [], None, f"{loaded} ({size}). {HOW_TO}",
                self._suggest(chat))

    def _preview(self, chat: _Chat):
        """The image as shown: small ones enlarged (whole factors, so a click maps back to one
        pixel), with the drawn box or its first corner."""
        from PIL import Image, ImageDraw

        image, s = chat.session.image, chat.scale
        shown = image.resize((image.width * s, image.height * s), Image.NEAREST)
        if chat.box is not None:
            _draw_box(shown, box=chat.box, scale=s)
        elif chat.corner is not None:
            cx, cy = (v * s + s // 2 for v in chat.corner)
            r = 2 * _line_width(shown)
            ImageDraw.Draw(shown).ellipse([cx - r, cy - r, cx + r, cy + r], fill=BOX_COLOR)
        return shown

    def _remember(self, key: str, chat: _Chat) -> None:
        """Keep a new chat; past ``max_sessions`` the least recently used idle ones go."""
        self.expire_idle()
        with self._lock:
            self._chats[key] = chat
            idle = [k for k, c in self._chats.items() if not c.busy and k != key]
            evicted = [self._chats.pop(k) for k in idle[:max(0, len(self._chats)
                                                             - self.max_sessions)]]
        for old in evicted:
            shutil.rmtree(old.folder, ignore_errors=True)

    def _drop(self, key: str | None) -> None:
        with self._lock:
            chat = self._chats.pop(key, None) if key else None
        if chat is not None:
            shutil.rmtree(chat.folder, ignore_errors=True)

    def _zip(self, chat: _Chat) -> str | None:
        """Every round's files in one zip inside the chat's folder, so it goes with the chat
        (None before the first round). Written whole, then renamed over the last one."""
        if not chat.overlays:
            return None
        target = chat.folder / "segllm-masks.zip"
        partial = shutil.make_archive(str(chat.folder / ".segllm-masks"), "zip",
                                      root_dir=chat.rounds_dir)
        os.replace(partial, target)
        return str(target)


def state_capacity(max_sessions: int) -> int:
    """How many pages' state gradio keeps (the least recently active go first): well above
    the chats kept, so a live chat's page keeps its key."""
    return max(256, 8 * max_sessions)


def release_freed_memory() -> None:
    """Hand the memory of dropped chats back to the system. glibc keeps what a thread freed in
    that thread's arena, and gradio runs events on many threads, so without this the server
    grew by ~100 MB per 50 requests even with every chat gone (tests/demo/test_serve_load.py).
    Nothing to do where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def model_input_side(pipeline) -> int:
    """The longest side the model's inputs take (CLIP's square, the mask decoder's input): an
    image kept at this size gives the model every pixel it would use."""
    cfg = pipeline.config
    decoder_side = max(pipeline.model.decoder.resized_size(1, 1, cfg.decoder_config))
    return max(cfg.vision.image_size, decoder_side)


def fit_within(image, side: int):
    """``image`` scaled down (aspect kept) so its longest side is at most ``side``; the same
    object when it already fits."""
    from PIL import Image

    scale = side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _shown(text: str) -> str:
    """Chat text with ``<ref:k>`` and ``[SEG]`` kept visible (not taken for HTML)."""
    return html.escape(text)


def read_scenes(folder: Path) -> list[dict]:
    """The example scenes' records (none when the folder has no ``scenes.jsonl``)."""
    path = folder / "scenes.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def insert_tag(text: str, tag: str, *, cursor: float | None = None) -> str:
    """``text`` with ``tag`` at ``cursor`` (the end when unknown), spaced off from the words
    around it."""
    at = len(text) if cursor is None or not 0 <= cursor <= len(text) else int(cursor)
    before, after = text[:at], text[at:]
    if before and not before[-1].isspace():
        before += " "
    if after and not after[0].isspace() and after[0] not in ".,;:?!)":
        after = " " + after
    return before + tag + after


def _follows(asked: list[str], questions: list[str]) -> bool:
    """Whether the chat so far asked the scene's questions in the scene's order."""
    return len(asked) <= len(questions) and asked == [q.strip() for q in questions[:len(asked)]]


def _scene_note(chat: _Chat, reply) -> str:
    """The answer against the example scene's ground truth, while the chat follows the scene."""
    from segllm.commands.demo import round_ious
    from segllm.masks import decode_rle

    if chat.scene is None:
        return ""
    rounds = chat.scene["rounds"]
    if not _follows([r.question.strip() for r in chat.session.history],
                    [r["question"] for r in rounds]):
        return ""
    targets = [decode_rle(t["rle"]).astype(bool) for t in rounds[reply.round]["targets"]]
    if not targets:
        verdict = "right" if not reply.masks else "wrong"
        return f" The scene has no such object: answering without a mask is {verdict}."
    ious = ", ".join(f"{v:.2f}" for v in round_ious(reply.masks, targets))
    return f" IoU against the scene's ground truth: {ious}."


def _line_width(image) -> int:
    return max(2, min(image.size) // 150)


def _draw_box(image, *, box: list[int], scale: int) -> None:
    """Outline ``box`` ([x, y, w, h] in image pixels) on ``image``, an enlargement by ``scale``."""
    from PIL import ImageDraw

    x, y, w, h = box
    ImageDraw.Draw(image).rectangle(
        [x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1], outline=BOX_COLOR,
        width=_line_width(image))


def _mark_overlay(path: Path, *, box: list[int], width: int) -> None:
    """Draw ``box`` on a saved overlay (enlarged by a whole factor from ``width`` pixels)."""
    from PIL import Image

    with Image.open(path) as overlay:
        marked = overlay.convert("RGB")
    _draw_box(marked, box=box, scale=marked.width // width)
    marked.save(path)


def _preview_scale(width: int, height: int) -> int:
    """Whole factor that shows a small image at least ``PREVIEW_MIN_SIDE`` px across, never
    past 2048 px on the longer side."""
    short, long = min(width, height), max(width, height)
    if short >= PREVIEW_MIN_SIDE:
        return 1
    return max(1, min(-(-PREVIEW_MIN_SIDE // short), 2048 // long))


def _refused_image(err) -> Outputs:
    return None, None, [], [], None, f"**Refused:** {html.escape(str(err))}", []


def _on_select(gr, fn):
    """A listener that hands ``fn`` the selected item's index (a gallery's position, an image's
    [x, y]) before the inputs; gradio passes ``SelectData`` by this annotation."""
    def listener(evt, *inputs):
        return fn(evt.index, *inputs)

    listener.__annotations__ = {"evt": gr.SelectData}
    return listener
