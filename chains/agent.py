"""The agent: questions over documents, tables and databases, answered with tools.

One LangChain 1.x agent (``create_agent``, a LangGraph loop) over the tools of
``chains.tools.toolbox``, bounded by ``AgentBounds`` (steps, seconds, one retry after a tool
error). What decides the next step depends on the model's capabilities
(``models.protocol.Capabilities``):

- a model with native tool calling is bound to the tools and calls them itself, writing its
  own SQL;
- any other model is stood in for by ``chains.tools.slot_filling.SlotFillingPolicy``, which
  routes deterministically and has the model fill a grammar-constrained query form.

Either way every query goes through ``chains.tools.sql.run_query``; no tool executes
model-written Python or shell, and the answer passes the output guard.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, hook_config
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig

from kb_assistant.chains.citations import Citation
from kb_assistant.chains.guard import OutputGuard, new_canary
from kb_assistant.chains.language import detect_language
from kb_assistant.chains.rag import Answer
from kb_assistant.chains.tools.slot_filling import QueryPlans, SlotFillingPolicy
from kb_assistant.chains.tools.toolbox import AgentLimits, AgentTools
from kb_assistant.errors import KBError
from kb_assistant.models.protocol import ChatModel
from kb_assistant.prompts import Language, load_prompt, render
from kb_assistant.vectorstore.databases import QueryResult
from kb_assistant.vectorstore.knowledge_base import SearchHit

__all__ = ["AgentLimits", "AgentResult", "AgentStep", "AgentTools", "run_agent"]

ANSWERING_TOOLS = frozenset({"run_sql", "search_documents"})  # their results answer questions


@dataclass
class AgentStep:
    """One tool call: what was asked, what came back."""

    tool: str
    input: dict[str, Any]
    output: str
    error: bool = False


@dataclass
class AgentResult:
    """What ``kb agent`` shows."""

    answer: str
    steps: list[AgentStep] = field(default_factory=list)
    sql: list[str] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # of the last successful query
    rows: list[list[Any]] = field(default_factory=list)
    mode: str = "slot-filling"
    stopped: str | None = None
    seconds: float = 0.0
    screened: dict[str, int] = field(default_factory=dict)  # removed from the answer (guard)

    def to_json(self) -> dict[str, Any]:
        """``{answer, steps: [{tool, input, output}], sql, citations, ...}``."""
        return {
            "answer": self.answer,
            "steps": [
                {"tool": s.tool, "input": s.input, "output": s.output, "error": s.error}
                for s in self.steps
            ],
            "sql": self.sql,
            "citations": [c.to_json() for c in self.citations],
            "columns": self.columns,
            "rows": self.rows,
            "mode": self.mode,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "screened": self.screened,
        }


class AgentBounds(AgentMiddleware):
    """Steps and seconds are bounded; a tool error goes back to the model once."""

    def __init__(self, limits: AgentLimits, language: Language) -> None:
        super().__init__()
        self.limits = limits
        self.language = language
        self.started = time.perf_counter()
        self.steps = 0
        self.errors = 0
        self.stopped: str | None = None

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        reason = None
        if time.perf_counter() - self.started > self.limits.max_seconds:
            reason = render("agent_stop_time", self.language,
                            seconds=f"{self.limits.max_seconds:g}")  # fmt: skip
        elif self.steps >= self.limits.max_steps:
            reason = render("agent_stop_steps", self.language, steps=str(self.limits.max_steps))
        elif self.errors >= 2:
            reason = load_prompt("agent_stop_errors", self.language)
        if reason is None:
            return None
        self.stopped = reason
        return {"messages": [AIMessage(content=self._known(state["messages"], reason))],
                "jump_to": "end"}  # fmt: skip

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Until a query or a document search has returned, the model's reply must be a tool
        call: an answer needs something to be read from."""
        found = any(
            isinstance(m, ToolMessage) and m.status != "error" and m.name in ANSWERING_TOOLS
            for m in request.messages
        )  # fmt: skip
        if not found and request.tools:
            request = request.override(tool_choice="any")
        return handler(request)

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        self.steps += 1
        call = request.tool_call
        try:
            return handler(request)
        except KBError as exc:
            self.errors += 1
            retry = " Fix the call and try once more." if self.errors == 1 else ""
            return ToolMessage(
                content=f"Error: {exc}.{retry}", tool_call_id=call["id"], name=call["name"],
                status="error",
            )  # fmt: skip

    def _known(self, messages: Sequence[BaseMessage], reason: str) -> str:
        """What to say when the loop is cut short: the reason and the last good result."""
        good = [m for m in messages if isinstance(m, ToolMessage) and m.status != "error"]
        last = str(good[-1].content) if good else ""
        if not last:
            return render("agent_stopped", self.language, reason=reason)
        return render("agent_stopped_with", self.language, reason=reason, last=last)


