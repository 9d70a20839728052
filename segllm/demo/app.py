"""``segllm serve``: a gradio page to chat with a model about an uploaded image.

Upload an image, ask questions over several rounds (``<ref:k>`` brings back round k's masks),
see each round's overlay, undo the last round, download every mask as a zip (PNG masks, COCO
RLE in JSON, overlays). Uploads are limited in bytes and pixels (PIL's decompression-bomb guard
stays on); a file that is not an image gets a message, not a stack trace.

The page logic is ``SegLLMDemo``: plain methods that the gradio events call, testable without a
browser. Sessions live in this process (a key in the page's state points to them), the oldest
dropped past ``max_sessions``.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from segllm.commands.chat import add_model_arguments, load_pipeline, save_round

Outputs = tuple  # what an event returns, in the order of its gradio outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="directory written by save_pretrained")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-mb", type=float, default=10.0, help="largest upload")
    parser.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image")
    parser.add_argument("--max-sessions", type=int, default=32,
                        help="chats kept in memory; the oldest is dropped past this")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    demo = SegLLMDemo(load_pipeline(args), max_file_bytes=int(args.max_file_mb * 2**20),
                      max_pixels=args.max_pixels, max_sessions=args.max_sessions)
    blocks = demo.build()
    blocks.queue(max_size=32).launch(server_name=args.host, server_port=args.port,
                                     max_file_size=f"{args.max_file_mb}mb", show_error=True)
    return 0


@dataclass
class _Chat:
    """One visitor's conversation and the files it produced."""

    session: object
    folder: Path
    overlays: list[tuple[str, str]] = field(default_factory=list)  # (path, caption)
    messages: list[dict] = field(default_factory=list)


