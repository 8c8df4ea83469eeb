"""The Streamlit page: manage knowledge bases, upload and ingest files, search them.

A thin client of ``assistant.Assistant``; all logic lives in the core. Document text is shown
with ``st.text``/dataframes, never as Markdown or HTML, so a document cannot inject markup.
Run with ``kb app`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from assistant import Assistant, build_assistant
from errors import KBError
from loaders import SUPPORTED_EXTENSIONS
from settings import load_settings


@st.cache_resource
def get_assistant(home: str) -> Assistant:
    """One Assistant (and one embedding model) per data directory and server process."""
    return build_assistant(load_settings(home))


def sidebar(assistant: Assistant) -> str:
    """Pick or create a knowledge base; returns the chosen name."""
    st.sidebar.header("Knowledge bases")
    names = assistant.library.names()
    default = assistant.settings.kb
    options = sorted({*names, default})
    current = st.session_state.get("kb", default)
    chosen = st.sidebar.selectbox(
        "Knowledge base", options, index=options.index(current) if current in options else 0
    )
    st.session_state["kb"] = chosen
    with st.sidebar.form("create-kb", clear_on_submit=True):
        new_name = st.text_input("New knowledge base")
        if st.form_submit_button("Create") and new_name.strip():
            try:
                assistant.create_kb(new_name.strip())
                st.session_state["kb"] = new_name.strip()
                st.rerun()
            except KBError as exc:
                st.error(str(exc))
    return str(chosen)


def upload_panel(assistant: Assistant, kb: str) -> None:
    """Upload files and ingest them with a progress bar and a per-file result."""
    files = st.file_uploader(
        "Add documents",
        type=[e.lstrip(".") for e in SUPPORTED_EXTENSIONS],
        accept_multiple_files=True,
        key=f"uploader-{st.session_state.get('upload_round', 0)}",
    )
    if not files or not st.button(f"Ingest {len(files)} file(s)", type="primary"):
        return
    paths = [assistant.save_upload(f.name, f.getvalue(), kb=kb) for f in files]
    bar = st.progress(0.0, text="Starting…")

    def progress(p: Any) -> None:
        total = max(1, p.files_total)
        bar.progress(
            min(1.0, p.files_done / total),
            text=f"{p.files_done}/{total} files, {p.chunks_done} chunks",
        )

    try:
        report = assistant.ingest(paths, kb=kb, progress=progress)
    except KBError as exc:
        st.error(str(exc))
        return
    bar.progress(1.0, text=f"Done in {report.seconds:.1f} s")
    rows = [{"file": p.rsplit("/", 1)[-1], "result": r, "reason": ""}
            for r, group in (("added", report.added), ("updated", report.updated),
                             ("unchanged", report.unchanged)) for p in group]  # fmt: skip
    rows += [
        {"file": f.path.rsplit("/", 1)[-1], "result": "failed", "reason": f.error}
        for f in report.failed
    ]
    st.session_state["last_report"] = rows
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
    st.rerun()


def documents_panel(assistant: Assistant, kb: str) -> None:
    """The document list, with deletion."""
    if rows := st.session_state.get("last_report"):
        st.subheader("Last upload")
        st.dataframe(rows, hide_index=True, width="stretch")
    if not assistant.library.exists(kb):
        st.info(f"Knowledge base '{kb}' is empty: add documents above.")
        return
    docs = assistant.documents(kb)
    st.subheader(f"Documents ({len(docs)})")
    if not docs:
        st.info("No documents yet: add some above.")
        return
    st.dataframe(
        [{"id": d.doc_id, "name": d.name, "pages": "" if d.pages is None else str(d.pages),
          "chunks": d.chunks, "added": d.added_at.replace("T", " ")[:16],
          "notes": "; ".join(d.notes)} for d in docs],
        hide_index=True, width="stretch",
    )  # fmt: skip
    labels = {f"{d.doc_id}: {d.name}": d for d in docs}
    doomed = st.multiselect("Select documents to delete", list(labels))
    if doomed and st.button(f"Delete {len(doomed)} document(s)"):
        removed = assistant.remove([str(labels[x].doc_id) for x in doomed], kb=kb)
        st.session_state["last_report"] = None
        st.toast(f"Deleted {len(removed)} document(s)")
        st.rerun()


def search_panel(assistant: Assistant, kb: str) -> None:
    """Semantic search over the chosen knowledge base."""
    query = st.text_input("Search your documents")
    k = st.slider("Results", 1, 20, 5)
    if not query.strip():
        return
    if not assistant.library.exists(kb):
        st.info("Nothing to search yet.")
        return
    try:
        hits = assistant.search(query, k=k, kb=kb)
    except KBError as exc:
        st.error(str(exc))
        return
    if not hits:
        st.info("No results: the knowledge base is empty.")
    for hit in hits:
        where = hit.chunk.name + (f", page {hit.chunk.page}" if hit.chunk.page else "")
        where += f", sheet {hit.chunk.sheet}" if hit.chunk.sheet else ""
        with st.container(border=True):
            scores = [f"similarity {hit.dense_score:.2f}"] if hit.dense_score is not None else []
            scores += [f"keyword match {hit.keyword_score:.1f}"] if hit.keyword_score else []
            st.caption(f"[{hit.rank}] {where} — {', '.join(scores) or 'ranked'}")
            if hit.chunk.heading:
                st.text(hit.chunk.heading)
            st.text(hit.chunk.text)


def main() -> None:
    """Render the page."""
    st.set_page_config(page_title="kb-assistant", layout="wide")
    assistant = get_assistant(str(load_settings().home))
    kb = sidebar(assistant)
    st.title(f"Knowledge base: {kb}")
    documents, search = st.tabs(["Documents", "Search"])
    with documents:
        upload_panel(assistant, kb)
        documents_panel(assistant, kb)
    with search:
        search_panel(assistant, kb)


main()
