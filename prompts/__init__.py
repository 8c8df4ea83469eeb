"""Prompt templates, one file per template and language (``NAME.LANG.txt``).

Templates use ``{variable}`` placeholders; ``VARIABLES`` lists what each one takes, and a test
checks every file against it and against what the chains supply.
"""

from __future__ import annotations

import functools
import string
from importlib import resources
from typing import Literal

Language = Literal["en", "zh"]
LANGUAGES: tuple[Language, ...] = ("en", "zh")
VARIABLES: dict[str, frozenset[str]] = {
    "secret": frozenset({"canary"}),  # the first line of every system prompt (chains.guard)
    "answer_system": frozenset(),
    "sources": frozenset({"sources"}),
    "follow_up": frozenset({"sources", "question"}),
    "condense": frozenset({"history", "question"}),
    "condense_turn": frozenset({"question"}),
    "refusal": frozenset(),
    # Asked in English whatever the answer's language: asked in Chinese, Qwen2.5-Coder-1.5B
    # replied 是 ("yes") to 7 of 7 off-topic questions over English passages.
    "relevance": frozenset({"question"}),
    "guard_note": frozenset(),
    # The agent (chains.agent, chains.tools.slot_filling): its system prompt and what it says.
    "agent_system": frozenset(),
    # The answer written from a query's result, in a prompt of its own: continuing the tool
    # conversation, the 1.5B model often replied with nothing or with prose about other rows.
    "agent_answer": frozenset({"question", "sql", "rows", "passages"}),
    # The one repair of a failed or suspicious query: SQL is English whatever the question.
    "agent_repair": frozenset({"tables", "question", "sql", "problem"}),
    "agent_doubt": frozenset(),
    "agent_no_query": frozenset({"reason"}),
    "agent_nothing": frozenset(),
    "agent_query_failed": frozenset({"error"}),
    "agent_no_rows": frozenset(),
    "agent_one_row": frozenset({"value"}),
    "agent_rows": frozenset({"count", "rows", "more"}),
    "agent_more_rows": frozenset({"count"}),
    "agent_stop_time": frozenset({"seconds"}),
    "agent_stop_steps": frozenset({"steps"}),
    "agent_stop_errors": frozenset(),
    "agent_stopped": frozenset({"reason"}),
    "agent_stopped_with": frozenset({"reason", "last"}),
    # The knowledge graph (chains.graph_extract, graph_build): extraction under a JSON-schema
    # grammar, the optional gleaning turn, and the community summaries.
    "graph_extract": frozenset(),
    "graph_passage": frozenset({"text"}),
    "graph_glean": frozenset(),
    "graph_community": frozenset({"entities", "relations"}),
}


@functools.cache
def load_prompt(name: str, language: Language) -> str:
    """The text of template ``name`` in ``language``.

    Raises:
        KeyError: no such template.
    """
    if name not in VARIABLES:
        raise KeyError(f"no prompt template '{name}'")
    return resources.files(__name__).joinpath(f"{name}.{language}.txt").read_text(encoding="utf-8")


def template_variables(text: str) -> set[str]:
    """The ``{placeholders}`` a template uses."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


def render(name: str, language: Language, **values: str) -> str:
    """Fill template ``name`` with exactly its variables.

    Raises:
        ValueError: a variable is missing or unexpected.
    """
    expected = VARIABLES[name]
    if set(values) != expected:
        raise ValueError(f"prompt '{name}' takes {sorted(expected)}, got {sorted(values)}")
    return load_prompt(name, language).format(**values)
