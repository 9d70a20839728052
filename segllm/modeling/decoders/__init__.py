"""Mask decoders, built by name (``SegLLMConfig.decoder``) from a registry.

Adding a decoder: one file with a :class:`MaskDecoder` subclass (and its config dataclass),
plus one ``register_decoder`` line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MaskDecoder, MaskLoss
from .hipie import HIPIEDecoder
from .querymeld import QueryMeldDecoder
from .sam import SAMDecoder

if TYPE_CHECKING:
    from ...config import SegLLMConfig

DECODERS: dict[str, type[MaskDecoder]] = {}


def register_decoder(name: str, cls: type[MaskDecoder]) -> type[MaskDecoder]:
    """Make ``cls`` the decoder called ``name`` (a name taken by another class is refused)."""
    if not (isinstance(cls, type) and issubclass(cls, MaskDecoder)):
        raise TypeError(f"decoder {name!r}: {cls!r} is not a MaskDecoder subclass")
    if DECODERS.get(name, cls) is not cls:
        raise ValueError(f"decoder {name!r} is already registered as {DECODERS[name].__name__}")
    DECODERS[name] = cls
    return cls


def decoder_class(name: str) -> type[MaskDecoder]:
    """The decoder class registered as ``name``."""
    if name not in DECODERS:
        raise ValueError(f"unknown mask decoder {name!r}; registered: {sorted(DECODERS)}")
    return DECODERS[name]


def build_decoder(config: SegLLMConfig) -> MaskDecoder:
    """The decoder ``config.decoder`` names, with ``config.decoder_config``'s sizes."""
    cls = decoder_class(config.decoder)
    return cls(config.decoder_config, mask_aware=config.mask_aware_decoding)


register_decoder("sam", SAMDecoder)
register_decoder("hipie", HIPIEDecoder)
register_decoder("querymeld", QueryMeldDecoder)

__all__ = ["DECODERS", "HIPIEDecoder", "MaskDecoder", "MaskLoss", "QueryMeldDecoder", "SAMDecoder", "build_decoder",
           "decoder_class", "register_decoder"]
