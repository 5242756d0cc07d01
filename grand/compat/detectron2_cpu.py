"""Run detectron2's ROIAlign on CPU installs whose torchvision has no compiled ops (ours: the
registry's torchvision 0.28.0 is a CUDA build, see grand/compat/torchvision_cpu.py).

Why: there `torchvision.ops.roi_align` falls back to torchvision's pure-torch version, which it wraps
in `torch.compile(dynamic=True)` on first use: every new process pays ~45 s of inductor compilation
(and the compiled kernel is no faster on CPU than the eager code for the small box batches of one
image), so every Ray actor of a detectron2 detector would start 45 s late.

What: `patch()` points `detectron2.layers.roi_align.roi_align` (the function detectron2's `ROIAlign`
calls) at the same pure-torch implementation, uncompiled. It does nothing where torchvision's
compiled ops load (GPU clusters, CPU wheels from PyTorch's index): there the compiled kernel runs.
"""

from __future__ import annotations


def patch() -> None:
    from torchvision.extension import _has_ops

    if _has_ops():
        return
    import importlib

    # (the packages re-export the functions under the modules' names: import the modules themselves)
    d2_roi_align = importlib.import_module("detectron2.layers.roi_align")
    tv_roi_align = importlib.import_module("torchvision.ops.roi_align")

    if getattr(d2_roi_align.roi_align, "_grand_eager", False):
        return
    eager = tv_roi_align._roi_align.__wrapped__  # the function under torchvision's lazy torch.compile
    from torch.nn.modules.utils import _pair
    from torchvision.ops._utils import convert_boxes_to_roi_format

    def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
        if not hasattr(boxes, "dim"):
            boxes = convert_boxes_to_roi_format(boxes)
        height, width = _pair(output_size)
        return eager(input, boxes, spatial_scale, height, width, sampling_ratio, aligned)

    roi_align._grand_eager = True
    d2_roi_align.roi_align = roi_align
