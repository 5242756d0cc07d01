"""Linear-time first steps for cleaning model-written text, before any regex sees it.

Python's regex engine backtracks: a pattern with neighbouring `\\s*` / `\\s+` groups takes
quadratic (or worse) time on a long run of spaces, and model output has such runs (a model stuck
repeating a space, "Objects" followed by 5,000 spaces). Capping the length and collapsing runs of
whitespace with str.split (linear, no regex) makes every later pattern cheap.
"""

from __future__ import annotations

# Far beyond any answer the prompts ask for (a checklist, a caption, a label), small enough that
# even a quadratic pattern on it would stay in milliseconds after whitespace is collapsed.
MAX_MODEL_TEXT_CHARS = 20_000


def squash_spaces(text: str, max_chars: int = MAX_MODEL_TEXT_CHARS) -> str:
    """`text` cut to `max_chars`, every run of whitespace (newlines included) one space, stripped."""
    return " ".join(text[:max_chars].split())


def squash_lines(text: str, max_chars: int = MAX_MODEL_TEXT_CHARS) -> list[str]:
    """The lines of `text` (cut to `max_chars`), each with runs of spaces and tabs collapsed."""
    return [" ".join(line.split()) for line in text[:max_chars].splitlines()]
