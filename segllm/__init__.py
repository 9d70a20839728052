"""segllm: multi-round reasoning segmentation with multimodal LLMs."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft when installed) warns on every import that it cannot fetch an
# optional CPU kernel from the hub; its built-in fallback is used and nothing here may download.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
