"""Session titles for the app's session list: what a rename accepts, and the default
title taken from a session's first prompt."""

from __future__ import annotations

import pytest

from services.common.protocol import HistoryItem, valid_session_id
from services.ws_gateway.sessions import (
    DEFAULT_TITLE_CHARS,
    TITLE_MAX,
    clean_title,
    default_title,
    new_session_id,
)

pytestmark = pytest.mark.unit


def item(text: str) -> str:
    return HistoryItem(message_id="u_1", role="user", text=text, created_at="t").model_dump_json()


def test_a_title_is_trimmed_and_collapsed() -> None:
    assert clean_title("  Trip \t plans\n ") == "Trip plans"
    assert clean_title("x" * TITLE_MAX) == "x" * TITLE_MAX


@pytest.mark.parametrize(
    ("title", "why"),
    [("", "empty"), ("  \n ", "empty"), ("x" * (TITLE_MAX + 1), "at most"), ("a\x00b", "control")],
)
def test_a_bad_title_is_refused_with_the_reason(title: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        clean_title(title)


def test_the_default_title_is_the_start_of_the_first_prompt() -> None:
    assert default_title(item("How do   streams\nwork?")) == "How do streams work?"
    long = " ".join(["word"] * 40)
    title = default_title(item(long))
    assert title.endswith("…") and len(title) <= DEFAULT_TITLE_CHARS + 1
    assert long.startswith(title.removesuffix("…"))
    assert not title.removesuffix("…").endswith(" ")  # cut at a word
    assert default_title(item("x" * 200)) == "x" * DEFAULT_TITLE_CHARS + "…"
    assert default_title(None) == ""
    assert default_title("not json") == ""


def test_new_session_ids_are_valid_and_distinct() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(valid_session_id(i) for i in ids)
