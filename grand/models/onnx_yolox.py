"""YOLOX (Megvii) exported to ONNX, run on ONNX Runtime: a real closed-set COCO detector that needs no
torch. The export's conventions (those of the official `tools/export_onnx.py` without `--decode_in_inference`):

- input: float32 [1, 3, S, S], BGR 0-255 (no mean/std), the image letterboxed into the top-left corner
  and the rest filled with 114;
- output: [1, A, 5 + C], one row per grid cell of the strides 8/16/32, row = (cx, cy) as offsets in
  grid units, (w, h) as log-sizes in grid units, objectness and C class probabilities (already sigmoid).

Options (`spec.options`):
    class_names_file  names file inside the checkpoint directory, one class per line (coco_classes.txt)
    label_map         {name in the file: label to emit}; merged over the built-in map that turns the
                      Darknet/VOC spellings some COCO names files use ("diningtable", "tvmonitor",
                      "sofa", ...) into the official COCO names, so YOLOX agrees with the other
                      detectors in the cross-model vote
    score_threshold   keep boxes with objectness x class probability >= this (default 0.1)
    nms_iou           class-wise NMS IoU (default 0.45)
    max_detections    boxes kept per image, best first (default 100)
    input_size        side of the square input for exports with a dynamic input shape (default 416)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import DetectorSpec
from grand.core.detections import Detections
from grand.models.loading import adapter_options, resolve_checkpoint, unavailable

_STRIDES = (8, 16, 32)
_PAD_VALUE = 114

# coco_classes.txt files shipped with YOLOX/Darknet samples spell six classes the VOC way; the
# COCO annotations and every HF detector's id2label use the official names.
_COCO_NAMES = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}


class YoloxOnnxDetector:
    """Closed-set detector: ignores queries, labels are the model's class names (lower-case)."""

    open_vocabulary = False

    def __init__(self, spec: DetectorSpec, base_dir: Path | None = None) -> None:
        self.spec = spec
        opts = adapter_options(spec, {
            "class_names_file": "coco_classes.txt",
            "label_map": {},
            "score_threshold": 0.1,
            "nms_iou": 0.45,
            "max_detections": 100,
            "input_size": 416,
        })
        self.score_threshold = float(opts["score_threshold"])
        self.nms_iou = float(opts["nms_iou"])
        self.max_detections = int(opts["max_detections"])
        try:
            import onnxruntime as ort

            model_path, names_path = _locate_files(
                Path(resolve_checkpoint(spec, base_dir)), opts["class_names_file"]
            )
            session_opts = ort.SessionOptions()
            # one actor = one thread budget; ORT's default (all cores) oversubscribes a Ray node
            session_opts.intra_op_num_threads = spec.threads
            session_opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(model_path), sess_options=session_opts, providers=_providers(spec.device, ort)
            )
            user_map = {str(k).lower(): str(v).lower() for k, v in opts["label_map"].items()}
            label_map = {**_COCO_NAMES, **user_map}
            self.class_names = [label_map.get(n, n) for n in _read_class_names(names_path)]
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise unavailable(spec, err) from err
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        height, width = model_input.shape[2], model_input.shape[3]
        if not (isinstance(height, int) and isinstance(width, int)):
            # dynamic-shape exports: fall back to the size YOLOX-Nano/Tiny were trained at
            height, width = (int(opts["input_size"]),) * 2
        self.input_hw = (height, width)
        self.grids, self.grid_strides = _make_grids(self.input_hw)

    def detect(self, images: list[Image.Image], queries: list[list[str]] | None = None) -> list[Detections]:
        # the exported graph has a fixed batch of 1, so images run one by one
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: Image.Image) -> Detections:
        blob, ratio = _letterbox(image, self.input_hw)
        raw = self.session.run(None, {self.input_name: blob})[0][0]
        if raw.shape[0] != len(self.grids):
            raise ValueError(
                f"model '{self.spec.name}': output has {raw.shape[0]} rows, expected {len(self.grids)} "
                f"for input {self.input_hw} and strides {_STRIDES}"
            )
        if raw.shape[1] - 5 != len(self.class_names):
            raise ValueError(
                f"model '{self.spec.name}': {raw.shape[1] - 5} classes in the output but "
                f"{len(self.class_names)} class names"
            )
        centers = (raw[:, :2] + self.grids) * self.grid_strides
        sizes = np.exp(raw[:, 2:4]) * self.grid_strides
        class_scores = raw[:, 4:5] * raw[:, 5:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(class_ids)), class_ids]
        keep = scores >= self.score_threshold
        if not keep.any():
            return Detections.empty(self.spec.name)
        centers, sizes, scores, class_ids = centers[keep], sizes[keep], scores[keep], class_ids[keep]
        # letterboxed pixels -> original pixels: the image sits at the top-left, so only a scale
        xyxy = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) / ratio
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, image.width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, image.height)
        order = _classwise_nms(xyxy, scores, class_ids, self.nms_iou)[: self.max_detections]
        labels = [self.class_names[i] for i in class_ids[order]]
        return Detections(xyxy[order], scores[order], labels, self.spec.name)


def _locate_files(checkpoint: Path, names_file: str) -> tuple[Path, Path]:
    """The checkpoint is the .onnx file itself or a directory holding exactly one, beside its names file."""
    if checkpoint.is_dir():
        candidates = sorted(checkpoint.glob("*.onnx"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"expected one .onnx file in {checkpoint}, found {len(candidates)}")
        model_path = candidates[0]
    elif checkpoint.is_file():
        model_path = checkpoint
    else:
        raise FileNotFoundError(f"no such ONNX file or directory: {checkpoint}")
    names_path = Path(names_file)
    if not names_path.is_absolute():
        names_path = model_path.parent / names_path
    if not names_path.is_file():
        raise FileNotFoundError(f"class names file not found: {names_path} (option class_names_file)")
    return model_path, names_path


def _read_class_names(path: Path) -> list[str]:
    names = [line.strip().lower() for line in path.read_text().splitlines()]
    return [n for n in names if n]


def _providers(device: str, ort) -> list[str]:
    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _make_grids(input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets (A, 2) and their strides (A, 1) in the export's row order: stride by stride, row-major."""
    grids, strides = [], []
    for stride in _STRIDES:
        rows, cols = input_hw[0] // stride, input_hw[1] // stride
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack([xs, ys], axis=2).reshape(-1, 2))
        strides.append(np.full((rows * cols, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _letterbox(image: Image.Image, input_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into the top-left corner of a 114-filled canvas; BGR, CHW, float32."""
    ratio = min(input_hw[0] / image.height, input_hw[1] / image.width)
    new_w, new_h = max(1, int(image.width * ratio)), max(1, int(image.height * ratio))
    resized = np.asarray(image.convert("RGB").resize((new_w, new_h), Image.BILINEAR))
    canvas = np.full((input_hw[0], input_hw[1], 3), _PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized[:, :, ::-1]  # YOLOX was trained on OpenCV's BGR images
    blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
    return blob, ratio


def _classwise_nms(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by per-class NMS, best score first.

    Offsetting each class's boxes by a distinct amount makes boxes of different classes never
    overlap, so one class-agnostic pass does the per-class work (the batched-NMS trick).
    """
    offset = (xyxy.max() + 1.0) * class_ids.astype(np.float32)[:, None]
    return _nms(xyxy + offset, scores, iou_threshold)


def _nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    x1, y1, x2, y2 = xyxy.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = (np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])).clip(0)
        h = (np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])).clip(0)
        inter = w * h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
