"""Vision-language models (BLIP-2, LLaVA-1.5) answering one prompt per image with transformers `generate`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from grand.config import AttributeSpec, CaptionerSpec
from grand.models.loading import adapter_options, checked_config, load_pretrained

# config.model_type -> what it is; AutoModelForImageTextToText loads both as *ForConditionalGeneration
SUPPORTED_TYPES = {
    "blip-2": "BLIP-2, e.g. Salesforce/blip2-opt-2.7b",
    "llava": "LLaVA-1.5, e.g. llava-hf/llava-1.5-7b-hf",
}


class HFVisionLanguageModel:
    """Short answers about images from BLIP-2 or LLaVA-1.5 (`spec.generation` sets the decoding).

    Each prompt is wrapped in the model's own format: BLIP-2 uses "Question: {prompt} Answer:", and
    an empty prompt gives its unconditional caption; LLaVA uses the processor's chat template (one
    user turn with the image and the prompt, then the generation prompt), or the LLaVA-1.5 format
    "USER: <image>\\n{prompt} ASSISTANT:" when the checkpoint has no template.

    Decoding: temperature 0 is greedy (with `num_beams` beams); temperature > 0 samples with
    nucleus `top_p` only (top-k off, as vLLM's default), and torch is seeded with `generation.seed`
    before every `generate` call, so that a re-run with the same batches writes the same text.
    Returns only the generated answer, special tokens removed, stripped.

    Options (`spec.options`): none; any key there is an error.
    """

    def __init__(self, spec: CaptionerSpec | AttributeSpec, base_dir: Path | None = None) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        adapter_options(spec, {})
        self.spec = spec
        self._torch = torch
        _, config = checked_config(spec, base_dir, SUPPORTED_TYPES, "is not a supported vision-language model")
        self.model_type = config.model_type
        self.model, self.processor, self.device, self.dtype = load_pretrained(
            spec, base_dir, AutoModelForImageTextToText, AutoProcessor
        )
        if self.model_type == "blip-2" and getattr(self.processor, "num_query_tokens", None) is None:
            # older BLIP-2 processors insert no image tokens, and transformers 5 then ignores the image
            raise ValueError(
                f"model '{spec.name}': the processor of '{spec.checkpoint}' has no num_query_tokens (an old "
                "revision); use a current revision of the checkpoint"
            )
        # A decoder-only LM continues the prompt where it ends: pad on the left. Its output repeats
        # the prompt, an encoder-decoder's (BLIP-2 with Flan-T5) holds only new tokens.
        self.decoder_only = not self.model.config.text_config.is_encoder_decoder
        if self.decoder_only:
            self.processor.tokenizer.padding_side = "left"
        gen = spec.generation
        self.sampling = gen.temperature > 0
        self.generate_kwargs: dict = dict(
            max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams, do_sample=self.sampling
        )
        if self.sampling:
            self.generate_kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=0)

    def generate(self, images: list[Image.Image], prompts: list[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"model '{self.spec.name}': {len(images)} images but {len(prompts)} prompts")
        torch = self._torch
        answers: list[str] = []
        for start in range(0, len(images), self.spec.batch_size):
            stop = start + self.spec.batch_size
            texts = [self.format_prompt(p) for p in prompts[start:stop]]
            inputs = self.processor(images=images[start:stop], text=texts, padding=True, return_tensors="pt")
            inputs = inputs.to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            if self.sampling:
                torch.manual_seed(self.spec.generation.seed)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, **self.generate_kwargs)
            if self.decoder_only:
                ids = ids[:, inputs["input_ids"].shape[1] :]
            answers += [a.strip() for a in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return answers

    def format_prompt(self, prompt: str) -> str:
        """The model's input text for one plain prompt (image placeholders included where needed)."""
        if self.model_type == "blip-2":
            # the processor puts the image's query tokens before this text
            return f"Question: {prompt} Answer:" if prompt.strip() else ""
        if self.processor.chat_template:
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return f"USER: {self.processor.image_token}\n{prompt} ASSISTANT:"
