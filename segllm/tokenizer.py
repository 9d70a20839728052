"""Tokenizers: segllm's special tokens, and a tiny byte-level BPE for models we train here.

Real checkpoints bring their own tokenizer (llava-hf directories). The tiny and small presets
use ``build_tiny_tokenizer``: a byte-level BPE trained deterministically on a built-in corpus,
so any text encodes (bytes are the fallback) and nothing is downloaded.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .conversation import SYSTEM_PROMPT
from .tokens import FRAME_TOKEN, IMAGE_TOKEN, SPECIAL_TOKENS, VIDEO_TOKENS

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"

_WORDS = """
segment the a an of in on at to and or with without is are it its this that these those there
here which what where who whom whose please sure yes no not any such object image picture shape
shapes square circle triangle rectangle star hexagon ring disk cross diamond ellipse pentagon
red green blue yellow orange purple pink brown black white gray grey cyan magenta
left right above below top bottom middle center centre next near nearest far farthest largest
smallest biggest big small large tiny inside outside around part whole hole holes corner corners
most fewest more less than one two three four five six seven eight many each every all both
man woman person people dog cat car bag shirt umbrella holding walking tail head hand
now also then find show mark highlight where's same other another object's round rounds
closest linked line lines colour color has have contains containing background light beige
would roll if were pushed covers picture corners whole belongs cannot visible could you give me
detailed description respond interleaved segmentation masks corresponding parts answer
as by for i they circles hexagons pentagons squares triangles
""".split()


def _training_corpus() -> list[str]:
    lines = [SYSTEM_PROMPT, "USER: ASSISTANT:", "Sure, it is [SEG].", "There is no such object."]
    lines += [" ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 12)]
    lines += [f"{w} {w.capitalize()} {w.upper()}" for w in _WORDS]
    lines += [" ".join(str(n) for n in range(100))]
    return lines * 4


def build_tiny_tokenizer(vocab_size: int = 1000, segllm_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE with BOS/EOS/UNK/PAD and the image token.

    ``segllm_tokens=False`` leaves out [SEG] and the other segllm tokens, as a base LLaVA
    tokenizer would be before ``add_segllm_tokens``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = [UNK, BOS, EOS, PAD, IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(SPECIAL_TOKENS),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_training_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    if segllm_tokens:
        add_segllm_tokens(tok)
    return tok


def add_segllm_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add [SEG], the mask-encoder slots, the phrase tags and the reference-frame slot;
    return every special id.

    Ids come from ``convert_tokens_to_ids`` (never from ``tokenizer(tok).input_ids[0]``).
    """
    missing = [t for t in SPECIAL_TOKENS + VIDEO_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:  # llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.unk_token
    return special_token_ids(tokenizer)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    from .tokens import MASK_BOX_TOKEN, MASK_CROP_TOKEN, PHRASE_END, PHRASE_START, SEG_TOKEN

    names = {
        "image": IMAGE_TOKEN, "seg": SEG_TOKEN, "mask_crop": MASK_CROP_TOKEN,
        "mask_box": MASK_BOX_TOKEN, "phrase_start": PHRASE_START, "phrase_end": PHRASE_END,
    }
    ids = {}
    for key, token in names.items():
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token!r} token")
        ids[key] = int(tid)
    frame = tokenizer.convert_tokens_to_ids(FRAME_TOKEN)
    if frame is not None and frame != tokenizer.unk_token_id:  # tokenizers saved before video
        ids["frame"] = int(frame)
    ids["pad"] = int(tokenizer.pad_token_id)
    ids["bos"] = int(tokenizer.bos_token_id)
    ids["eos"] = int(tokenizer.eos_token_id)
    return ids
