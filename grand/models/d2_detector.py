"""Any detectron2 model as a closed-set detector (backend `detectron2`): Mask R-CNN / Cascade R-CNN
from the model zoo, ViTDet, and EVA-02's ViTDet cascade Mask R-CNN (the reference's LVIS detector),
given its config and weights.

Checkpoints (`checkpoint:`): the weights file (`.pth`; a model-zoo `.pkl` only with
`trust_checkpoint: true`, as it is a pickle) with option `config` naming the config, or a directory
holding one weights file and one config (`config.yaml` / `*.py`; `tiny:d2-mask-rcnn`).
- a yacs `.yaml` (model zoo style, `_BASE_` allowed): `get_cfg()` + `merge_from_file`, pre-processing
  as `DefaultPredictor` (`ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`, `INPUT.FORMAT`);
  `model_zoo:<path>` names a config shipped in detectron2 (`model_zoo:COCO-InstanceSegmentation/...yaml`);
- a LazyConfig `.py` (ViTDet, EVA-02): `LazyConfig.load` + `instantiate(cfg.model)`, pre-processing
  from `cfg.dataloader.test.mapper` (its `augmentations` and `image_format`).
Weights load with `torch.load(weights_only=True)` and detectron2's checkpoint key matching.

Labels are the dataset's class names from detectron2's metadata: the config's test dataset
(`DATASETS.TEST[0]`, or `dataloader.test.dataset.names`), e.g. COCO's 80 or LVIS v1's 1203; LVIS names
are written as words ("aerosol_can" -> "aerosol can", qualifiers like "(drink container)" dropped) so
that they meet the other detectors' labels in the vote. When the model predicts instance masks they
are returned with the boxes (COCO RLE, `Detections.masks`) and the segmentation step uses them before
the segmenter (the reference: SA-1B mask, else EVA's mask, else HQ-SAM).

Options (`spec.options`):
    config            the config (see above); default: the one config in the checkpoint's directory
    class_names       coco | lvis | a names file (one per line): override the metadata's names
    min_score         drop boxes below this (default 0.05, detectron2's test threshold)
    max_detections    per image, best first (default 100)
    masks             return predicted masks when the model has them (default True)
    trust_checkpoint  allow a weights file that needs full unpickling (default False)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from grand.config import DetectorSpec
from grand.core.detections import Detections
from grand.models.loading import adapter_options, resolve_checkpoint, set_threads, torch_device, unavailable
from grand.models.original_packages import load_weights, require

_WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".py")
_DATASETS = {"coco": "coco_2017_val", "lvis": "lvis_v1_val"}


def readable_class_name(name: str) -> str:
    """LVIS synonyms as words: 'aerosol_can' -> 'aerosol can', 'bow_(weapon)' -> 'bow'."""
    name = re.sub(r"_?\([^)]*\)", "", name)
    return " ".join(name.replace("_", " ").lower().split())


def _dataset_names(dataset: str) -> list[str]:
    import detectron2.data  # noqa: F401 - registers the builtin datasets' metadata
    from detectron2.data import MetadataCatalog

    names = MetadataCatalog.get(dataset).get("thing_classes", None)
    if not names:
        raise ValueError(f"detectron2 has no class names for dataset '{dataset}': set option class_names")
    return list(names)


class Detectron2Detector:
    """Closed-set detector: ignores queries; labels are the dataset's class names."""

    open_vocabulary = False

    def __init__(self, spec: DetectorSpec, base_dir: Path | None = None) -> None:
        import torch

        require(spec)
        from grand.compat.detectron2_cpu import patch

        patch()
        self.spec = spec
        opts = adapter_options(spec, {
            "config": None, "class_names": None, "min_score": 0.05, "max_detections": 100, "masks": True,
            "trust_checkpoint": False,
        })
        self.min_score = float(opts["min_score"])
        self.max_detections = int(opts["max_detections"])
        self.want_masks = bool(opts["masks"])
        set_threads(spec)
        self.device = torch_device(spec)
        try:
            weights, config = self._locate(Path(resolve_checkpoint(spec, base_dir)), opts["config"], base_dir)
            if config.suffix == ".py":
                self.model, self.augmentation, self.input_format, dataset = self._lazy(config)
            else:
                self.model, self.augmentation, self.input_format, dataset = self._yacs(config)
            self._load(weights, bool(opts["trust_checkpoint"]))
            self.class_names = [readable_class_name(n) for n in self._class_names(opts["class_names"], dataset, base_dir)]
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise unavailable(spec, err) from err
        self.model.to(self.device).eval()
        self._torch = torch

    # -- loading ------------------------------------------------------------------------------------
    @staticmethod
    def _locate(checkpoint: Path, config_option: str | None, base_dir: Path | None) -> tuple[Path, Path]:
        folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if checkpoint.is_dir():
            weights = [p for p in sorted(checkpoint.iterdir()) if p.suffix in _WEIGHT_SUFFIXES]
            if len(weights) != 1:
                raise FileNotFoundError(f"expected one weights file ({', '.join(_WEIGHT_SUFFIXES)}) in {checkpoint}")
            checkpoint = weights[0]
        elif not checkpoint.is_file():
            raise FileNotFoundError(f"no such detectron2 weights file or directory: {checkpoint}")
        if config_option:
            if str(config_option).startswith("model_zoo:"):
                from detectron2 import model_zoo

                return checkpoint, Path(model_zoo.get_config_file(config_option[len("model_zoo:"):]))
            for candidate in (Path(config_option).expanduser(), (base_dir or Path.cwd()) / config_option,
                              folder / config_option):
                if candidate.is_file():
                    return checkpoint, candidate
            raise FileNotFoundError(f"option config: no such detectron2 config file: {config_option}")
        configs = [p for p in sorted(folder.iterdir()) if p.suffix in _CONFIG_SUFFIXES]
        if len(configs) != 1:
            raise FileNotFoundError(
                f"set option config (a yacs .yaml or LazyConfig .py): found {len(configs)} configs beside {checkpoint.name}"
            )
        return checkpoint, configs[0]

    def _yacs(self, path: Path):
        from detectron2.config import get_cfg
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.set_new_allowed(True)  # project configs (ViTDet-style yacs, DeepLab, ...) add keys
        cfg.merge_from_file(str(path))
        cfg.MODEL.DEVICE = self.device
        cfg.MODEL.WEIGHTS = ""
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: only RGB / BGR models are supported")
        model = build_model(cfg)
        augmentation = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
        return model, augmentation, cfg.INPUT.FORMAT, dataset

    def _lazy(self, path: Path):
        from detectron2.config import LazyConfig, instantiate
        from detectron2.data import transforms as T

        cfg = LazyConfig.load(str(path))
        model = instantiate(cfg.model)
        mapper = cfg.dataloader.test.get("mapper", {}) if "dataloader" in cfg else {}
        augs = [instantiate(a) for a in mapper.get("augmentations", [])] or [T.ResizeShortestEdge(800, 1333)]
        dataset = None
        if "dataloader" in cfg and "dataset" in cfg.dataloader.test:
            names = cfg.dataloader.test.dataset.get("names")
            dataset = names if isinstance(names, str) else (names[0] if names else None)
        return model, T.AugmentationList(augs), mapper.get("image_format", "BGR"), dataset

    def _load(self, weights: Path, trust: bool) -> None:
        from detectron2.checkpoint import DetectionCheckpointer

        checkpointer = DetectionCheckpointer(self.model)
        if weights.suffix == ".pkl":
            load_weights(weights, self.spec, trust)  # refuses unless trust_checkpoint: true
            checkpoint = checkpointer._load_file(str(weights))  # detectron2's own .pkl conversions
        else:
            state = load_weights(weights, self.spec, trust)
            checkpoint = state if "model" in state else {"model": state}
        incompatible = checkpointer._load_model(checkpoint)
        missing = [k for k in incompatible.missing_keys if not k.endswith(("pixel_mean", "pixel_std"))]
        if missing:
            raise ValueError(f"weights {weights.name} lack {len(missing)} of the model's tensors, e.g. {missing[:5]}")

    def _class_names(self, option: str | None, dataset: str | None, base_dir: Path | None) -> list[str]:
        if option in _DATASETS:
            return _dataset_names(_DATASETS[option])
        if option:
            path = Path(option).expanduser()
            path = path if path.is_absolute() or path.exists() else (base_dir or Path.cwd()) / option
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not dataset:
            raise ValueError("the config names no test dataset: set option class_names (coco, lvis or a file)")
        return _dataset_names(dataset)

    # -- prediction ---------------------------------------------------------------------------------
    def detect(self, images: list[Image.Image], queries: list[list[str]] | None = None) -> list[Detections]:
        with self._torch.inference_mode():
            return [self._detect_one(image.convert("RGB")) for image in images]

    def _detect_one(self, image: Image.Image) -> Detections:
        from detectron2.data import transforms as T

        from grand.core.rle import encode_masks

        torch = self._torch
        pixels = np.asarray(image)
        if self.input_format == "BGR":
            pixels = pixels[:, :, ::-1]
        aug_input = T.AugInput(np.ascontiguousarray(pixels))
        self.augmentation(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        out = self.model([{"image": tensor.to(self.device), "height": image.height, "width": image.width}])[0]
        inst = out["instances"].to("cpu")
        scores = inst.scores.numpy()
        keep = np.flatnonzero(scores >= self.min_score)
        keep = keep[np.argsort(-scores[keep], kind="stable")][: self.max_detections]
        classes = inst.pred_classes.numpy()[keep]
        if len(classes) and classes.max() >= len(self.class_names):
            raise ValueError(
                f"model '{self.spec.name}': class id {int(classes.max())} but only {len(self.class_names)} class names"
            )
        xyxy = inst.pred_boxes.tensor.numpy()[keep]
        masks = None
        if self.want_masks and inst.has("pred_masks"):
            masks = encode_masks(inst.pred_masks.numpy()[keep].astype(bool))
        labels = [self.class_names[c] for c in classes]
        return Detections(xyxy, scores[keep], labels, self.spec.name, masks=masks)
