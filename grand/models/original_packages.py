"""The authors' original model packages as backends: which are installed, how to install them, and how
their checkpoints (pickles) are loaded safely. Shared by the segment-anything, GroundingDINO and
detectron2 adapters so that a missing package or an unsafe checkpoint reads the same everywhere."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from grand.config import ModelSpec
from grand.models.loading import ModelUnavailableError


@dataclass(frozen=True)
class OriginalPackage:
    backend: str  # the config's `backend:` value
    module: str  # what it imports
    install: str  # how to get it (docs/install.md "Original model packages")
    roles: str  # what it serves in grand


ORIGINAL_PACKAGES: dict[str, OriginalPackage] = {
    p.backend: p
    for p in (
        OriginalPackage("segment-anything", "segment_anything", "pip install segment-anything==1.0",
                        "segmenter: SAM ViT-H/L/B .pth"),
        OriginalPackage("segment-anything-hq", "segment_anything_hq", "pip install segment-anything-hq==0.3",
                        "segmenter: HQ-SAM ViT-H/L/B .pth"),
        OriginalPackage("groundingdino", "groundingdino",
                        "pip install --no-deps groundingdino-py==0.4.0 addict yapf timm (requirements/backends.txt)",
                        "detector (queries: tags), phrase_grounder: config .py + .pth"),
        OriginalPackage("detectron2", "detectron2",
                        "a detectron2 wheel (../shared/wheels on CPU, a source build on GPU: docs/install.md)",
                        "detector: yacs .yaml / LazyConfig .py + weights (Mask R-CNN, ViTDet, EVA-02)"),
    )
}


def is_installed(backend: str) -> bool:
    return importlib.util.find_spec(ORIGINAL_PACKAGES[backend].module) is not None


def require(spec: ModelSpec) -> None:
    """Fail early, naming the model and the install command, when the backend's package is missing."""
    package = ORIGINAL_PACKAGES[spec.backend]
    if not is_installed(spec.backend):
        raise ModelUnavailableError(
            f"model '{spec.name}': backend '{spec.backend}' needs the Python package '{package.module}', which "
            f"is not installed here. Install it with: {package.install}"
        )


def load_weights(path: Path, spec: ModelSpec, trust_pickle: bool = False) -> dict:
    """A checkpoint's tensors, loaded with `torch.load(weights_only=True)`: plain state dicts and
    {"model": state_dict, ...} files (SAM, HQ-SAM, GroundingDINO, detectron2 .pth) load without running
    any pickled code. A checkpoint that needs arbitrary unpickling (detectron2 model-zoo .pkl files,
    .pth files that pickled training objects) loads only when the user set the option
    `trust_checkpoint: true`, i.e. vouches for the file's origin."""
    import torch

    if path.suffix == ".pkl":
        if not trust_pickle:
            raise ModelUnavailableError(
                f"model '{spec.name}': {path} is a Python pickle (.pkl), which can run code when loaded. "
                "Convert it to a .pth state dict, or set `options: {trust_checkpoint: true}` if you trust its origin"
            )
        import pickle

        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # detectron2's model zoo .pkl: numpy arrays
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - weights_only refuses anything but tensors and containers
        if not trust_pickle:
            raise ModelUnavailableError(
                f"model '{spec.name}': {path} does not load as weights only ({type(err).__name__}: {err}). "
                "Set `options: {trust_checkpoint: true}` if you trust its origin"
            ) from err
        return torch.load(path, map_location="cpu", weights_only=False)


def find_file(checkpoint: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """The checkpoint itself when it is such a file, else the single such file in its directory."""
    if checkpoint.is_file():
        return checkpoint
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"no such {what} file or directory: {checkpoint}")
    found = sorted(p for p in checkpoint.iterdir() if p.suffix in suffixes and p.is_file())
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one {what} file ({' / '.join(suffixes)}) in {checkpoint}, found {len(found)}"
        )
    return found[0]
