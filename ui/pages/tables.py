"""Tables & databases: upload CSV/XLSX, connect a database, browse, and ask the agent."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from kb_assistant.chains.agent import AgentResult, AgentStep
from kb_assistant.errors import KBError
from kb_assistant.ui.i18n import Text
from kb_assistant.ui.render import chart_kind, marked_answer, plain
from kb_assistant.ui.state import PageContext, current_context
from kb_assistant.vectorstore.databases import TableInfo, quote_ident

TABLE_TYPES = ["csv", "tsv", "xlsx", "xls", "pdf"]  # a PDF adds each of its bordered tables
PREVIEW_ROWS = 20


def render(ctx: PageContext) -> None:
    """The tables page."""
    t = ctx.t
    st.title(t("tables.title", kb=ctx.kb))
    tables = _tables(ctx)
    ask, browse, add = st.tabs([t("tables.tab_ask"), t("tables.tab_browse"), t("tables.tab_add")])
    with ask:
        _ask(ctx, tables)
    with browse:
        _browse(ctx, tables)
    with add:
        if notice := st.session_state.pop("tables-notice", None):
            st.success(notice)
        _upload(ctx)
        _connect(ctx)


def _tables(ctx: PageContext) -> list[TableInfo]:
    if not ctx.assistant.library.exists(ctx.kb):
        return []
    try:
        return ctx.assistant.tables(ctx.kb)
    except KBError as exc:
        st.error(str(exc))
        return []


# --- adding ---------------------------------------------------------------------------------


def _upload(ctx: PageContext) -> None:
    t = ctx.t
    st.subheader(t("tables.upload"))
    with st.form("upload-table", clear_on_submit=True):
        file = st.file_uploader(t("tables.file"), type=TABLE_TYPES)
        name = st.text_input(t("tables.name"), help=t("tables.name_help"))
        submitted = st.form_submit_button(t("tables.add"), type="primary")
    if not submitted or file is None:
        return
    try:
        path = ctx.assistant.save_upload(file.name, file.getvalue(), kb=ctx.kb)
        added = ctx.assistant.add_table(path, name=name.strip() or None, kb=ctx.kb)
    except (KBError, OSError) as exc:
        st.error(str(exc))
        return
    _notice(t("tables.added", names=", ".join(f"{i.name} ({i.rows})" for i in added)))


def _connect(ctx: PageContext) -> None:
    t = ctx.t
    st.subheader(t("tables.connect"))
    with st.form("connect-db", clear_on_submit=True):
        url = st.text_input(t("tables.url"), placeholder="sqlite:///path/to/file.db  ·  "
                            "postgresql://user:password@localhost/db")  # fmt: skip
        name = st.text_input(t("tables.db_name"))
        submitted = st.form_submit_button(t("tables.connect_button"))
    if not submitted:
        return
    if not url.strip() or not name.strip():
        st.error(t("tables.need_url_name"))
        return
    try:
        found = ctx.assistant.connect_database(url.strip(), name=name.strip(), kb=ctx.kb)
    except KBError as exc:
        st.error(str(exc))
        return
    _notice(t("tables.connected", name=name.strip(), n=len(found)))


def _notice(message: str) -> None:
    """Show ``message`` after a rerun (the other tabs must see the new tables)."""
    st.session_state["tables-notice"] = message
    st.rerun()


# --- browsing -------------------------------------------------------------------------------


def _browse(ctx: PageContext, tables: list[TableInfo]) -> None:
    t = ctx.t
    if not tables:
        st.info(t("tables.none"))
        return
    for database in dict.fromkeys(i.database for i in tables):
        label = (
            t("tables.uploaded") if database == "tables" else t("tables.database", name=database)
        )
        st.subheader(label)
        for info in (i for i in tables if i.database == database):
            _table(ctx, info)
        if database != "tables" and st.button(
            t("tables.disconnect", name=database), key=f"disconnect-{database}"
        ):
            _drop(ctx, database)


def _table(ctx: PageContext, info: TableInfo) -> None:
    t = ctx.t
    keys = {fk.column: fk for fk in info.foreign_keys}
    title = f"{info.name} · {t('tables.rows', n=info.rows)}"
    if info.truncated:
        title += " · " + t("tables.truncated")
    with st.expander(plain(title), icon=":material/table:"):
        st.dataframe(
            [{t("tables.column"): c.name, t("tables.type"): c.type,
              t("tables.key"): ("PK " if c.name in info.primary_key else "")
              + (f"→ {keys[c.name].ref_table}.{keys[c.name].ref_column}"
                 + ("?" if keys[c.name].inferred else "") if c.name in keys else "")}
             for c in info.columns],
            hide_index=True, width="stretch",
        )  # fmt: skip
        if info.origin:
            st.caption(plain(t("tables.origin", origin=info.origin)))
        if st.toggle(t("tables.preview"), key=f"preview-{info.database}-{info.name}"):
            try:
                result = ctx.assistant.sql(
                    f"SELECT * FROM {quote_ident(info.name)} LIMIT {PREVIEW_ROWS}",
                    database=info.database, kb=ctx.kb,
                )  # fmt: skip
            except KBError as exc:
                st.error(str(exc))
                return
            st.dataframe(_frame(result.columns, result.rows), hide_index=True)
        if info.database == "tables" and st.button(
            t("tables.drop", name=info.name), key=f"drop-{info.name}"
        ):
            _drop(ctx, info.name)


def _drop(ctx: PageContext, name: str) -> None:
    try:
        ctx.assistant.drop_table(name, kb=ctx.kb)
    except KBError as exc:
        st.error(str(exc))
        return
    st.rerun()


# --- asking ---------------------------------------------------------------------------------


def _ask(ctx: PageContext, tables: list[TableInfo]) -> None:
    t = ctx.t
    if not tables:
        st.info(t("tables.ask_empty"))
    history: list[tuple[str, AgentResult]] = st.session_state.setdefault(f"agent-{ctx.kb}", [])
    for asked, earlier in history:
        with st.chat_message("user"):
            st.markdown(plain(asked))
        with st.chat_message("assistant"):
            _steps(t, earlier)
            show_result(t, earlier)
    exists = ctx.assistant.library.exists(ctx.kb)
    question = st.chat_input(t("tables.placeholder"), disabled=not exists)
    if not question:
        return
    with st.chat_message("user"):
        st.markdown(plain(question))
    with st.chat_message("assistant"):
        status = st.status(t("agent.working"), expanded=True)

        def on_step(step: AgentStep) -> None:
            with status:
                _step(t, step)

        try:
            result = ctx.assistant.agent(question, kb=ctx.kb, on_step=on_step)
        except KBError as exc:
            status.update(label=t("agent.failed"), state="error")
            st.error(str(exc))
            return
        status.update(label=_status_label(t, result), state="error" if result.stopped else
                      "complete", expanded=False)  # fmt: skip
        show_result(t, result)
    history.append((question, result))


def _status_label(t: Text, result: AgentResult) -> str:
    label = t("agent.done", n=len(result.steps), seconds=f"{result.seconds:.1f}")
    label += f" · {t('agent.mode.' + ('native' if result.mode.startswith('native') else 'slots'))}"
    return label + (f" — {result.stopped}" if result.stopped else "")


def _steps(t: Text, result: AgentResult) -> None:
    """A finished run's steps, collapsed."""
    with st.status(_status_label(t, result), state="error" if result.stopped else "complete"):
        for step in result.steps:
            _step(t, step)


