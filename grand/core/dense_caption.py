"""Level-3 dense caption with chain-of-thought verification (reference: docs/REFERENCE_PIPELINE.md,
"Level 3"; the paper's step, absent from the public code): write the caption, have the LLM list the
objects it claims, compare that checklist with the scene graph (grand.core.verification), and
regenerate a flagged caption with feedback naming what is absent, up to `max_attempts` captions.

The loop, batched across images (`write_verified_captions`). Round k = 0, 1, ... sends:

1. the caption request of every still-pending image, in ONE `llm.chat` call, seed base_seed + k;
2. the checklist request of every caption just written, in one call, seed base_seed + k;
3. only if some checklist answers could not be parsed: those requests again, in one call, with the
   seed base_seed + max_attempts + k (new, but the same on a re-run).
So a round costs 2-3 calls whatever the batch size, seeds differ between attempts, and a re-run of
the same batch repeats itself (with a deterministic backend).

Decisions, per image:

- Regeneration continues the caption conversation: the previous caption (cleaned as below) as an assistant turn, then
  the feedback prompt (`{missing}` = the absent objects) as a user turn. The model sees what it
  wrote and what was wrong with it; earlier rounds stay in the conversation, so an object removed
  once is not brought back. The conversation grows by one short exchange per attempt
  (max_attempts is small: 3 by default).
- The checklist request is a fresh conversation (the prompt file's [system] part, then one user
  turn; layout of grand.core.llm_prompts) holding only the caption, between `<caption>` and
  `</caption>` lines. It never sees the scene graph: the comparison is done here, in code. The
  caption is model output: it is cleaned like every other model string put into a prompt
  (grand.core.scene_graph.clean_text: one line, no tag-like markup, no chat-role markers), and
  "CHECKLIST:" in it is defused, so it cannot close the block, add instructions or forge the
  answer line. The missing names in the feedback are cleaned and capped the same way.
- A caption reply is stripped of a copied "Caption:" label and enclosing quotes (`clean_caption`);
  a reply with no text left counts as a failed request.
- Passed = the checklist was read and no object of it is missing. The first caption that passes is
  kept; when none passes, the last caption written is kept and flagged (`verified=False`), never
  dropped.
- A checklist answer that cannot be parsed twice: "could not verify". The attempt is flagged (the
  note says so in its `reasoning`) and the image stops there: regenerating would not help the
  checker, and there is no missing object to give as feedback.
- LLM failures: the FIRST caption request failing makes the image's result that LLMError (the
  pipeline writes an error row). A later caption request or any checklist request failing keeps
  what we have (the last caption, flagged), with the failure noted in the last attempt's
  `reasoning`.
- Notes written by grand (not by the LLM) into `reasoning` are lines starting with "[grand] ".
- Verification disabled (`CaptionChecker.enabled=False`): one caption, no checklist request,
  `verified=False` (nothing was verified, and a consumer filtering on `verified` must not take it
  for a checked caption), one attempt with `passed=False` and the note "[grand] verification
  disabled".
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from grand.core.llm_prompts import build_conversation, parse_template
from grand.core.scene_graph import clean_text
from grand.core.verification import ObjectMatcher, parse_checklist
from grand.prompts import PromptError, load_prompt
from grand.schema import CaptionAttempt, DenseCaption, GroundedPhrase

if TYPE_CHECKING:
    from grand.config import VerificationSpec
    from grand.models.base import LLMError, TextLLM

CAPTION_SLOT = "{caption}"
CAPTION_TAG = "caption"
MISSING_SLOT = "{missing}"
NOTE = "[grand] "
MAX_CAPTION_CHARS = 3000  # a runaway caption must not fill the checklist request's context
MAX_NAME_CHARS = 60  # an object name in the feedback
_MARKER_IN_CAPTION = re.compile(r"checklist\s*[:：]", re.IGNORECASE)
# the dense-caption prompt's examples read "Caption: ..."; a reply that copies the label loses it
_CAPTION_LABEL = re.compile(r"^\s*(?:\*\*)?(?:dense\s+|new\s+|rewritten\s+)?caption(?:\*\*)?\s*[:：]\s*(?:\*\*)?", re.IGNORECASE)


@dataclass
class DenseCaptionOutcome:
    """What the loop produced for one image (grand.schema.DenseCaption without the grounded details)."""

    caption: str
    verified: bool
    attempts: list[CaptionAttempt] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"caption": self.caption, "verified": self.verified,
                "attempts": [dataclasses.asdict(a) for a in self.attempts]}

    def to_dense_caption(self, details: Sequence[GroundedPhrase] = ()) -> DenseCaption:
        return DenseCaption(caption=self.caption, verified=self.verified, details=list(details),
                            attempts=[dataclasses.replace(a) for a in self.attempts])


@dataclass(frozen=True)
class CheckResult:
    """One checklist answer read and compared: checklist None = could not be parsed."""

    checklist: list[str] | None
    missing: list[str]

    @property
    def passed(self) -> bool:
        return self.checklist is not None and not self.missing


class CaptionChecker:
    """The verification step's prompts and matcher.

    checklist_template: prompt text with `{caption}` (prompts/dense_caption_checklist.txt).
    feedback_template: prompt text with `{missing}` (prompts/dense_caption_feedback.txt).
    matcher: decides which checklist objects are absent from the scene terms.
    enabled: False = write one caption and check nothing (module doc).
    """

    def __init__(self, checklist_template: str, feedback_template: str, matcher: ObjectMatcher | None = None,
                 enabled: bool = True) -> None:
        try:
            parse_template(checklist_template, CAPTION_SLOT)
        except PromptError as err:
            raise PromptError(f"checklist prompt: {err}") from None
        if MISSING_SLOT not in feedback_template:
            raise PromptError(f"the feedback prompt must contain {MISSING_SLOT}")
        self.checklist_template = checklist_template
        self.feedback_template = feedback_template
        self.matcher = matcher or ObjectMatcher()
        self.enabled = enabled

    @classmethod
    def from_spec(cls, spec: "VerificationSpec", base_dir: Path | None = None, similarity="auto") -> "CaptionChecker":
        """From config `level3.verification`. Prompt files are looked up beside the config first.
        similarity: "auto" = a grand.models.text_embedding.TextEmbedder of `spec.embedding_model`
        when verification is enabled and a model is named (loaded here, once per checker); None =
        text and synonym matching only; or any `f(a, b) -> cosine matrix`."""
        checklist = load_prompt(spec.checklist_prompt_file, base_dir, required=(CAPTION_SLOT,))
        feedback = load_prompt(spec.feedback_prompt_file, base_dir, required=(MISSING_SLOT,))
        if isinstance(similarity, str) and similarity == "auto":
            similarity = None
            if spec.enabled and spec.embedding_model:
                from grand.models.text_embedding import TextEmbedder

                similarity = TextEmbedder(spec.embedding_model, base_dir=base_dir).similarity
        matcher = ObjectMatcher(similarity=similarity, threshold=spec.similarity_threshold)
        return cls(checklist, feedback, matcher, enabled=spec.enabled)

    def checklist_conversation(self, caption: str) -> list[dict]:
        """The request for the checklist of `caption`: [system?, user], the caption in a
        <caption> block, cleaned to one line (module doc)."""
        return build_conversation(self.checklist_template, CAPTION_SLOT, CAPTION_TAG, prompt_caption(caption))

    def feedback(self, missing: Sequence[str]) -> str:
        """The regeneration request naming the absent objects: '"giraffe", "kite" and "zebra"'.
        The names come from the LLM's checklist: cleaned and capped like any model string."""
        names = [clean_text(str(m).replace('"', " "), MAX_NAME_CHARS) for m in missing]
        names = [f'"{n}"' for n in names if n] or ["objects that are not there"]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return self.feedback_template.replace(MISSING_SLOT, listed)

    def check(self, answer: str, terms: Sequence[str]) -> CheckResult:
        checklist = parse_checklist(answer)
        if checklist is None:
            return CheckResult(None, [])
        return CheckResult(checklist, self.matcher.find_missing(checklist, terms))


