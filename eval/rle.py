"""The evaluation's RLE helpers, kept under their old name ``segllm.eval.rle``.

One implementation lives in ``segllm.masks`` (the metrics, the data builders and training
share it); this module only re-exports the names the metrics use.
"""

from segllm.masks import (  # noqa: F401 (re-exported)
    areas,
    boxes_xywh,
    decode,
    empty_rle,
    encode_mask,
    intersections,
    iou_matrix,
    rle_size,
    to_pycoco,
    union_of,
)
