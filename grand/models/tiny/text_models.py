"""Tiny random-weight checkpoints of the text-conditioned architectures (GroundingDINO, OWLv2, CLIP, SigLIP).

Each builder writes a directory that `from_pretrained` and `AutoProcessor.from_pretrained` load
offline: weights, config, image-processor config and a tokenizer made here from the concept
vocabulary (nothing is downloaded). Sizes are chosen so that load + one 640x480 image takes well
under a second on CPU; predictions are random but deterministic (torch is seeded).
"""

from __future__ import annotations

import collections
import functools
import re
import string
from pathlib import Path

# The concept vocabulary the taggers use: its words make the tiny tokenizers' vocabularies, so that
# tags tokenize to real tokens instead of [UNK] (repo checkout: <repo>/pipelines/vocab/concepts.txt).
_CONCEPTS_FILE = Path(__file__).resolve().parents[3] / "pipelines" / "vocab" / "concepts.txt"
# Used when the package runs without the repo checkout; letters make any other word tokenizable.
_FALLBACK_WORDS = "person car dog cat bird chair table cup bottle tree sky road building grass".split()
_PROMPT_WORDS = "a an the photo of picture image".split()  # words of the taggers' prompt templates

_SEED = 0


def _seed() -> None:
    import torch

    torch.manual_seed(_SEED)


def concept_words(path: Path | None = None) -> list[str]:
    """Distinct lower-case words of the concept vocabulary (plus prompt words), in first-seen order."""
    path = path or _CONCEPTS_FILE
    words: list[str] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip().lower()
            if line and not line.startswith("#"):
                words += line.replace("-", " - ").split()
    words += _FALLBACK_WORDS + _PROMPT_WORDS
    return list(dict.fromkeys(words))


# -- tokenizers ---------------------------------------------------------------------------------

# GroundingDINO's modeling code hard-codes bert-base-uncased ids of its phrase delimiters
# (SPECIAL_TOKENS = [101, 102, 1012, 1029]: [CLS], [SEP], '.', '?') and treats id 0 as [PAD], so a
# tiny BERT vocabulary must keep those tokens at exactly those ids.
_BERT_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def build_bert_tokenizer(words: list[str]):
    """A WordPiece BertTokenizer over `words`, with single letters / '##' letters as a fallback so
    that any lower-case word still tokenizes without [UNK]."""
    from transformers import BertTokenizer

    fixed = _BERT_FIXED_IDS
    pieces = list(string.ascii_lowercase + string.digits) + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    pieces += [p for p in string.punctuation if p not in fixed]
    fill = [t for t in dict.fromkeys(pieces + words) if t not in fixed]
    size = max(max(fixed.values()) + 1, len(fixed) + len(fill))
    tokens: list[str | None] = [None] * size
    for tok, idx in fixed.items():
        tokens[idx] = tok
    it = iter(fill)
    for i in range(size):
        if tokens[i] is None:
            tokens[i] = next(it, f"[unused{i}]")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == size, "duplicate token in the tiny BERT vocabulary"
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)


def build_clip_tokenizer(words: list[str], num_merges: int = 1500, model_max_length: int = 77):
    """A CLIPTokenizer (tokenizers-backed) over a byte-level BPE learned from `words`.

    The special tokens go at the END of the vocabulary: OWL-ViT/OWLv2 drop every query whose first
    token id is 0 (`query_mask = input_ids[..., 0] > 0`), and CLIP-style text pooling also works
    when end-of-text is the largest id (argmax pooling of older configs)."""
    from transformers import CLIPTokenizer

    vocab, merges = _learn_bpe(tuple(words), num_merges)
    vocab = dict(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)


@functools.lru_cache(maxsize=4)
def _learn_bpe(words: tuple[str, ...], num_merges: int) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Learn CLIP-style BPE merges (byte-level symbols, '</w>' on a word's last symbol).

    A small deterministic learner instead of `tokenizers`' BpeTrainer: that trainer gives its
    end-of-word tokens ids in hash-map order and breaks count ties by id, so two builds of the same
    tiny checkpoint would tokenize (and predict) differently (huggingface/tokenizers#1794). Here ties
    break by the pair itself. Cost: about a second for the concept vocabulary."""
    from tokenizers import pre_tokenizers

    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False)  # bytes -> printable symbols, as CLIP
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for phrase in words:
        for word in re.findall(r"[^\W\d_]+|\d|[^\s\w]+|_+", phrase.lower()):  # CLIP's word split
            symbols = tuple(to_bytes.pre_tokenize_str(word)[0][0])
            word_counts[symbols[:-1] + (symbols[-1] + "</w>",)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, count in word_counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {(_merge(s, best) if best[0] in s else s): c for s, c in word_counts.items()}
        word_counts = collections.Counter({s: c for s, c in merged.items() if len(s) > 1})  # drop done words
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, tuple(merges)


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


# -- checkpoints ----------------------------------------------------------------------------------


def build_grounding_dino(out_dir: Path) -> None:
    """GroundingDINO: Swin backbone + 1-layer BERT, 1 encoder / 2 decoder layers (the model needs >= 2)."""
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    _seed()
    tokenizer = build_bert_tokenizer(concept_words())
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,  # >= max_text_len
        pad_token_id=0,
    )
    backbone = SwinConfig(
        image_size=96,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=50,
        num_feature_levels=4,
        max_text_len=256,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    # Box-to-token logits are dot products of layer-normed features (std ~ sqrt(d_model)): random
    # weights saturate most scores at 1.0, and ties between queries make labels flip on tiny input
    # changes. Shrinking the encoder's final text features spreads the scores out.
    with torch.no_grad():
        model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after.weight.mul_(0.15)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 160})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    model.save_pretrained(out_dir)


def build_owlv2(out_dir: Path) -> None:
    """OWLv2: 64 px ViT with 8 px patches (64 boxes per image), 1-layer CLIP text tower."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    _seed()
    tokenizer = build_clip_tokenizer(concept_words(), model_max_length=16)  # OWL's query length
    config = Owlv2Config(
        text_config=_clip_text_config(tokenizer, max_positions=16),
        vision_config=_vit_config(image_size=64, patch_size=8),
        projection_dim=32,
        # The detection heads take the top-level config's init std, which defaults to 1.0
        # (initializer_factor): random boxes then saturate to zero-area boxes at the image corner.
        initializer_range=0.02,
    )
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessorPil(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    model.save_pretrained(out_dir)


def build_clip(out_dir: Path) -> None:
    """CLIP: 32 px ViT with 8 px patches, 1-layer text tower, 32-d joint embedding."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    _seed()
    tokenizer = build_clip_tokenizer(concept_words(), model_max_length=77)
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer, max_positions=77),
        vision_config=_vit_config(image_size=32, patch_size=8),
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    model.save_pretrained(out_dir)


def _vit_config(image_size: int, patch_size: int) -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _clip_text_config(tokenizer, max_positions: int) -> dict:
    """CLIP-family text tower sized to the tokenizer; pooling reads the end-of-text id from here."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_siglip(out_dir: Path) -> None:
    """SigLIP: like build_clip (CLIP BPE tokenizer, texts padded to 64 as SigLIP expects); the
    sigmoid scoring path of the tagger (real checkpoints use a SentencePiece tokenizer)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    _seed()
    tokenizer = build_clip_tokenizer(concept_words(), model_max_length=64)
    config = SiglipConfig(
        text_config=_clip_text_config(tokenizer, max_positions=64),
        vision_config=_vit_config(image_size=32, patch_size=8),
    )
    model = SiglipModel(config).eval()
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    model.save_pretrained(out_dir)
