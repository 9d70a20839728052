"""Evaluation: pure metric functions and benchmark runners. Installed as ``segllm.eval``."""
