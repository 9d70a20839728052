"""Inference, split by job; ``segllm.pipeline`` is the public entry point."""
