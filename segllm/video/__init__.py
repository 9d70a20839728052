"""Video reasoning segmentation (VISA's path): frames in, a target frame chosen by the query,
its mask through ``[SEG]``, propagated to every frame. See ``segllm.video.pipeline``."""
