"""Mask decoders, chosen by ``SegLLMConfig.decoder``."""
