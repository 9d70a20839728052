"""Training recipes, datasets and collate, checkpointing. Installed as ``segllm.train``.

Nothing in ``segllm`` imports from here: training never leaks into the model package.
"""
