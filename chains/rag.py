"""The answering chain: condense -> retrieve -> abstain? -> budget -> stream -> citations.

``RagChain`` is built from parts it is given (a retrieve function, a LangChain chat model,
parameters) and reads no settings. The prompt puts static text first (the system rules), then
the passages, then the conversation, then the question. A follow-up continues the previous
prompt: that prompt and its answer are repeated exactly, and the follow-up's message brings the
passages new to the conversation (numbered after the others) with the question, so llama.cpp
evaluates only that message. Sources are fenced as data; text in them cannot close the fence.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from kb_assistant.chains.citations import (
    Attribution,
    Citation,
    CitationFilter,
    infer_citations,
)
from kb_assistant.chains.guard import OutputGuard, new_canary
from kb_assistant.chains.language import detect_language
from kb_assistant.chains.support import Embed, SentenceCheck, check_sentences
from kb_assistant.errors import ContextOverflow
from kb_assistant.models.protocol import ChatModel, Generation
from kb_assistant.prompts import LANGUAGES, Language, load_prompt, render
from kb_assistant.vectorstore import SearchHit
from kb_assistant.vectorstore.conversations import StoredTurn
from kb_assistant.vectorstore.keywords import content_words

Retrieve = Callable[[str, int], list[SearchHit]]
Fetch = Callable[[Sequence[int]], list[SearchHit]]
_FENCE = re.compile(r"<\s*/?\s*sources?\b", re.IGNORECASE)

# A small model that has answered often goes on to invent more <source> blocks, copying
# passages (and any instructions in them) into the answer: it ends there.
STOP = ["<source", "</source"]


@dataclass(frozen=True)
class Turn:
    """One exchange of a conversation."""

    question: str
    answer: str
    passages: tuple[int, ...] = ()  # chunk ids that were in the prompt, numbered from 1
    # None: the turn's prompt was new (all passages in the system message). A number: it
    # continued the previous turn's prompt, adding that many of ``passages`` (the last ones)
    # in its own message.
    appended: int | None = None
    earlier: int = 0  # a new prompt: how many of the turns before it were in it
    language: Language | None = None


def history_from(turns: Sequence[StoredTurn]) -> list[Turn]:
    """A stored conversation as the chain's history (refusals are left out: they carry no
    content)."""
    return [_turn(t) for t in turns if not t.refused]


def _turn(stored: StoredTurn) -> Turn:
    """A stored turn as history, with the layout of its prompt (to rebuild it exactly)."""
    trace = stored.trace
    prompt = trace.get("prompt", {})
    language = trace.get("language")
    return Turn(
        stored.question,
        stored.answer,
        tuple(s["chunk_id"] for s in trace.get("in_prompt", [])),
        appended=prompt["appended_sources"] if prompt.get("continues_previous") else None,
        earlier=trace.get("history_turns", {}).get("kept", 0),
        language=language if language in LANGUAGES else None,
    )


@dataclass(frozen=True)
class RagParams:
    """What the chain needs to know; chosen by the caller (from settings)."""

    candidates: int = 8  # retrieved, scored and shown in the trace
    max_passages: int = 4  # at most this many go into the prompt
    follow_up_passages: int = 1  # a follow-up adds those of its best this many not yet shown
    passage_token_budget: int = 700  # and at most this many tokens of them
    answer_tokens: int = 384  # reserved for the answer
    history_share: float = 0.25  # of the context, at most, for earlier turns
    min_dense: float = 0.35  # abstain below this cosine ...
    min_dense_cross: float | None = None  # ... (this one when the passage's language differs)
    min_coverage: float = 0.75  # ... unless this share of the question's words is found
    support_cosine: float = 0.5  # an answer sentence this close to a passage is supported
    condense: bool = True  # rewrite follow-ups with the model (else: previous question + it)
    condense_tokens: int = 48  # a longer rewrite is refused anyway (24 words at most)
    relevance_tokens: int = 4  # "do the passages answer it?" needs one word
    language: Language | None = None  # answer in this language; None: the question's


@dataclass
class Answer:
    """The result of one question."""

    answer: str
    refused: bool
    language: Language
    citations: list[Citation] = field(default_factory=list)
    trace: dict[str, Any] = field(default_factory=dict)
    passages: list[Citation] = field(default_factory=list)  # every passage in the prompt
    sentences: list[SentenceCheck] = field(default_factory=list)  # each checked for support

    @property
    def unsupported(self) -> list[SentenceCheck]:
        """The sentences no passage supports."""
        return [s for s in self.sentences if not s.supported]

    def to_json(self) -> dict[str, Any]:
        """The stable machine-readable form (``kb ask --json``)."""
        return {
            "answer": self.answer,
            "refused": self.refused,
            "language": self.language,
            "citations": [c.to_json() for c in self.citations],
            "sources": [c.to_json() for c in self.passages],
            "sentences": [s.to_json() for s in self.sentences],
            "trace": self.trace,
        }


def fence(text: str) -> str:
    """Source text that cannot open or close the <sources> fence."""
    return _FENCE.sub(lambda m: m.group().replace("<", "&lt;"), text)


def passage_block(n: int, hit: SearchHit) -> str:
    """One passage as the prompt shows it (a ``<source>`` block)."""
    chunk = hit.chunk
    attrs = [f'id="{n}"', f'file="{fence(chunk.name)}"']
    attrs += [f'page="{chunk.page}"'] if chunk.page else []
    attrs += [f'sheet="{fence(chunk.sheet)}"'] if chunk.sheet else []
    attrs += [f'section="{fence(chunk.heading)}"'] if chunk.heading else []
    return f"<source {' '.join(attrs)}>\n{fence(chunk.text)}\n</source>"


def evidence(question: str, hits: Sequence[SearchHit]) -> tuple[float, float]:
    """Best dense cosine, and the largest share of the question's words one hit contains."""
    dense = max((h.dense_score for h in hits if h.dense_score is not None), default=0.0)
    words = set(content_words(question))
    coverage = 0.0
    if words:
        for hit in hits[:5]:
            found = set(content_words(f"{hit.chunk.heading or ''} {hit.chunk.text}"))
            coverage = max(coverage, len(words & found) / len(words))
    return dense, coverage


