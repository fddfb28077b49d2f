"""The simulated model: deterministic English-like answers, paced like a real model.

The answer depends only on (prompt, seed), so a worker that takes a message over
regenerates the same token list and continues exactly where the text stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator

from services.ai_worker.providers.base import (
    Finish,
    GenerationRequest,
    ProviderEvent,
    Token,
    estimate_prompt_tokens,
)
from services.common.protocol import FinishReason
from services.common.settings import Settings

# Word classes and a tiny chain between them: enough structure that the text reads
# like English at a glance, without pretending to be a language model.
_WORDS: dict[str, tuple[str, ...]] = {
    "det": tuple("the a this that every each some any our your their one another".split()),
    "adj": tuple(
        """good new first last long great little own other old right big high different
        small large next early young important few public bad same able simple clear
        quick careful useful common local recent main real strong short full open free
        final single whole certain likely ready easy hard safe quiet bright warm fresh
        steady gentle rare narrow broad deep direct natural obvious practical""".split()
    ),
    "noun": tuple(
        """time person year way day thing man world life hand part child eye woman place
        work week case point number group problem fact idea system question plan team
        answer story message reason result change process model stream server client
        network detail moment level order area rule view story rate power value market
        method design choice reader writer city river garden window road table letter
        picture music friend family morning evening language pattern signal record note
        structure limit balance history memory project engine source future step path""".split()
    ),
    "verb": tuple(
        """is was makes takes gives finds shows keeps brings holds turns starts helps
        builds moves follows changes leads explains needs carries covers meets reaches
        supports describes creates opens closes sends reads writes checks handles
        improves reduces returns suggests offers connects tracks measures protects""".split()
    ),
    "adv": tuple(
        """often also still usually quickly slowly carefully simply really nearly already
        rarely gently clearly quietly always sometimes mostly certainly probably""".split()
    ),
    "prep": tuple("in on with for from into over under about through after before near".split()),
    "conj": tuple("and but so because while although yet".split()),
}
_NEXT: dict[str, tuple[str, ...]] = {
    "det": ("adj", "noun", "noun"),
    "adj": ("noun", "noun", "noun", "adj"),
    "noun": ("verb", "verb", "prep", "conj"),
    "verb": ("det", "det", "adv", "prep"),
    "adv": ("verb", "det", "prep"),
    "prep": ("det", "det", "noun"),
    "conj": ("det", "noun", "adv"),
}
_ENDINGS = (".", ".", ".", ".", ".", ".", "!", "?")
_MIN_SENTENCE, _MAX_SENTENCE = 6, 18
_PROMPT_WORD = re.compile(r"[A-Za-z]{4,}")
# Question words and fillers make poor topic nouns.
_NOT_TOPIC = frozenset(
    """about also been could does doing from have here into just know like make more
    much need please should some tell than that them then there they this what when
    where which while will with would your explain describe""".split()
)


#: Prompts that start with this get their own text back, verbatim (tests of what a
#: client does with a given model output: Markdown, HTML, an XSS payload).
ECHO_PREFIX = "echo "
_MARKDOWN_ASKED = re.compile(r"\bmarkdown\b", re.IGNORECASE)
_TEXT_TOKEN = re.compile(r"\s*\S+|\s+")


def text_tokens(text: str) -> list[str]:
    """`text` as tokens that join back to it exactly: each word with the whitespace
    before it (newlines included)."""
    return _TEXT_TOKEN.findall(text)


def markdown_answer(rng: random.Random, topic: tuple[str, ...]) -> str:
    """An answer that uses the Markdown people see from real models: a heading,
    emphasis, a list, a fenced code block and a table."""

    def sentence() -> str:
        return "".join(_sentence(rng, rng.randint(_MIN_SENTENCE, _MAX_SENTENCE), topic, True))

    items = "".join(f"- **{rng.choice(_WORDS['noun'])}**: {sentence()}\n" for _ in range(3))
    rows = "".join(f"| {rng.choice(_WORDS['noun'])} | {rng.randint(1, 99)} |\n" for _ in range(3))
    return (
        f"## {sentence().rstrip('.!?')}\n\n{sentence()} *{sentence()}*\n\n{items}\n"
        f"```python\ndef answer(n):\n    return n * {rng.randint(2, 9)}  # {sentence()}\n```\n\n"
        f"| name | value |\n|---|---|\n{rows}\n{sentence()}"
    )


def answer_tokens(prompt: str, seed: int, min_tokens: int, max_tokens: int) -> list[str]:
    """The full deterministic answer to `prompt` as a list of tokens.

    A prompt starting with ECHO_PREFIX is answered with the rest of it, verbatim; one
    that mentions "markdown" with a Markdown document (`markdown_answer`). Both ignore
    the token limits.

    A token is a word with its leading space (none before the very first word) or a
    punctuation mark. The length is uniform in [min_tokens, max_tokens].
    """
    # hashlib, not hash(): str hashes are salted per process, and every worker
    # must produce the same answer.
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    # Words from the prompt come back now and then, so answers differ by topic.
    found = (w.lower() for w in _PROMPT_WORD.findall(prompt))
    topic = tuple(dict.fromkeys(w for w in found if w not in _NOT_TOPIC))
    if prompt.startswith(ECHO_PREFIX) and prompt != ECHO_PREFIX:
        return text_tokens(prompt.removeprefix(ECHO_PREFIX))
    if _MARKDOWN_ASKED.search(prompt):
        return text_tokens(markdown_answer(rng, topic))
    low = max(1, min_tokens)
    total = rng.randint(low, max(low, max_tokens))

    tokens: list[str] = []
    remaining = total
    while remaining > 0:
        length = rng.randint(_MIN_SENTENCE, _MAX_SENTENCE)
        if remaining - length < _MIN_SENTENCE:
            length = remaining  # fold a too-short tail into this sentence
        tokens.extend(_sentence(rng, length, topic, first=not tokens))
        remaining -= length
    return tokens


def _sentence(rng: random.Random, length: int, topic: tuple[str, ...], first: bool) -> list[str]:
    """One sentence of exactly `length` tokens, ending with punctuation when length > 1."""
    words = length - 1 if length > 1 else 1
    comma_at = rng.randint(3, words - 2) if words >= 7 and rng.random() < 0.6 else -1
    if comma_at > 0:
        words -= 1  # the comma takes one token of the sentence
    out: list[str] = []
    kind = rng.choice(("det", "det", "noun", "adv"))
    for i in range(words):
        if i in (words - 1, comma_at - 1) and kind not in ("noun", "verb"):
            kind = "noun"  # a clause should not end on "the" or "with"
        if topic and kind == "noun" and rng.random() < 0.15:
            word = rng.choice(topic)
        else:
            word = rng.choice(_WORDS[kind])
        if i == 0:
            word = word[:1].upper() + word[1:]
        out.append(word if first and i == 0 else " " + word)
        if i == comma_at - 1:
            out.append(",")
            kind = "conj"
        else:
            kind = rng.choice(_NEXT[kind])
    if length > 1:
        out.append(rng.choice(_ENDINGS))
    return out


def continuation(tokens: list[str], text_so_far: str) -> list[str]:
    """The tokens that follow `text_so_far`, a prefix of the joined tokens.

    If the prefix ends inside a token, the rest of that token comes first.
    """
    position = len(text_so_far)
    start = 0
    for i, token in enumerate(tokens):
        end = start + len(token)
        if position < end:
            head = token[position - start :] if position > start else token
            return [head, *tokens[i + 1 :]]
        start = end
    return []


class SimulatedProvider:
    """A deterministic stand-in for a model; the default provider."""

    def __init__(
        self, *, seed: int, min_tokens: int, max_tokens: int, tokens_per_second: float
    ) -> None:
        self._seed = seed
        self._min_tokens = min_tokens
        self._max_tokens = max_tokens
        self._delay = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedProvider:
        """Build from the `SIM_*` settings."""
        return cls(
            seed=settings.sim_seed,
            min_tokens=settings.sim_min_tokens,
            max_tokens=settings.sim_max_tokens,
            tokens_per_second=settings.sim_tokens_per_second,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Yield the continuation after `request.text_so_far`, then `Finish(STOP)`."""
        tokens = answer_tokens(request.prompt, self._seed, self._min_tokens, self._max_tokens)
        emitted = 0
        for token in continuation(tokens, request.text_so_far):
            if emitted and self._delay:
                await asyncio.sleep(self._delay)
            emitted += 1
            yield Token(token)
        yield Finish(
            reason=FinishReason.STOP,
            prompt_tokens=estimate_prompt_tokens(request),
            completion_tokens=emitted,
        )

    async def aclose(self) -> None:
        """Nothing to release."""
