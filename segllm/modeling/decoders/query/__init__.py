"""The query-based mask decoder family (HIPIE, MaskDINO, QueryMeldNet share it): a ResNet
backbone, a deformable-attention pixel decoder, a two-stage query decoder, Hungarian
matching and the set loss. Pure PyTorch (no compiled ops, no detectron2)."""

from .backbone import ResNetBackbone
from .deformable_attention import MSDeformAttn, ms_deform_attn
from .losses import QueryLossConfig, query_set_loss
from .matching import Target, match
from .pixel_decoder import PixelDecoder
from .transformer_decoder import DecoderOutputs, Predictions, QueryDecoder

__all__ = ["DecoderOutputs", "MSDeformAttn", "PixelDecoder", "Predictions", "QueryDecoder",
           "QueryLossConfig", "ResNetBackbone", "Target", "match", "ms_deform_attn",
           "query_set_loss"]