@dataclass(frozen=True)
class Prior:
    """The previous turn's prompt and answer, rebuilt message for message."""

    messages: list[BaseMessage]
    passages: list[SearchHit]  # every passage in it, numbered from 1
    base: int  # how many of them are in the system message
    turns: int  # how many earlier turns it holds


class RagChain:
    """Answers questions from a knowledge base with a chat model."""

    def __init__(
        self,
        retrieve: Retrieve,
        chat_model: ChatModel,
        params: RagParams,
        *,
        fetch: Fetch | None = None,
        canary: str | None = None,
        embed: Embed | None = None,
    ) -> None:
        """Args:
        retrieve: ``(query, k) -> hits``, best first.
        chat_model: the chat model (``models.protocol.ChatModel``).
        params: budgets and thresholds.
        fetch: chunk ids -> hits, to rebuild the previous turn's prompt (prefix reuse).
        canary: the system prompt's secret (``chains.guard``); keep one per model so that
            prompts keep their common prefix. None: a new one.
        embed: texts -> unit vectors (the knowledge base's embedding model), for checking
            each answer sentence against its passages; None: key terms only.
        """
        self.retrieve = retrieve
        self.chat_model = chat_model
        self.params = params
        self.fetch = fetch
        self.canary = canary or new_canary()
        self.embed = embed
        self._on_passages: Callable[[list[Citation]], None] | None = None

    def answer(
        self,
        question: str,
        history: Sequence[Turn] = (),
        *,
        on_token: Callable[[str], None] | None = None,
        on_wait: Callable[[], None] | None = None,
        on_passages: Callable[[list[Citation]], None] | None = None,
    ) -> Answer:
        """Answer ``question`` (a follow-up of ``history``), streaming through ``on_token``;
        ``on_passages`` hears the passages going into the prompt before the model reads it
        (so they can be shown while it does)."""
        started = time.perf_counter()
        self._on_passages = on_passages
        language = self.params.language or detect_language(question)
        trace: dict[str, Any] = {"question": question, "language": language}
        prior = self._replay(history, language)
        query = self._condense(question, history, prior, language, trace=trace, on_wait=on_wait)
        hits = self.retrieve(query, self.params.candidates)
        trace["retrieval_s"] = round(time.perf_counter() - started, 4)
        trace["candidates"] = [_candidate(h) for h in hits]
        if any(h.graph for h in hits):  # the entities and relations that brought passages in
            trace["graph"] = list(dict.fromkeys(f for h in hits for f in h.graph))
        dense, coverage = evidence(query, hits)
        min_dense = self._dense_threshold(query, hits)
        trace["evidence"] = {
            "dense": round(dense, 4), "coverage": round(coverage, 3),
            "min_dense": min_dense, "min_coverage": self.params.min_coverage,
        }  # fmt: skip
        if dense < min_dense and coverage < self.params.min_coverage:
            return self._refuse(language, trace, on_token, started)
        # Let in only by the lower cross-language threshold: there the cosines of related and
        # unrelated text overlap, so the model is asked whether the passages answer it.
        confirm = dense < self.params.min_dense and coverage < self.params.min_coverage
        return self._generate(
            question, history, language, hits, prior=prior, confirm=confirm,
            trace=trace, on_token=on_token, on_wait=on_wait, started=started,
        )  # fmt: skip

    def _dense_threshold(self, query: str, hits: Sequence[SearchHit]) -> float:
        """The abstention cosine: lower when the closest passage is in another language than
        the question (multilingual models score across languages lower)."""
        dense = [h for h in hits if h.dense_score is not None]
        if self.params.min_dense_cross is None or not dense:
            return self.params.min_dense
        best = max(dense, key=lambda h: h.dense_score or 0.0)
        if detect_language(best.chunk.text) == detect_language(query):
            return self.params.min_dense
        return self.params.min_dense_cross

    # --- steps --------------------------------------------------------------------------

    def _replay(self, history: Sequence[Turn], language: Language) -> Prior | None:
        """The previous turn's prompt followed by its answer, as sent; None when it cannot be
        rebuilt exactly (no history, a passage deleted since, another answer language)."""
        if not history or not history[-1].passages or self.fetch is None:
            return None
        start = len(history) - 1
        while start > 0 and history[start].appended is not None:
            start -= 1
        head, chain = history[start], history[start:]
        if head.appended is not None or head.language not in (None, language):
            return None  # the conversation's first prompt is not in the history given
        wanted = history[-1].passages
        hits = self.fetch(wanted)
        base = len(head.passages)
        appended = sum(t.appended or 0 for t in chain[1:])
        if [h.chunk.chunk_id for h in hits] != list(wanted) or base + appended != len(wanted):
            return None
        blocks = "\n".join(passage_block(n, h) for n, h in enumerate(hits[:base], start=1))
        earlier = history[max(0, start - head.earlier) : start]
        messages = self._messages(language, blocks, earlier, head.question)
        messages.append(AIMessage(head.answer))
        shown = base
        for turn in chain[1:]:
            added = hits[shown : shown + (turn.appended or 0)]
            messages += [
                HumanMessage(self._follow_up(language, added, shown + 1, turn.question)),
                AIMessage(turn.answer),
            ]
            shown += len(added)
        return Prior(messages, hits, base, len(earlier) + len(chain))

    def _follow_up(
        self, language: Language, added: Sequence[SearchHit], first: int, question: str
    ) -> str:
        """A follow-up's message: the passages it adds (numbered from ``first``), the question."""
        if not added:
            return question
        blocks = "\n".join(passage_block(n, h) for n, h in enumerate(added, start=first))
        return render("follow_up", language, sources=blocks, question=question).rstrip()

    def _condense_messages(
        self, question: str, history: Sequence[Turn], prior: Prior | None, language: Language
    ) -> list[BaseMessage]:
        if prior is not None:
            # The previous prompt and answer plus one instruction: llama.cpp resumes from its
            # cached state and evaluates only the new tail.
            instruction = render("condense_turn", language, question=question)
            messages = [*prior.messages, HumanMessage(instruction)]
            window = self.chat_model.context_window
            size = self.chat_model.get_num_tokens_from_messages(messages)
            if size + self.params.condense_tokens <= window:
                return messages
        recent = history[-3:]
        lines = [f"User: {t.question}\nAssistant: {_shorten(t.answer, 300)}" for t in recent]
        return [
            HumanMessage(render("condense", language, history="\n".join(lines), question=question))
        ]

    def _condense(
        self,
        question: str,
        history: Sequence[Turn],
        prior: Prior | None,
        language: Language,
        *,
        trace: dict[str, Any],
        on_wait: Callable[[], None] | None,
    ) -> str:
        """A standalone query for retrieval (the question itself when there is no history)."""
        trace["standalone_query"] = question
        if not history:
            return question
        recent = history[-3:]
        if not self.params.condense:
            query = f"{recent[-1].question} {question}"
            trace["standalone_query"] = query
            trace["condense"] = "off: the previous question is searched with this one"
            return query
        messages = self._condense_messages(question, history, prior, language)
        stats = Generation()
        pieces = []
        began = time.perf_counter()
        for piece in self.chat_model.stream_text(messages, stats=stats, on_wait=on_wait):
            pieces.append(piece)
            text = "".join(pieces).strip()
            # One line, one question: stop at its end rather than wait for the newline.
            ended = "\n" in text or text.endswith(("?", "？"))
            if ended or len(pieces) >= self.params.condense_tokens:
                break
        rewritten = _first_line("".join(pieces))
        asked = set(content_words(question))
        topic = set(content_words(" ".join(t.question for t in recent))) - asked
        # A small model may ramble, answer instead, change the subject or just echo the
        # question: keep its rewrite only if it is short, related to the question or the
        # conversation, and adds something the question lacks ("one" -> "a package").
        words = set(content_words(rewritten))
        short = len(rewritten) <= max(200, 3 * len(question)) and len(words) <= 24
        related = bool(words & (asked | topic))
        if rewritten and short and related and (words - asked or not topic):
            query = rewritten
        else:
            query = f"{recent[-1].question} {question}"
            trace["condense_fallback"] = rewritten
        trace["standalone_query"] = query
        trace["condense_s"] = round(time.perf_counter() - began, 4)
        return query

    def _refuse(
        self,
        language: Language,
        trace: dict[str, Any],
        on_token: Callable[[str], None] | None,
        started: float,
        *,
        because: str = "no retrieved passage is close enough to the question",
        read: Sequence[Citation] = (),
    ) -> Answer:
        text = load_prompt("refusal", language)
        trace["refused_because"] = because
        if read:
            trace["passages"] = [c.to_json() for c in read]
        trace["total_s"] = round(time.perf_counter() - started, 4)
        if on_token is not None:
            on_token(text)
        return Answer(text, True, language, [], trace, list(read))

    def _sources_answer(
        self,
        language: Language,
        blocks: str,
        question: str,
        trace: dict[str, Any],
        on_wait: Callable[[], None] | None,
    ) -> bool:
        """Whether the model says the passages answer ``question`` (asked with the answer's
        own system prompt and passages, so llama.cpp reuses that prefix for the answer).

        A reply that is neither yes nor no counts as yes: the check may only hold back an
        answer, and only when the model says so.
        """
        began = time.perf_counter()
        ask = render("relevance", "en", question=question)
        messages = self._messages(language, blocks, [], ask)
        pieces: list[str] = []
        for piece in self.chat_model.stream_text(messages, stats=Generation(), on_wait=on_wait):
            pieces.append(piece)
            if len(pieces) >= self.params.relevance_tokens or re.search(r"\w", "".join(pieces)):
                break
        reply = "".join(pieces).strip()
        word = re.match(r"\W*(\w+)", reply)
        says_no = word is not None and word.group(1).lower() in {"no", "否", "不", "没有"}
        trace["relevance"] = {
            "asked": "the closest passage is in another language and below the same-language "
            "threshold", "reply": reply, "answers": not says_no,
            "seconds": round(time.perf_counter() - began, 4),
        }  # fmt: skip
        return not says_no

    def _messages(
        self, language: Language, passages: str, history: Sequence[Turn], question: str
    ) -> list[BaseMessage]:
        system = render("secret", language, canary=self.canary)
        system += load_prompt("answer_system", language)
        if passages:
            system += render("sources", language, sources=passages)
        turns: list[BaseMessage] = []
        for turn in history:
            turns += [HumanMessage(turn.question), AIMessage(turn.answer)]
        return [SystemMessage(system), *turns, HumanMessage(question)]

    def _budget(
        self,
        language: Language,
        history: Sequence[Turn],
        question: str,
        hits: list[SearchHit],
        trace: dict[str, Any],
    ) -> tuple[list[SearchHit], list[Turn]]:
        """Passages and history that fit the context, best passages and latest turns first."""
        window = self.chat_model.context_window
        count = self.chat_model.get_num_tokens
        kept_history: list[Turn] = []
        history_tokens = 0
        for turn in reversed(history):
            size = count(turn.question) + count(turn.answer) + 8
            if history_tokens + size > self.params.history_share * window:
                break
            kept_history.insert(0, turn)
            history_tokens += size
        base = self.chat_model.get_num_tokens_from_messages(
            self._messages(language, "", kept_history, question)
        )
        room = window - base - self.params.answer_tokens - 64  # 64: the <sources> fence
        room = min(room, self.params.passage_token_budget)
        chosen: list[SearchHit] = []
        dropped = []
        for hit in hits:
            size = count(passage_block(len(chosen) + 1, hit)) + 2
            if len(chosen) >= self.params.max_passages or size > room:
                reason = "max_sources" if len(chosen) >= self.params.max_passages else "context"
                dropped.append({"chunk_id": hit.chunk.chunk_id, "reason": reason})
                continue
            chosen.append(hit)
            room -= size
        trace["dropped"] = dropped
        trace["history_turns"] = {"given": len(history), "kept": len(kept_history)}
        trace["context_window"] = window
        return chosen, kept_history

    def _continue(
        self,
        prior: Prior,
        language: Language,
        question: str,
        hits: list[SearchHit],
        *,
        given: int,
        trace: dict[str, Any],
    ) -> tuple[list[BaseMessage], list[SearchHit], int] | None:
        """The previous prompt and answer, then a message with the passages among the
        follow-up's best ones that the conversation has not shown, then the question.

        Returns the messages, every source in them (numbered from 1) and how many were added;
        None when the conversation has grown too long for them, so that a new prompt is built.
        """
        window = self.chat_model.context_window
        shown = {h.chunk.chunk_id for h in prior.passages}
        best = hits[: self.params.follow_up_passages]
        new = [h for h in best if h.chunk.chunk_id not in shown]
        message = self._follow_up(language, new, len(shown) + 1, question)
        messages = [*prior.messages, HumanMessage(message)]
        size = self.chat_model.get_num_tokens_from_messages(messages)
        if size + self.params.answer_tokens > window:
            return None
        trace["dropped"] = [
            {"chunk_id": h.chunk.chunk_id, "reason": "follow_up"}
            for h in hits[len(best) : self.params.max_passages]
            if h.chunk.chunk_id not in shown
        ]
        trace["history_turns"] = {"given": given, "kept": prior.turns}
        trace["context_window"] = window
        return messages, [*prior.passages, *new], len(new)

    def _generate(
        self,
        question: str,
        history: Sequence[Turn],
        language: Language,
        hits: list[SearchHit],
        *,
        prior: Prior | None,
        confirm: bool = False,
        trace: dict[str, Any],
        on_token: Callable[[str], None] | None,
        on_wait: Callable[[], None] | None,
        started: float,
    ) -> Answer:
        """Stream the answer; with ``confirm``, first ask the model whether the passages
        answer the question at all (and refuse, listing them, when it says no)."""
        question = self._fit_question(question, trace)
        messages, passages, blocks = self._prompt(
            question, history, language, hits, prior=prior, trace=trace
        )
        trace["in_prompt"] = [
            {"n": n, "chunk_id": h.chunk.chunk_id} for n, h in enumerate(passages, start=1)
        ]
        read = [Citation.from_hit(n, h) for n, h in enumerate(passages, start=1)]
        if self._on_passages is not None:
            self._on_passages(read)
        if (
            confirm and blocks
            and not self._sources_answer(language, blocks, question, trace, on_wait)
        ):  # fmt: skip
            because = "the model found no answer in the passages (another language)"
            return self._refuse(language, trace, on_token, started, because=because, read=read)
        stats = Generation()
        screen = _Screen(self.canary, len(passages))
        shown: list[str] = []
        try:
            self._stream(messages, stats, screen, shown, trace, on_token, on_wait, started)
        except ContextOverflow as exc:
            # The budget counts tokens as the template will; should the model still find the
            # prompt too long, retry once with half the passages and no history, then say so.
            if shown:
                raise
            passages = passages[: len(passages) // 2]
            blocks = "\n".join(passage_block(n, h) for n, h in enumerate(passages, start=1))
            messages = self._messages(language, blocks, [], question)
            trace["context_retry"] = {"error": str(exc), "sources": len(passages)}
            screen = _Screen(self.canary, len(passages))
            try:
                self._stream(messages, stats, screen, shown, trace, on_token, on_wait, started)
            except ContextOverflow as again:
                if shown:
                    raise
                window = self.chat_model.context_window
                raise ContextOverflow(
                    f"the question and its passages do not fit the model's context window "
                    f"({window} tokens), even with fewer passages; ask a shorter question, or "
                    "raise the context_size setting"
                ) from again
        tail = screen.flush()
        text = screen.guard.settle(("".join(shown) + tail).strip())
        by_number = {n: h for n, h in enumerate(passages, start=1)}
        attributions, checks = self._check(text, by_number, trace)
        if screen.guard.findings:
            trace["screened"] = dict(screen.guard.findings)
            note = load_prompt("guard_note", language)
            tail += f"\n\n{note}"
            text = f"{text}\n\n{note}".strip()
        if tail and on_token is not None:
            on_token(tail)
        trace.update(_timing(stats, self.chat_model, started))
        cited = [Citation.from_hit(a.n, by_number[a.n], inferred=a.inferred) for a in attributions]
        given = [Citation.from_hit(n, h) for n, h in by_number.items()]
        return Answer(text, False, language, cited, trace, given, checks)

    def _prompt(
        self,
        question: str,
        history: Sequence[Turn],
        language: Language,
        hits: list[SearchHit],
        *,
        prior: Prior | None,
        trace: dict[str, Any],
    ) -> tuple[list[BaseMessage], list[SearchHit], str | None]:
        """The messages, the passages in them (numbered from 1), and the passages' blocks
        when the prompt is new (None: it continues the previous one)."""
        if prior is not None:
            plan = self._continue(prior, language, question, hits, given=len(history), trace=trace)
            if plan is not None:
                messages, passages, added = plan
                trace["prompt"] = {"continues_previous": True, "appended_sources": added}
                return messages, passages, None
        chosen, kept = self._budget(language, history, question, hits, trace)
        passages = _prefix_stable(chosen, [] if prior is None else prior.passages[: prior.base])
        blocks = "\n".join(passage_block(n, h) for n, h in enumerate(passages, start=1))
        trace["prompt"] = {"continues_previous": False, "appended_sources": 0}
        return self._messages(language, blocks, kept, question), passages, blocks

    def _check(
        self, text: str, by_number: dict[int, SearchHit], trace: dict[str, Any]
    ) -> tuple[list[Attribution], list[SentenceCheck]]:
        """The passages the answer cites (or is attributed to), and each sentence's support."""
        texts = {n: h.chunk.text for n, h in by_number.items()}
        read = {n: f"{h.chunk.heading or ''}\n{h.chunk.text}" for n, h in by_number.items()}
        checks = check_sentences(text, read, self.embed, min_cosine=self.params.support_cosine)
        trace["sentences"] = [c.to_json() for c in checks]
        trace["passages"] = [Citation.from_hit(n, h).to_json() for n, h in by_number.items()]
        return infer_citations(text, texts), checks

    def _stream(  # noqa: PLR0917 (the loop's state, passed to both attempts)
        self,
        messages: list[BaseMessage],
        stats: Generation,
        screen: _Screen,
        shown: list[str],
        trace: dict[str, Any],
        on_token: Callable[[str], None] | None,
        on_wait: Callable[[], None] | None,
        started: float,
    ) -> None:
        pieces = self.chat_model.stream_text(messages, stop=STOP, stats=stats, on_wait=on_wait)
        for piece in pieces:
            visible = screen.feed(piece)
            if visible:
                if not shown:  # what the user waits for: condensing + retrieval + prompt
                    trace["first_token_after_s"] = round(time.perf_counter() - started, 4)
                shown.append(visible)
                if on_token is not None:
                    on_token(visible)

    def _fit_question(self, question: str, trace: dict[str, Any]) -> str:
        """The question, cut to half of what the context leaves after the answer's room."""
        window = self.chat_model.context_window
        limit = max(64, (window - self.params.answer_tokens) // 2)
        tokens = self.chat_model.get_num_tokens(question)
        if tokens <= limit:
            return question
        cut = question
        size = tokens
        while size > limit and cut:
            cut = cut[: max(1, int(len(cut) * limit / size * 0.95))]
            size = self.chat_model.get_num_tokens(cut)
        trace["question_trimmed"] = {"tokens": tokens, "kept": size}
        return cut


class _Screen:
    """Model text -> what the user sees: the output guard, then the citation filter."""

    def __init__(self, canary: str, passages: int) -> None:
        self.guard = OutputGuard(canary)
        self.citations = CitationFilter(set(range(1, passages + 1)))

    def feed(self, piece: str) -> str:
        return self.citations.feed(self.guard.feed(piece))

    def flush(self) -> str:
        return self.citations.feed(self.guard.flush()) + self.citations.flush()


def _prefix_stable(chosen: list[SearchHit], previous: list[SearchHit]) -> list[SearchHit]:
    """The chosen passages, those also in the previous prompt first, in their previous order.

    Which passages go in is decided by rank alone; only their order changes, so that a
    follow-up's prompt starts like the previous one and llama.cpp skips that prefix.
    """
    found = {h.chunk.chunk_id: h for h in chosen}
    first = [found[p.chunk.chunk_id] for p in previous if p.chunk.chunk_id in found]
    ids = {h.chunk.chunk_id for h in first}
    return first + [h for h in chosen if h.chunk.chunk_id not in ids]


def _candidate(hit: SearchHit) -> dict[str, Any]:
    c = hit.chunk
    return {
        "rank": hit.rank, "chunk_id": c.chunk_id, "source": c.source, "name": c.name,
        "page": c.page, "dense": None if hit.dense_score is None else round(hit.dense_score, 4),
        "keyword": None if hit.keyword_score is None else round(hit.keyword_score, 3),
        "fused": round(hit.score, 5), **({"graph": list(hit.graph)} if hit.graph else {}),
    }  # fmt: skip


def _timing(stats: Generation, model: ChatModel, started: float) -> dict[str, Any]:
    speed = stats.tokens_per_second
    return {
        "model": model.model_name,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "waited_for_model_s": round(stats.waited, 4),
        "time_to_first_token_s": None if stats.time_to_first_token is None
        else round(stats.time_to_first_token, 4),
        "tokens_per_s": None if speed is None else round(speed, 1),
        "stop_reason": stats.stop_reason,
        "total_s": round(time.perf_counter() - started, 4),
    }  # fmt: skip


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(
        r"^(rewritten question|standalone question|改写后的问题)\s*[:：]\s*", "", line, flags=re.I
    )
    return line.strip().strip("\"'“”「」")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
