"""Evaluation: pure metric functions and benchmark runners. Installed as ``segllm.eval``.

Modules (nothing heavy is imported here; import the one you need):

- ``mask_metrics``: per-target intersection/union (dense or RLE), cIoU, gIoU, mIoU, box IoU,
  REC Acc@0.5, with LISA's semantics (label 255 ignored, empty-vs-empty scores 1 in gIoU);
- ``mrseg``: round tasks (MRSeg, referring, reasoning): pairing, per-round and per-type results;
- ``gcg``: GLaMM's greedy matching and a Hungarian variant, mask recall, mIoU, AP50;
- ``text_similarity``: pluggable phrase similarity (local bert-base-uncased or packaged MiniLM);
- ``caption_metrics``: METEOR and CIDEr through pycocoevalcap;
- ``segmentation_metrics``: COCO mask/box AP, panoptic quality, semantic mIoU (query-meld tasks);
- ``predictions``: the predictions JSONL format, reading and validation;
- ``predictor``: the ``Predictor`` protocol a model implements, ground-truth-reference protocol,
  and the ``SegLLMPipeline`` adapter;
- ``runners`` and ``cli``: ``segllm eval mrseg|refer|reasonseg|gcg``;
- ``rle`` (re-exports ``segllm.masks``), ``report``, ``errors``: RLE helpers, output files,
  ``EvalInputError``.
"""
