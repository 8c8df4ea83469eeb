"""Chat with a knowledge base: streamed answers, source cards, the trace, saved conversations."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from kb_assistant.ui.i18n import Text
from kb_assistant.ui.jobs import AnswerJob, start_answer
from kb_assistant.ui.render import (
    conversation_markdown,
    format_seconds,
    highlight_terms,
    marked_answer,
    plain,
)
from kb_assistant.ui.source_card import source_card
from kb_assistant.ui.state import PageContext, current_context
from kb_assistant.vectorstore.conversations import ConversationInfo, StoredTurn

CURSOR = "▌"


def render(ctx: PageContext) -> None:
    """The chat page."""
    t = ctx.t
    st.title(t("chat.title", kb=ctx.kb))
    if not ctx.assistant.library.exists(ctx.kb):
        st.info(t("chat.no_kb", kb=ctx.kb))
        st.page_link("ui/pages/documents.py", label=t("nav.documents"), icon="📁")
        return
    sessions = [s for s in ctx.assistant.conversations.conversations() if s.kb == ctx.kb]
    current = st.session_state.get("chat")
    if current not in {s.session_id for s in sessions}:
        current = None
    job: AnswerJob | None = st.session_state.get("answering")
    busy = job is not None and not job.done
    # One question at a time per tab: while it is answered the box is disabled.
    question = st.chat_input(t("chat.placeholder"), disabled=busy)
    if question and not busy and current is None:
        current = ctx.assistant.new_conversation(ctx.kb, title=question)
        st.session_state["chat"] = current
        sessions = [ctx.assistant.conversations.get(current), *sessions]
    _conversations(ctx, sessions, current)
    if current is not None:
        for number, turn in enumerate(ctx.assistant.conversations.turns(current)):
            with st.chat_message("user"):
                st.markdown(plain(turn.question))
            with st.chat_message("assistant"):
                show_answer(t, turn, key=f"{current}-{number}")
    if question and not busy and current is not None:
        # Started after the conversation is drawn: drawing it while llama.cpp reads the
        # prompt slowed the first token by ~20% on 2 cores (bench/ui_latency.py).
        job = start_answer(ctx.assistant, ctx.kb, current, question)
        st.session_state["answering"] = job
    if job is not None and job.session == current:
        _follow(t, job)


def _follow(t: Text, job: AnswerJob) -> None:
    """Stream a running answer as it grows; when it is done, show the saved conversation."""
    with st.chat_message("user"):
        st.markdown(plain(job.question))
    with st.chat_message("assistant"):
        box = st.empty()
        cards = st.empty()
        box.caption(t("chat.thinking"))
        shown = 0
        listed = False
        while not job.done:
            job.wait_for_change(shown)
            if job.waiting and not job.text:
                box.info(t("chat.waiting_model"), icon=":material/hourglass_top:")
            elif job.passages and not job.text:
                elapsed = time.monotonic() - (job.reading_since or time.monotonic())
                box.caption(t("chat.reading", n=len(job.passages), seconds=f"{elapsed:.0f}"))
                if not listed:  # the sources, visible while the model reads them
                    with cards.container():
                        for c in job.passages:
                            source_card(t, c, [], read_only=False)
                    listed = True
            elif len(job.text) > shown:
                shown = len(job.text)
                box.markdown(plain(job.text) + CURSOR)
        cards.empty()
        if job.error:
            box.error(job.error)
    del st.session_state["answering"]
    if job.error is None:
        st.rerun()  # the turn is saved: show it with its sources and trace


def show_answer(t: Text, turn: StoredTurn, key: str = "") -> None:
    """An answer with its source cards and its trace (live and reopened alike); ``key`` tells
    its page views apart from other answers'."""
    if turn.refused:
        st.warning(plain(turn.answer), icon=":material/block:")
        st.caption(t("chat.refused_note"))
        read = turn.trace.get("passages", [])
        if read:
            st.caption(t("chat.refused_read", n=len(read)))
        for i, c in enumerate(read):
            source_card(t, c, [], read_only=True, page_key=f"{key}-r{i}")
    else:
        checks = turn.trace.get("sentences", [])
        unsupported = [c["text"] for c in checks if not c.get("supported", True)]
        st.markdown(marked_answer(turn.answer, unsupported, t("chat.unsupported")))
        if unsupported:
            st.caption(t("chat.unsupported_note", n=len(unsupported)))
        terms = highlight_terms(turn.question, turn.answer)
        if turn.citations:
            st.caption(t("chat.sources", n=len(turn.citations)))
        for c in turn.citations:
            source_card(t, c, terms, page_key=f"{key}-c{c['n']}")
        cited = {c["n"] for c in turn.citations}
        read = [p for p in turn.trace.get("passages", []) if p["n"] not in cited]
        if read:
            st.caption(t("chat.read_not_cited" if turn.citations else "chat.no_citations",
                         n=len(read)))  # fmt: skip
        for c in read:
            source_card(t, c, terms, read_only=True, page_key=f"{key}-c{c['n']}")
    _trace(t, turn.trace)