def prompt_caption(caption: str) -> str:
    """A caption as it may go back into a prompt (the checklist request, or the assistant turn of a
    regeneration): model text, so cleaned like every other (clean_text) and its "CHECKLIST:" defused."""
    return clean_text(_MARKER_IN_CAPTION.sub("checklist ", caption), MAX_CAPTION_CHARS)


def clean_caption(reply: str) -> str:
    """The caption of a reply: stripped, a copied "Caption:" label and enclosing quotes removed."""
    text = _CAPTION_LABEL.sub("", reply.strip(), count=1).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'“”" or (text[:1], text[-1:]) == ("“", "”"):
        text = text[1:-1].strip()
    return text


def _failed(reply: object) -> bool:
    """An LLMError (or any exception) returned in place of a reply; or no text at all."""
    return isinstance(reply, Exception) or not isinstance(reply, str) or not reply.strip()


def _error_of(reply: object) -> Exception:
    if isinstance(reply, Exception):
        return reply
    from grand.models.base import LLMError

    return LLMError(f"empty or non-text reply to the dense-caption request: {reply!r}")


def _describe(reply: object) -> str:
    if isinstance(reply, Exception):
        return f"{type(reply).__name__}: {reply}"
    return f"empty reply {reply!r}"


def _note(attempt: CaptionAttempt, text: str) -> None:
    attempt.reasoning = (attempt.reasoning + "\n" if attempt.reasoning else "") + NOTE + text


