"""The agent for models that cannot call tools: the system routes, the model fills a form.

``SlotFillingPolicy`` stands in as the agent's model. Each turn it looks at what the tools
returned so far and picks the next call: first ``run_sql`` with a query planned from a
grammar-constrained form (``chains.tools.query_plan``) when the question names something in a
database, then ``search_documents`` when there are documents; a failed query is re-planned once
with the error shown to the model; then it writes the answer from the rows, in the question's
language, with the phrases of ``prompts/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from kb_assistant.chains.language import detect_language
from kb_assistant.chains.rag import Answer
from kb_assistant.chains.tools.query_plan import FormFiller, Links, QueryPlanner, parse_filled
from kb_assistant.chains.tools.toolbox import AgentTools, cell_text
from kb_assistant.errors import QueryRejected
from kb_assistant.prompts import Language, load_prompt, render
from kb_assistant.vectorstore.databases import QueryResult

Plan = tuple[str, str, dict[str, Any]]  # database, SQL, the filled form


class QueryPlans:
    """Plans one query for a question from the database it names most strongly."""

    def __init__(self, tools: AgentTools, fill: FormFiller | None) -> None:
        self.tools = tools
        self.fill = fill
        self._planners: dict[str, QueryPlanner] = {}

    def planner(self, database: str) -> QueryPlanner:
        """The planner of one database (its schema scanned once per question)."""
        if database not in self._planners:
            self._planners[database] = QueryPlanner(
                self.tools.database(database), self.tools.schema(database)
            )
        return self._planners[database]

    def plan(self, question: str, feedback: str = "") -> Plan | None:
        """(database, SQL, filled form) for a question that names something in a database,
        or None when it names nothing (then it is a question for the documents).

        Raises:
            QueryRejected: the form could not be filled or compiled.
        """
        best: tuple[int, str, Links] | None = None
        for database in self.tools.databases():
            links = self.planner(database).link(question)
            if links.strength and (best is None or links.strength > best[0]):
                best = (links.strength, database, links)
        if best is None:
            if self.tools.search is not None or not self.tools.databases():
                return None
            # No documents: the tables are all there is.
            first = self.tools.databases()[0]
            best = (0, first, self.planner(first).link(question))
        _, database, links = best
        planner = self.planner(database)
        form = planner.form(question, links)
        messages = planner.prompt(question, form)
        if feedback:
            messages.append({"role": "user", "content": f"The last query failed: {feedback}"})
        open_slots = {k for k, v in form.schema["properties"].items() if len(v["enum"]) > 1}
        filled = dict(form.fixed)
        if open_slots:
            if self.fill is None:
                raise QueryRejected("no model is available to fill the query form")
            filled.update(parse_filled(self.fill(messages, form.schema)))
        return database, planner.compile(filled, form), filled


class SlotFillingPolicy(BaseChatModel):
    """Stands in as the agent's model when the real one cannot call tools (see the module)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    plans: QueryPlans
    answer_documents: Callable[[str], Answer] | None = None
    documents_answer: Answer | None = None

    @property
    def tools(self) -> AgentTools:
        return self.plans.tools

    @property
    def _llm_type(self) -> str:
        return "slot-filling-policy"

    def bind_tools(self, tools: Any, **kwargs: Any) -> SlotFillingPolicy:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        question = next(str(m.content) for m in messages if isinstance(m, HumanMessage))
        results = [m for m in messages if isinstance(m, ToolMessage)]
        sql_results = [m for m in results if m.name == "run_sql"]
        searched = any(m.name == "search_documents" for m in results)
        if not results:
            return self._first_step(question)
        last = results[-1]
        if last.name == "run_sql" and last.status == "error" and len(sql_results) == 1:
            try:
                plan = self.plans.plan(question, feedback=str(last.content))
            except QueryRejected:
                plan = None
            previous = _last_args(messages, "run_sql")
            if plan is not None and plan[1] != previous.get("sql"):
                return _call("run_sql", {"sql": plan[1], "database": plan[0]})
        if sql_results and not searched and self.tools.search is not None:
            return _call("search_documents", {"query": question})
        return AIMessage(content=self._compose(question, results))

    def _first_step(self, question: str) -> AIMessage:
        """Route: tables first when the question names something in them, else documents."""
        try:
            plan = self.plans.plan(question)
        except QueryRejected as exc:
            if self.tools.search is None:
                language = detect_language(question)
                return AIMessage(content=render("agent_no_query", language, reason=str(exc)))
            plan = None
        if plan is not None:
            return _call("run_sql", {"sql": plan[1], "database": plan[0]})
        if self.tools.search is not None:
            return _call("search_documents", {"query": question})
        return AIMessage(content=load_prompt("agent_nothing", detect_language(question)))

    def _compose(self, question: str, results: list[ToolMessage]) -> str:
        language = detect_language(question)
        parts = []
        good = [m for m in results if m.name == "run_sql" and m.status != "error"]
        if good and isinstance(good[-1].artifact, QueryResult):
            parts.append(table_answer(good[-1].artifact, language))
        elif any(m.name == "run_sql" for m in results):
            error = next(m for m in reversed(results) if m.name == "run_sql").content
            parts.append(render("agent_query_failed", language, error=str(error)))
        if any(m.name == "search_documents" for m in results) and self.answer_documents:
            answer = self.answer_documents(question)
            if not answer.refused or not parts:
                self.documents_answer = answer
                parts.append(answer.answer)
        return "\n\n".join(parts) or load_prompt("agent_nothing", language)


def table_answer(result: QueryResult, language: Language) -> str:
    """The rows, said briefly: one value, one row, or a short list."""
    if not result.rows:
        return load_prompt("agent_no_rows", language)
    if len(result.rows) == 1:
        value = ", ".join(cell_text(v) for v in result.rows[0])
        return render("agent_one_row", language, value=value)
    shown = "; ".join(", ".join(cell_text(v) for v in r) for r in result.rows[:10])
    more = len(result.rows) - 10
    extra = render("agent_more_rows", language, count=str(more)) if more > 0 else ""
    return render("agent_rows", language, count=str(len(result.rows)), rows=shown, more=extra)


def _call(name: str, args: dict[str, Any]) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}"}]
    )


def _last_args(messages: Sequence[BaseMessage], name: str) -> dict[str, Any]:
    for m in reversed(messages):
        if isinstance(m, AIMessage):
            for call in m.tool_calls:
                if call["name"] == name:
                    return dict(call["args"])
    return {}
