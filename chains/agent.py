"""The agent: questions over documents, tables and databases, answered with tools.

One LangChain 1.x agent (``create_agent``, a LangGraph loop) over the tools of
``chains.tools.toolbox``, bounded by ``AgentBounds`` (steps, seconds, one retry after a tool
error). What decides the next step depends on the model's capabilities
(``models.protocol.Capabilities``):

- a model with native tool calling is bound to the tools and calls them itself, writing its
  own SQL. Until a query or a search has returned its reply is held to a tool call (a
  grammar); a query that fails, or whose result cannot be the answer (``second_look``,
  ``AgentTools.counting_alone``), is repaired once in a prompt of its own; the answer is
  written from the rows in a prompt of its own, in the question's language, and its numbers
  are checked against them (``chains.support.check_numbers``);
- any other model is stood in for by ``chains.tools.slot_filling.SlotFillingPolicy``, which
  routes deterministically and has the model fill a grammar-constrained query form.

Either way every query goes through ``chains.tools.sql.run_query``; no tool executes
model-written Python or shell, and the answer passes the output guard.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, hook_config
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig

from kb_assistant.chains.citations import Citation
from kb_assistant.chains.guard import OutputGuard, new_canary
from kb_assistant.chains.language import detect_language
from kb_assistant.chains.rag import Answer, fence
from kb_assistant.chains.support import SentenceCheck, check_numbers
from kb_assistant.chains.tools.slot_filling import QueryPlans, SlotFillingPolicy, table_answer
from kb_assistant.chains.tools.toolbox import AgentLimits, AgentTools, result_text
from kb_assistant.errors import KBError, QueryFailed
from kb_assistant.models.protocol import ChatModel
from kb_assistant.prompts import Language, load_prompt, render
from kb_assistant.vectorstore.databases import QueryResult
from kb_assistant.vectorstore.knowledge_base import SearchHit

__all__ = ["AgentLimits", "AgentResult", "AgentStep", "AgentTools", "run_agent"]

ANSWERING_TOOLS = frozenset({"run_sql", "search_documents"})  # their results answer questions
# Calls of the other tools (list_tables, describe_table) before the forced call may only be
# one of those: Qwen2.5-Coder-0.5B described tables until the step limit, 15 questions of 15.
LOOKS_BEFORE_ANSWERING = 2
# A question asking which thing or who: its answer is a name, not only an id or a count.
_ASKS_NAME = re.compile(r"\b(?:which|who|whom|whose|names?)\b|哪|谁|名字|名称|叫什么", re.I)
REPAIR_SCHEMA = {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}
_ASKS_COUNT = re.compile(r"\bhow (?:many|much)\b|多少|几", re.I)
_LEFTOVER_CALL = re.compile(r'^\W*\{+\s*"name"\s*:|<tool_call>')


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
    sentences: list[SentenceCheck] = field(default_factory=list)  # numbers checked on the rows

    @property
    def unsupported(self) -> list[SentenceCheck]:
        """The answer's sentences with a number no query returned."""
        return [s for s in self.sentences if not s.supported]

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
            "sentences": [s.to_json() for s in self.sentences],
        }


