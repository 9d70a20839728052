"""segllm's model components, one file each (see ``model.py`` for how they connect)."""