def _step(t: Text, step: AgentStep) -> None:
    icon = ":material/error:" if step.error else ":material/build:"
    st.markdown(f"{icon} **{plain(step.tool)}**")
    if step.input:
        shown = step.input.get("sql") or step.input.get("query") or step.input
        st.code(shown if isinstance(shown, str) else repr(shown),
                language="sql" if "sql" in step.input else None)  # fmt: skip
    st.text(step.output[:2000] + ("…" if len(step.output) > 2000 else ""))


def show_result(t: Text, result: AgentResult) -> None:
    """The agent's answer, the SQL that ran, the rows, and a chart when they are a series."""
    unsupported = [s.text for s in result.unsupported]
    st.markdown(marked_answer(result.answer, unsupported, t("agent.not_in_rows")))
    if unsupported:
        st.caption(t("agent.not_in_rows_note", n=len(unsupported)))
    for sql in result.sql:
        st.code(sql, language="sql")
    if result.columns:
        frame = _frame(result.columns, result.rows)
        st.dataframe(frame, hide_index=True)
        kind = chart_kind(result.columns, result.rows)
        if kind is not None:
            series = frame.set_index(frame.columns[0]).apply(pd.to_numeric)
            if kind == "line":
                st.line_chart(series)
            else:
                st.bar_chart(series)
    for c in result.citations:
        page = f" — {t('where.page').format(page=c.page)}" if c.page else ""
        st.caption(plain(f"[{c.n}] {c.name}{page}"))


def _frame(columns: list[str], rows: list[Any]) -> pd.DataFrame:
    # Duplicate column names (SELECT a.x, b.x) would break the frame: number them.
    seen: dict[str, int] = {}
    unique = []
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
        unique.append(c if seen[c] == 1 else f"{c} ({seen[c]})")
    return pd.DataFrame([list(r) for r in rows], columns=unique)


if __name__ == "__main__":  # run by st.navigation as a page
    render(current_context())
