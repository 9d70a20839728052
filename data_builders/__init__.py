"""Data builders: one module per source data set, plus the multi-round assembler.

Installed as ``segllm.data_builders``.
"""