class AgentBounds(AgentMiddleware):
    """Steps and seconds are bounded. A query that fails, or whose result cannot be the
    answer (``second_look``), is repaired once by ``repair``; after that a tool error goes
    back to the model once, and a second one ends the loop."""

    def __init__(
        self,
        limits: AgentLimits,
        language: Language,
        question: str = "",
        *,
        compose: Callable[[Sequence[BaseMessage]], str] | None = None,
        repair: Callable[[str, str], str] | None = None,
        smell: Callable[[str], str | None] = lambda sql: None,
        documents: bool = False,
    ) -> None:
        super().__init__()
        self.limits = limits
        self.language = language
        self.question = question
        self.compose = compose  # writes the answer once a query has returned
        self.repair = repair  # (sql, problem) -> a corrected query, or ""
        self.repaired = False  # one repair per question
        self.smell = smell  # what is wrong with a query's SQL itself, or None
        self.documents = documents  # the knowledge base has documents to search
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
        call (an answer needs something to be read from), after two looks one of those two;
        once a query has returned, the answer is written from its rows (``compose``)."""
        found = any(
            isinstance(m, ToolMessage) and m.status != "error" and m.name in ANSWERING_TOOLS
            for m in request.messages
        )  # fmt: skip
        if not found and request.tools:
            looked = sum(isinstance(m, ToolMessage) for m in request.messages)
            tools = request.tools
            if looked >= LOOKS_BEFORE_ANSWERING:  # enough looking: query or search now
                tools = [t for t in tools if getattr(t, "name", "") in ANSWERING_TOOLS] or tools
            return handler(request.override(tool_choice="any", tools=tools))
        last = request.messages[-1] if request.messages else None
        ran = isinstance(last, ToolMessage) and last.name == "run_sql" and last.status != "error"
        result = last.artifact if ran and isinstance(last, ToolMessage) else None
        if not isinstance(result, QueryResult) or self.compose is None:
            return handler(request)
        if self._doubt(result) is None:
            return AIMessage(content=self.compose(request.messages))
        # Still doubtful after the repair: the rows as they are, said to be doubtful (the
        # model, asked to answer from ids, named a genre that is not in them).
        doubt = load_prompt("agent_doubt", self.language)
        return AIMessage(content=f"{table_answer(result, self.language)}\n\n{doubt}")

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        self.steps += 1
        call = request.tool_call
        try:
            message = handler(request)
        except QueryFailed as exc:
            smell = self.smell(str(call["args"].get("sql", "")))
            problem = f"it failed: {exc}" + (f"; {smell}" if smell else "")
            return self._repaired(request, handler, problem) or self._error(call, exc)
        except KBError as exc:
            return self._error(call, exc)
        result = getattr(message, "artifact", None)
        if call["name"] != "run_sql" or not isinstance(result, QueryResult):
            return message
        doubt = self._doubt(result)
        if doubt is None:
            return message
        fixed = self._repaired(request, handler, doubt)
        if fixed is not None and self._doubt(fixed.artifact) is None:
            return fixed
        return message

    def _doubt(self, result: QueryResult) -> str | None:
        """Why a query's result cannot be the answer, or None."""
        return second_look(self.question, result) or self.smell(result.sql)

    def _error(self, call: dict[str, Any], exc: Exception) -> ToolMessage:
        self.errors += 1
        retry = " Fix the call and try once more." if self.errors == 1 else ""
        if retry and self.documents and call["name"] == "run_sql":
            # Asked about a document with a database connected, the model queried tables
            # that do not exist, twice, and never searched.
            retry += " If the answer is in the documents, call search_documents instead."
        return ToolMessage(
            content=f"Error: {exc}.{retry}", tool_call_id=call["id"], name=call["name"],
            status="error",
        )  # fmt: skip

    def _repaired(self, request: Any, handler: Callable[[Any], Any], problem: str) -> Any:
        """The tool's message for the repaired query, or None (no repair left, the same
        query again, or the repaired one failed too)."""
        call = request.tool_call
        first = str(call["args"].get("sql", ""))
        if call["name"] != "run_sql" or self.repaired or self.repair is None or not first:
            return None
        self.repaired = True
        sql = self.repair(first, problem).strip()
        if not sql or " ".join(sql.split()) == " ".join(first.split()):
            return None
        try:
            message = handler(
                request.override(tool_call={**call, "args": {**call["args"], "sql": sql}})
            )
        except KBError:
            return None
        return message.model_copy(update={
            "additional_kwargs": {"first_sql": first, "problem": problem},
        })  # fmt: skip

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
    native_tools: bool = True,
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
    capabilities = chat_model.capabilities
    if not native_tools:
        capabilities = replace(capabilities, native_tools=False)
    canary = canary or new_canary()
    system = render("secret", "en", canary=canary) + load_prompt("agent_system", language)

    native = capabilities.native_tools
    bounds = AgentBounds(
        tools.limits, language, question,
        compose=_composer(question, language, chat_model, system) if native else None,
        repair=_repairer(question, tools, chat_model, system)
        if native and capabilities.fill_form else None,
        smell=tools.counting_alone, documents=tools.search is not None,
    )  # fmt: skip
    model: BaseChatModel = chat_model
    if not capabilities.native_tools:
        fill = chat_model.fill_form if capabilities.fill_form else None
        model = SlotFillingPolicy(plans=QueryPlans(tools, fill), answer_documents=answer_documents)
    loop_system = system
    if capabilities.native_tools and tools.databases():
        loop_system += "\n\n" + tools.list_tables()  # the model writes SQL knowing the names
    agent = create_agent(model, tools.as_langchain(), system_prompt=loop_system,
                         middleware=[bounds])  # fmt: skip
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
    if result.columns and (not result.answer.strip() or _LEFTOVER_CALL.search(result.answer)):
        rows = [tuple(r) for r in result.rows]
        result.answer = table_answer(QueryResult("", result.columns, rows, False, 0.0), language)
    searched = any(s.tool == "search_documents" and not s.error for s in result.steps)
    if native and not result.sql and searched and answer_documents is not None:
        # No query answered and the documents were searched: the answer is the RAG chain's
        # (cited, checked, abstaining). The tool conversation's own reply to passages was
        # empty or a leftover tool call for the 1.5B model on mixed knowledge bases.
        documents = answer_documents(question)
        result.answer, result.citations = documents.answer, list(documents.citations)
    if result.sql:
        values = [v for row in result.rows for v in row] + [len(result.rows)]
        result.sentences = check_numbers(result.answer, values, question)
    guard = OutputGuard(canary)
    result.answer = guard.settle(result.answer)
    if guard.findings:
        result.screened = dict(guard.findings)
        result.answer = f"{result.answer}\n\n{load_prompt('guard_note', language)}".strip()
    if isinstance(model, SlotFillingPolicy) and model.documents_answer is not None:
        result.citations = list(model.documents_answer.citations)
    return result


