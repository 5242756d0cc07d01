"""Tiny random-weight vision-language checkpoints (BLIP-2 with OPT, LLaVA-1.5 with Llama), built offline.

Each builder writes a directory that `AutoModelForImageTextToText.from_pretrained` and
`AutoProcessor.from_pretrained` load offline: weights, config, generation config, image-processor
config and a byte-level BPE tokenizer trained here on the concept vocabulary plus common caption
words. Widths are 32-128 with 1-2 layers, so load + one 640x480 image + a few generated tokens take
well under a second on CPU. The text is random (but deterministic: torch is seeded and the BPE
trainer is deterministic for a byte-level model without an end-of-word suffix).
"""

from __future__ import annotations

from pathlib import Path

from grand.models.tiny.text_models import concept_words

# Words that captions and the adapters' prompts use, so that they tokenize to whole-word tokens.
_CAPTION_WORDS = (
    "a an the this that there is are was of in on at with and or to from by for near next behind front "
    "top bottom left right side its his her their two three several many some one man woman person people "
    "child boy girl group standing sitting walking holding wearing looking riding playing lying parked "
    "white black red blue green yellow brown gray large small big little old young wooden street road "
    "room table field grass water sky building city view close up photo image picture describe short "
    "description caption sentence region few words generate single provided what where who landmark "
    "famous name question answer user assistant"
).split()

_SEED = 0
# an upper bound: the trainer stops at ~2,400 tokens, once every word above is one token
_VOCAB_SIZE = 3000

# LLaVA-1.5 / Vicuna v1 conversation format, as the chat template of llava-hf/llava-1.5-7b-hf renders
# it: "USER: <image>\n{text} ASSISTANT:" (images before the text of a turn, one space after each text).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _seed() -> None:
    import torch

    torch.manual_seed(_SEED)


def build_vlm_tokenizer(image_token: str | None = None, chat_template: str | None = None):
    """A byte-level BPE (GPT-2 / OPT style) learned from the concept and caption words, wrapped in a
    PreTrainedTokenizerFast that prepends <s>; `image_token`, when given, becomes a named special
    token (`tokenizer.image_token`) with the last id (as llava-hf's 32000 after the Llama vocabulary).

    Special tokens take the first ids, as in OPT and Llama (pad/bos/eos/unk small)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = concept_words() + list(_CAPTION_WORDS)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no text is ever <unk>
        show_progress=False,
    )
    # words with their leading space, as inside a sentence ("Ġdog"): most tokens then start a word,
    # so that even random generations read as space-separated words (the phrase step parses them)
    bpe.train_from_iterator([" " + w for w in words], trainer=trainer)
    bos = specials.index("<s>")
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": image_token} if image_token else None,
        model_max_length=2048,
        chat_template=chat_template,
    )


def build_blip2(out_dir: Path) -> None:
    """BLIP-2 (as Salesforce/blip2-opt-2.7b): 32 px ViT with 8 px patches, 1-layer Q-Former with 4
    query tokens, 2-layer OPT decoder."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessorPil,
        GenerationConfig,
    )

    _seed()
    image_size, num_query_tokens, width = 32, 4, 32
    # the vision tower's position embeddings are fixed: the processor must resize to exactly image_size
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    # Blip2Processor adds "<image>" to the tokenizer itself (as in Salesforce/blip2-*); a tokenizer
    # that already has a named `image_token` breaks it in transformers 5 (it expects an AddedToken).
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=build_vlm_tokenizer(), num_query_tokens=num_query_tokens
    )
    tokenizer = processor.tokenizer
    config = Blip2Config(
        vision_config=dict(
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        qformer_config=dict(
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=width,  # the Q-Former cross-attends to the vision tower's output
            cross_attention_frequency=1,
        ),
        text_config=dict(
            model_type="opt",
            vocab_size=len(tokenizer),
            hidden_size=width,
            word_embed_proj_dim=width,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        # the processor writes `num_query_tokens` image tokens before the text; the model replaces
        # their embeddings with the Q-Former's outputs, so both numbers and the id must agree
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)


def tiny_llama_config(tokenizer, max_positions: int) -> dict:
    """The tiny Llama language model of tiny:llava and tiny:llama: 2 layers of width 128, 2 attention
    heads of size 64 (vLLM's CPU kernels reject smaller heads)."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_llava(out_dir: Path) -> None:
    """LLaVA-1.5 (as llava-hf/llava-1.5-7b-hf): 2-layer CLIP ViT at 32 px with 8 px patches (16 image
    tokens), 2-layer Llama with attention heads of size 64 (vLLM's CPU kernels reject smaller ones)."""
    from transformers import (
        CLIPImageProcessorPil,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    _seed()
    tokenizer = build_vlm_tokenizer(image_token="<image>", chat_template=LLAVA_CHAT_TEMPLATE)
    image_size, patch_size = 32, 8
    # "default" drops the CLS token: the LM sees one token per patch, and the processor must write
    # as many <image> tokens (num_additional_image_tokens=1 adds the CLS back before it drops it)
    strategy = "default"
    num_image_tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,  # vision_feature_layer=-2 reads the second-to-last hidden state
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=32,
        ),
        text_config=dict(model_type="llama", **tiny_llama_config(tokenizer, max_positions=2048)),
        image_token_index=tokenizer.image_token_id,
        image_seq_length=num_image_tokens,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    # as the real checkpoint: resize the shortest edge, then center-crop a square
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(out_dir)
    # Saved weight names: transformers 5.19 writes the vision tower as `vision_tower.embeddings...` /
    # `vision_tower.encoder...` (no `vision_model.`), and the LM as `language_model.model...` /
    # `language_model.lm_head`. from_pretrained loads these; vLLM expects `vision_tower.vision_model.*`,
    # so these names do NOT match what vLLM loads.
    model.save_pretrained(out_dir)