def run_agent(
    question: str,
    tools: AgentTools,
    chat_model: ChatModel,
    *,
    answer_documents: Callable[[str], Answer] | None = None,
    on_step: Callable[[AgentStep], None] | None = None,
    canary: str | None = None,
) -> AgentResult:
    """Answer ``question`` with the agent loop (native tool calls or slot filling).

    The answer is screened (``chains.guard``) whichever wrote it: a tool's result, a table
    cell or the model; ``canary`` is the system prompt's secret (None: a new one).

    Raises:
        KBError: the question is empty.
    """
    if not question.strip():
        raise KBError("the question is empty")
    started = time.perf_counter()
    language = detect_language(question)
    bounds = AgentBounds(tools.limits, language)
    capabilities = chat_model.capabilities
    model: BaseChatModel = chat_model
    if not capabilities.native_tools:
        fill = chat_model.fill_form if capabilities.fill_form else None
        model = SlotFillingPolicy(plans=QueryPlans(tools, fill), answer_documents=answer_documents)
    canary = canary or new_canary()
    system = render("secret", "en", canary=canary) + load_prompt("agent_system", language)
    if capabilities.native_tools:
        system += "\n\n" + tools.list_tables()  # the model writes SQL knowing the names
    agent = create_agent(model, tools.as_langchain(), system_prompt=system, middleware=[bounds])
    config: RunnableConfig = {"recursion_limit": 4 * tools.limits.max_steps + 8}
    final: dict[str, Any] = {"messages": []}
    seen = 0
    inputs: Any = {"messages": [HumanMessage(question)]}
    for state in agent.stream(inputs, config, stream_mode="values"):
        final = state
        if on_step is not None:
            steps = _steps(state["messages"])
            for step in steps[seen:]:
                on_step(step)
            seen = len(steps)
    result = _result(final["messages"], capabilities.native_tools, bounds, started)
    guard = OutputGuard(canary)
    result.answer = guard.settle(result.answer)
    if guard.findings:
        result.screened = dict(guard.findings)
        result.answer = f"{result.answer}\n\n{load_prompt('guard_note', language)}".strip()
    if isinstance(model, SlotFillingPolicy) and model.documents_answer is not None:
        result.citations = list(model.documents_answer.citations)
    return result


def _steps(messages: Sequence[BaseMessage]) -> list[AgentStep]:
    calls = {c["id"]: c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
    steps = []
    for m in messages:
        if isinstance(m, ToolMessage):
            call = calls.get(m.tool_call_id)
            name, args = (call["name"], dict(call["args"])) if call else (m.name or "", {})
            steps.append(AgentStep(str(name), args, str(m.content), m.status == "error"))
    return steps


def _result(
    messages: Sequence[BaseMessage], native: bool, bounds: AgentBounds, started: float
) -> AgentResult:
    answer = next(
        (str(m.content) for m in reversed(messages) if isinstance(m, AIMessage) and m.content),
        "",
    )
    result = AgentResult(answer=_strip_think(answer), steps=_steps(messages),
                         mode="native tool calls" if native else "slot-filling",
                         stopped=bounds.stopped)  # fmt: skip
    hits: list[SearchHit] = []
    for m in messages:
        if not isinstance(m, ToolMessage) or m.status == "error":
            continue
        if m.name == "run_sql" and isinstance(m.artifact, QueryResult):
            result.sql.append(m.artifact.sql)
            result.columns = list(m.artifact.columns)
            result.rows = [list(r) for r in m.artifact.rows]
        elif m.name == "search_documents" and isinstance(m.artifact, list):
            hits += m.artifact
    result.citations = [Citation.from_hit(n, h, inferred=True) for n, h in enumerate(hits, 1)]
    result.seconds = time.perf_counter() - started
    return result


def _strip_think(text: str) -> str:
    return re.sub(r"<think>.*?</think>", "", text, flags=re.S).strip()