def _trace(t: Text, trace: dict[str, Any]) -> None:
    with st.expander(t("trace.title"), icon=":material/troubleshoot:"):
        st.markdown(f"**{t('trace.query')}:** {plain(str(trace.get('standalone_query', '')))}")
        cols = st.columns(4)
        cols[0].metric(t("trace.prompt_tokens"), trace.get("prompt_tokens", "—"))
        cols[1].metric(t("trace.ttft"), format_seconds(trace.get("time_to_first_token_s")))
        speed = trace.get("tokens_per_s")
        cols[2].metric(t("trace.speed"), "—" if speed is None else f"{speed:.1f}")
        cols[3].metric(t("trace.total"), format_seconds(trace.get("total_s")))
        if trace.get("waited_for_model_s"):
            st.caption(t("trace.waited", seconds=f"{trace['waited_for_model_s']:.1f}"))
        if reason := trace.get("refused_because"):
            ev = trace.get("evidence", {})
            st.caption(t("trace.refused", reason=reason, dense=ev.get("dense"),
                         coverage=ev.get("coverage")))  # fmt: skip
        in_prompt = {s["chunk_id"]: s["n"] for s in trace.get("in_prompt", [])}
        rows = [
            {t("trace.rank"): c["rank"], t("trace.file"): c.get("name") or Path(c["source"]).name,
             t("trace.page"): c.get("page") or "", t("trace.dense"): c.get("dense"),
             t("trace.keyword"): c.get("keyword"), t("trace.fused"): c.get("fused"),
             t("trace.in_prompt"): f"[{in_prompt[c['chunk_id']]}]"
             if c["chunk_id"] in in_prompt else ""}
            for c in trace.get("candidates", [])
        ]  # fmt: skip
        if rows:
            st.caption(t("trace.retrieved"))
            st.dataframe(rows, hide_index=True, width="stretch")
        if facts := trace.get("graph"):  # hybrid+graph: what the knowledge graph followed
            st.caption(t("trace.graph"))
            st.markdown("\n".join(f"- {plain(str(f))}" for f in facts[:20]))
        prompt = trace.get("prompt", {})
        if prompt.get("continues_previous"):
            st.caption(t("trace.continued", n=prompt.get("appended_sources", 0)))
        dropped = [d for d in trace.get("dropped", []) if d.get("reason") != "follow_up"]
        if dropped:
            st.caption(t("trace.dropped", n=len(dropped)))
        if screened := trace.get("screened"):
            what = ", ".join(t(f"trace.screened.{k}", n=n) for k, n in sorted(screened.items()))
            st.caption(t("trace.screened", what=what))


def _conversations(ctx: PageContext, sessions: list[ConversationInfo], current: str | None) -> None:
    """The sidebar: a new conversation, the saved ones (the open one highlighted)."""
    t = ctx.t
    side = st.sidebar
    side.subheader(t("chat.conversations"))
    if side.button(t("chat.new"), icon=":material/add:", width="stretch", key="new-chat"):
        st.session_state["chat"] = None
        st.rerun()
    if not sessions:
        side.caption(t("chat.none_saved"))
        return
    # Buttons, not a radio: a radio's value lives in the browser too, and a stale one would
    # switch conversations behind the user's back after "New conversation" or a new question.
    for info in sessions:
        kind: Any = "primary" if info.session_id == current else "tertiary"
        if side.button(_label(info), key=f"open-{info.session_id}", type=kind, width="stretch"):
            st.session_state["chat"] = info.session_id
            st.rerun()
        if info.session_id == current:
            _manage(ctx, info)


def _label(info: ConversationInfo) -> str:
    when = datetime.fromisoformat(info.updated_at).astimezone().strftime("%m-%d %H:%M")
    return f"{info.title or '…'} · {when}"


def _manage(ctx: PageContext, info: ConversationInfo) -> None:
    t = ctx.t
    with st.sidebar.expander(t("chat.manage")):
        title = st.text_input(t("chat.rename"), value=info.title, key=f"rename-{info.session_id}")
        if st.button(t("chat.save_title")) and title.strip() and title != info.title:
            ctx.assistant.conversations.rename(info.session_id, title)
            st.rerun()
        turns = ctx.assistant.conversations.turns(info.session_id)
        st.download_button(
            t("chat.export"), conversation_markdown(info, turns),
            file_name=f"conversation-{info.session_id}.md", mime="text/markdown",
            icon=":material/download:",
        )  # fmt: skip
        if st.button(t("chat.delete"), icon=":material/delete:"):
            ctx.assistant.conversations.delete(info.session_id)
            st.session_state["chat"] = None
            st.rerun()


if __name__ == "__main__":  # run by st.navigation as a page
    render(current_context())