class SegLLMDemo:
    """The demo's behaviour, independent of gradio's widgets.

    Args:
        pipeline: a ``SegLLMPipeline``.
        generation: decoding settings for every chat (default: the pipeline's).
        max_file_bytes, max_pixels: upload limits (checked before decoding).
        output_root: where each chat's masks and overlays are written (a temp dir by default).
    """

    def __init__(self, pipeline, generation=None, max_file_bytes: int = 10 * 2**20,
                 max_pixels: int = 25_000_000, max_sessions: int = 32,
                 output_root: str | Path | None = None):
        from segllm.pipeline import ImageLimits

        self.pipeline = pipeline
        self.generation = generation
        self.limits = ImageLimits(max_pixels=max_pixels, max_file_bytes=max_file_bytes,
                                  max_model_side=pipeline.limits.max_model_side)
        self.output_root = Path(output_root or tempfile.mkdtemp(prefix="segllm-demo-"))
        self.max_sessions = max_sessions
        self._chats: OrderedDict[str, _Chat] = OrderedDict()
        self._lock = threading.Lock()

    # -- events (each returns the new values of its outputs) ---------------------------------

    def upload(self, path: str | None, key: str | None) -> Outputs:
        """A new image: (key, preview, chat, gallery, download, status)."""
        from segllm.pipeline import ImageError, load_image

        self._drop(key)
        if not path:
            return None, None, [], [], None, "Upload an image to start."
        try:
            image = load_image(path, self.limits)
            session = self.pipeline.start(image, generation=self.generation)
        except ImageError as err:
            return None, None, [], [], None, f"**Refused:** {html.escape(str(err))}"
        key = uuid.uuid4().hex
        folder = self.output_root / key
        folder.mkdir(parents=True)
        self._remember(key, _Chat(session=session, folder=folder))
        status = (f"Image loaded ({image.width}x{image.height}). Ask a question; refer to an "
                  "earlier round k with `<ref:k>`.")
        return key, image, [], [], None, status

    def ask(self, question: str, key: str | None) -> Outputs:
        """A question: (chat, gallery, download, status, question box)."""
        from segllm.pipeline import InputError

        chat = self._chats.get(key) if key else None
        if chat is None:
            return [], [], None, "Upload an image first.", question
        try:
            reply = chat.session.ask(question)
        except InputError as err:
            return (chat.messages, chat.overlays, self._zip(chat),
                    f"**Refused:** {html.escape(str(err))}", question)
        round_dir = save_round(chat.folder, chat.session.image, reply)
        caption = f"round {reply.round}: {reply.text}"
        chat.overlays.append((str(round_dir / "overlay.png"), caption))
        chat.messages += [{"role": "user", "content": _shown(f"[{reply.round}] {question}")},
                          {"role": "assistant", "content": _shown(reply.text or "(no text)")}]
        notes = "".join(f" Note: {html.escape(n)}." for n in reply.warnings)
        status = f"Round {reply.round}: {len(reply.masks)} mask(s).{notes}"
        return chat.messages, chat.overlays, self._zip(chat), status, ""

    def undo(self, key: str | None) -> Outputs:
        """Undo the last round: (chat, gallery, download, status)."""
        from segllm.pipeline import InputError

        chat = self._chats.get(key) if key else None
        if chat is None:
            return [], [], None, "Upload an image first."
        try:
            reply = chat.session.undo()
        except InputError as err:
            return chat.messages, chat.overlays, self._zip(chat), f"**Refused:** {err}"
        shutil.rmtree(chat.folder / f"round_{reply.round:02d}", ignore_errors=True)
        chat.overlays.pop()
        del chat.messages[-2:]
        return chat.messages, chat.overlays, self._zip(chat), f"Undid round {reply.round}."

    # -- the page -----------------------------------------------------------------------------

    def build(self):
        """The gradio Blocks; element ids (#upload, #question, #send, #undo, #overlays,
        #status, #chat, #download) are what the browser test drives."""
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr

        with gr.Blocks(title="SegLLM", analytics_enabled=False) as blocks:
            gr.Markdown("## SegLLM: multi-round reasoning segmentation")
            key = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Image", file_types=["image"], type="filepath",
                                     elem_id="upload")
                    preview = gr.Image(label="Image", interactive=False, elem_id="preview",
                                       type="pil")
                    download = gr.File(label="Masks (zip)", interactive=False,
                                       elem_id="download")
                with gr.Column(scale=1):
                    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=320)
                    question = gr.Textbox(label="Question", elem_id="question", lines=1,
                                          placeholder="Segment the dog. / Segment the ball "
                                                      "left of <ref:0>.")
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        undo = gr.Button("Undo last round", elem_id="undo")
                    status = gr.Markdown("Upload an image to start.", elem_id="status")
            gallery = gr.Gallery(label="Overlays, one per round", elem_id="overlays",
                                 columns=4, height=260, object_fit="contain")
            upload.change(self.upload, [upload, key],
                          [key, preview, chatbot, gallery, download, status])
            for trigger in (send.click, question.submit):
                trigger(self.ask, [question, key], [chatbot, gallery, download, status, question])
            undo.click(self.undo, [key], [chatbot, gallery, download, status])
        return blocks

    # -- helpers -------------------------------------------------------------------------------

    def _remember(self, key: str, chat: _Chat) -> None:
        with self._lock:
            self._chats[key] = chat
            while len(self._chats) > self.max_sessions:
                _, old = self._chats.popitem(last=False)
                shutil.rmtree(old.folder, ignore_errors=True)

    def _drop(self, key: str | None) -> None:
        with self._lock:
            chat = self._chats.pop(key, None) if key else None
        if chat is not None:
            shutil.rmtree(chat.folder, ignore_errors=True)

    def _zip(self, chat: _Chat) -> str | None:
        """Every round's files in one zip (None before the first round)."""
        if not chat.overlays:
            return None
        target = chat.folder.parent / f"{chat.folder.name}-masks"
        return shutil.make_archive(str(target), "zip", root_dir=chat.folder)


def _shown(text: str) -> str:
    """Chat text with ``<ref:k>`` and ``[SEG]`` kept visible (not taken for HTML)."""
    return html.escape(text)