def _chat(llm: "TextLLM", conversations: list[list[dict]], seed: int) -> list:
    replies = list(llm.chat(conversations, seeds=[seed] * len(conversations)))
    if len(replies) != len(conversations):
        raise ValueError(f"the LLM returned {len(replies)} replies for {len(conversations)} conversations")
    return replies


def write_verified_captions(
    llm: "TextLLM",
    conversations: list[list[dict]],
    terms: list[list[str]],
    checker: CaptionChecker,
    max_attempts: int = 3,
    base_seed: int = 0,
) -> list["DenseCaptionOutcome | LLMError"]:
    """One verified dense caption per image (rules and call pattern: module doc).

    conversations[i]: image i's dense-caption request (grand.core.llm_prompts), ending with a user turn.
    terms[i]: what image i's scene graph holds (grand.core.verification.scene_terms).
    Returns per image a DenseCaptionOutcome, or the LLMError of its first caption request.
    Raises only if `llm.chat` raises (the backend itself is unusable) or answers with a wrong count.
    """
    if len(conversations) != len(terms):
        raise ValueError(f"{len(conversations)} conversations but {len(terms)} term lists")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if not checker.enabled:
        max_attempts = 1
    n = len(conversations)
    convs = [list(c) for c in conversations]
    attempts: list[list[CaptionAttempt]] = [[] for _ in range(n)]
    results: list = [None] * n
    pending = list(range(n))

    def finish(i: int, verified: bool) -> None:
        results[i] = DenseCaptionOutcome(caption=attempts[i][-1].caption, verified=verified, attempts=attempts[i])

    for k in range(max_attempts):
        if not pending:
            break
        # 1. captions
        written = []
        for i, reply in zip(pending, _chat(llm, [convs[i] for i in pending], base_seed + k)):
            caption = clean_caption(reply) if isinstance(reply, str) else ""
            if not caption:
                if k == 0:
                    results[i] = _error_of(reply)
                else:
                    _note(attempts[i][-1], f"regeneration {k + 1} failed: {_describe(reply)}; the last caption is kept")
                    finish(i, False)
                continue
            attempts[i].append(CaptionAttempt(caption=caption))
            written.append(i)
        if not checker.enabled:
            for i in written:
                _note(attempts[i][-1], "verification disabled")
                finish(i, False)
            break
        if not written:
            break
        # 2. checklists (3. retried once when unreadable)
        answers = dict(zip(written, _chat(llm, [checker.checklist_conversation(attempts[i][-1].caption) for i in written],
                                          base_seed + k)))
        checks: dict[int, CheckResult] = {}
        unreadable = []
        for i in written:
            if _failed(answers[i]):
                continue
            checks[i] = checker.check(answers[i], terms[i])
            if checks[i].checklist is None:
                unreadable.append(i)
        first_answers = {i: answers[i] for i in unreadable}
        if unreadable:
            retried = _chat(llm, [checker.checklist_conversation(attempts[i][-1].caption) for i in unreadable],
                            base_seed + max_attempts + k)
            for i, answer in zip(unreadable, retried):
                answers[i] = answer
                if not _failed(answer):
                    checks[i] = checker.check(answer, terms[i])
        # decide
        next_pending = []
        for i in written:
            attempt = attempts[i][-1]
            answer = answers[i]
            if _failed(answer):
                if i in first_answers:
                    attempt.reasoning = first_answers[i]
                    _note(attempt, "checklist could not be parsed")
                _note(attempt, f"checklist request failed: {_describe(answer)}; caption kept unverified")
                finish(i, False)
                continue
            check = checks[i]
            attempt.reasoning = answer
            if check.checklist is None:
                if i in first_answers:
                    attempt.reasoning = first_answers[i] + "\n" + answer
                _note(attempt, "checklist could not be parsed (asked twice): could not verify, caption kept unverified")
                finish(i, False)
                continue
            if i in first_answers:
                _note(attempt, "the first checklist answer could not be parsed; this is the second")
            attempt.checklist = list(check.checklist)
            attempt.missing = list(check.missing)
            attempt.passed = check.passed
            if check.passed:
                finish(i, True)
            elif k == max_attempts - 1:
                finish(i, False)
            else:
                # the caption goes back as the model's own turn: cleaned like any model text in a prompt
                convs[i] += [{"role": "assistant", "content": prompt_caption(attempt.caption)},
                             {"role": "user", "content": checker.feedback(check.missing)}]
                next_pending.append(i)
        pending = next_pending
    return results
