"""Prompt texts live in files (prompts/ at the repository root), so that they can be read, diffed and
overridden per pipeline without touching code."""

from __future__ import annotations

from pathlib import Path

# <repo>/prompts: grand's own prompts (a config may point at its own files instead)
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


class PromptError(ValueError):
    """A prompt file that cannot be found or used."""


def prompt_path(ref: str, base_dir: Path | None = None) -> Path:
    """Resolve a prompt reference: an absolute path, a path relative to the config's folder, or a
    path relative to the repository root / a bare name inside grand's prompts/ folder."""
    p = Path(ref).expanduser()
    candidates = [p] if p.is_absolute() else [
        *([Path(base_dir) / p] if base_dir else []),
        PROMPTS_DIR.parent / p,
        PROMPTS_DIR / p,
        PROMPTS_DIR / p.name,
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise PromptError(f"prompt file '{ref}' not found (looked in: {', '.join(str(c) for c in candidates)})")


def load_prompt(ref: str, base_dir: Path | None = None, required: tuple[str, ...] = ()) -> str:
    """The prompt text (trailing whitespace removed). `required` placeholders, e.g. "{options}", must
    appear in it, so that a wrong file fails at load time rather than producing odd answers."""
    path = prompt_path(ref, base_dir)
    text = path.read_text(encoding="utf-8").rstrip()
    missing = [r for r in required if r not in text]
    if missing:
        raise PromptError(f"prompt file {path} must contain {', '.join(missing)}")
    return text