def _composer(
    question: str, language: Language, chat_model: ChatModel, system: str
) -> Callable[[Sequence[BaseMessage]], str]:
    """Writes the answer from the last query's rows, in a prompt of its own."""

    def compose(messages: Sequence[BaseMessage]) -> str:
        prompt = _answer_prompt(question, messages, language)
        reply = chat_model.invoke([SystemMessage(system), HumanMessage(prompt)])
        return _strip_think(str(reply.content))

    return compose


def _repairer(
    question: str, tools: AgentTools, chat_model: ChatModel, system: str
) -> Callable[[str, str], str]:
    """Has the model rewrite a failed or suspicious query, in a prompt of its own that holds
    the schema, the query and its problem, under a grammar (``{"sql": ...}``). In the tool
    conversation the 1.5B model sent the same failing query again, word for word."""

    def repair(sql: str, problem: str) -> str:
        prompt = render("agent_repair", "en", tables=tools.list_tables(), question=question,
                        sql=sql, problem=problem)  # fmt: skip
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        try:
            data = json.loads(chat_model.fill_form(messages, REPAIR_SCHEMA))
        except json.JSONDecodeError:
            return ""
        return str(data.get("sql", "")) if isinstance(data, dict) else ""

    return repair


def _answer_prompt(question: str, messages: Sequence[BaseMessage], language: Language) -> str:
    """The prompt of the answer written from the last query's result (and any passages the
    documents gave)."""
    results = [m for m in messages if isinstance(m, ToolMessage) and m.status != "error"]
    query = next(m.artifact for m in reversed(results) if isinstance(m.artifact, QueryResult))
    found = [str(m.content) for m in results if m.name == "search_documents"]
    passages = "\n" + "\n\n".join(found) + "\n" if found else ""
    return render("agent_answer", language, question=question, sql=query.sql,
                  rows=fence(result_text(query)), passages=passages)  # fmt: skip


def second_look(question: str, result: QueryResult) -> str | None:
    """Why a query's result cannot be the answer (said to the model repairing it), or None.

    Two shapes: nothing (no rows, only empty values, or a count of 0), and only numbers where
    the question asks which thing, who or what name: ids (grouped by ``GenreId``, ``Genre``
    not joined), or a measure without the name it belongs to (``MAX(Milliseconds)`` for the
    longest track's name), unless the question also asks how many.
    """
    values = [v for row in result.rows for v in row]
    if not values or all(v is None for v in values) or values == [0]:
        return (
            "it returned nothing: check the values and names the question uses against the "
            "tables and their links"
        )
    first = result.rows[0]
    texts = any(isinstance(v, str) for v in first)  # a label, even '2009' from strftime
    ids = any(c.lower().endswith("id") for c in result.columns)
    if _ASKS_NAME.search(question) and not texts and (ids or not _ASKS_COUNT.search(question)):
        return (
            "the question asks for a name, but the result holds only ids and numbers: join the "
            "table that holds the names (follow the links, X.FooId -> Foo.FooId) and keep the "
            "numbers"
        )
    return None


def _steps(messages: Sequence[BaseMessage]) -> list[AgentStep]:
    calls = {c["id"]: c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
    steps = []
    for m in messages:
        if isinstance(m, ToolMessage):
            call = calls.get(m.tool_call_id)
            name, args = (call["name"], dict(call["args"])) if call else (m.name or "", {})
            if "first_sql" in m.additional_kwargs and isinstance(m.artifact, QueryResult):
                args.update(sql=m.artifact.sql, first_sql=m.additional_kwargs["first_sql"],
                            repaired_because=m.additional_kwargs["problem"])  # fmt: skip
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
