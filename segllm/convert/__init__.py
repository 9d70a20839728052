"""Published checkpoints of other systems -> segllm models (``segllm convert``).

One module per source system (``lisa``, ``glamm``); ``source`` reads checkpoint folders and accounts
for every tensor, ``tokenizer`` makes their tokenizer give their ids, ``sam_sizes`` reads SAM's
sizes from its shapes, ``build`` loads the result strictly.
"""
