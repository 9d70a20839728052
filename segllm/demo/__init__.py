"""The web demo (``segllm serve``): gradio, imported only when the demo runs."""
