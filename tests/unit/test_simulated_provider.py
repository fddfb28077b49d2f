"""The simulated model: deterministic, bounded, readable, and resumable from any prefix."""

from __future__ import annotations

import pytest

from services.ai_worker.providers import build_provider
from services.ai_worker.providers.base import ChatTurn, Finish, GenerationRequest, Token
from services.ai_worker.providers.simulated import SimulatedProvider, answer_tokens
from services.common.protocol import FinishReason
from services.common.settings import Settings

pytestmark = pytest.mark.unit

PROMPTS = ["Tell me about rivers", "How do streams survive a node failure?", "hi", ""]


def make(seed: int = 0, low: int = 60, high: int = 300) -> SimulatedProvider:
    return SimulatedProvider(seed=seed, min_tokens=low, max_tokens=high, tokens_per_second=0)


async def run(
    provider: SimulatedProvider,
    prompt: str,
    text_so_far: str = "",
    history: list[ChatTurn] | None = None,
) -> tuple[list[str], Finish]:
    request = GenerationRequest("m-1", prompt, history or [], text_so_far)
    tokens: list[str] = []
    finishes: list[Finish] = []
    async for event in provider.stream(request):
        assert not finishes, "nothing may follow the Finish"
        if isinstance(event, Token):
            tokens.append(event.text)
        else:
            finishes.append(event)
    assert len(finishes) == 1
    return tokens, finishes[0]


async def test_deterministic_per_prompt_and_seed() -> None:
    first, _ = await run(make(), PROMPTS[0])
    again, _ = await run(make(), PROMPTS[0])
    other_prompt, _ = await run(make(), PROMPTS[1])
    other_seed, _ = await run(make(seed=7), PROMPTS[0])
    assert first == again
    assert "".join(first) != "".join(other_prompt)
    assert "".join(first) != "".join(other_seed)


@pytest.mark.parametrize(("low", "high"), [(60, 300), (1, 1), (5, 5), (2, 9), (40, 41)])
def test_length_within_bounds(low: int, high: int) -> None:
    lengths = {len(answer_tokens(f"prompt {i}", 0, low, high)) for i in range(200)}
    assert min(lengths) >= low
    assert max(lengths) <= high
    if high - low >= 5:
        assert len(lengths) > 1, "length should vary by prompt"


def test_reads_like_sentences() -> None:
    tokens = answer_tokens(PROMPTS[1], 0, 200, 200)
    text = "".join(tokens)
    assert not text.startswith(" ")
    assert text[0].isupper()
    assert "," in tokens
    assert text.rstrip()[-1] in ".!?"
    # After every sentence end the next word starts with a capital letter.
    for i, token in enumerate(tokens[:-1]):
        if token in {".", "!", "?"}:
            assert tokens[i + 1].startswith(" ") and tokens[i + 1][1].isupper()
    # Each token is punctuation or one word with its leading space.
    for token in tokens[1:]:
        assert token in {",", ".", "!", "?"} or (token[0] == " " and token[1:].isalpha())


async def test_usage_counts() -> None:
    history = [ChatTurn("user", "one two three"), ChatTurn("assistant", "four five")]
    tokens, finish = await run(make(), "six seven", history=history)
    assert finish.reason is FinishReason.STOP
    assert finish.completion_tokens == len(tokens)
    assert finish.prompt_tokens == 7


@pytest.mark.parametrize("prompt", PROMPTS)
async def test_continuation_from_every_prefix_equals_full_answer(prompt: str) -> None:
    provider = make(low=20, high=40)
    full_tokens, _ = await run(provider, prompt)
    full = "".join(full_tokens)
    for cut in range(len(full) + 1):
        rest, finish = await run(provider, prompt, text_so_far=full[:cut])
        assert full[:cut] + "".join(rest) == full, f"cut at {cut}"
        assert all(rest), "no empty tokens"
        assert finish.completion_tokens == len(rest)


async def test_mid_token_takeover_emits_the_rest_of_the_token_first() -> None:
    provider = make()
    full_tokens, _ = await run(provider, PROMPTS[0])
    second = full_tokens[1]
    assert len(second) >= 3  # a word with its leading space
    rest, _ = await run(provider, PROMPTS[0], text_so_far=full_tokens[0] + second[:2])
    assert rest[0] == second[2:]
    assert rest[1:] == full_tokens[2:]


async def test_takeover_after_the_end_emits_only_finish() -> None:
    provider = make()
    full_tokens, _ = await run(provider, PROMPTS[0])
    rest, finish = await run(provider, PROMPTS[0], text_so_far="".join(full_tokens))
    assert rest == []
    assert finish.completion_tokens == 0


async def test_build_provider_uses_settings() -> None:
    settings = Settings(
        model_provider="simulated", sim_seed=3, sim_min_tokens=10, sim_max_tokens=12,
        sim_tokens_per_second=0,
    )  # fmt: skip
    provider = build_provider(settings)
    assert isinstance(provider, SimulatedProvider)
    tokens, _ = await run(provider, "hello")
    assert tokens == answer_tokens("hello", 3, 10, 12)
    await provider.aclose()


def test_an_echo_prompt_is_answered_with_its_text_verbatim() -> None:
    payload = 'Look: <img src=x onerror="alert(1)">\n\n## title\n  indented'
    tokens = answer_tokens("echo " + payload, seed=1, min_tokens=60, max_tokens=300)
    assert "".join(tokens) == payload
    assert len(tokens) == len(payload.split())  # one token per word, as a model streams
    assert "".join(answer_tokens("echo ", 1, 5, 9)) != ""  # nothing to echo: a normal answer


def test_a_prompt_asking_for_markdown_gets_markdown() -> None:
    text = "".join(answer_tokens("Show me a Markdown overview", seed=3, min_tokens=5, max_tokens=9))
    assert text.startswith("## ")
    assert text.count("\n- **") == 3
    assert "\n```python\ndef answer(n):\n" in text and text.count("```") == 2
    assert "| name | value |\n|---|---|\n" in text
    # Deterministic, so a takeover continues the same document.
    assert text == "".join(answer_tokens("Show me a Markdown overview", 3, 5, 9))
    assert "## " not in "".join(answer_tokens("no marks here", 3, 5, 9))
