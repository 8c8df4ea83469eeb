"""Documents: upload (ingested in the background), the document list, deletion, search."""

from __future__ import annotations

import streamlit as st

from kb_assistant.errors import KBError, UploadRejected
from kb_assistant.loaders import SUPPORTED_EXTENSIONS
from kb_assistant.models.factory import EMBEDDING_MODELS
from kb_assistant.ui.jobs import IngestJob
from kb_assistant.ui.render import highlight_terms, highlighted, plain, where
from kb_assistant.ui.state import PageContext, current_context
from kb_assistant.uploads import check_batch, label


def render(ctx: PageContext) -> None:
    """The documents page."""
    t = ctx.t
    st.title(t("docs.title", kb=ctx.kb))
    upload, search = st.tabs([t("docs.tab_documents"), t("docs.tab_search")])
    with upload:
        _uploader(ctx)
        _progress(ctx)
        _documents(ctx)
        _embedding_model(ctx)
        _delete_kb(ctx)
    with search:
        _search(ctx)


def upload_limit_mb(ctx: PageContext) -> int:
    """The per-file upload limit: ``.streamlit/config.toml``'s (Streamlit enforces it in the
    browser), or the ``max_upload_mb`` setting (enforced on our side) if smaller."""
    return min(int(st.get_option("server.maxUploadSize")), ctx.assistant.settings.max_upload_mb)


def _uploader(ctx: PageContext) -> None:
    t = ctx.t
    limit = upload_limit_mb(ctx)
    files = st.file_uploader(
        t("docs.add"),
        type=sorted({e.lstrip(".") for e in SUPPORTED_EXTENSIONS}),
        accept_multiple_files=True,
        key=f"uploader-{st.session_state.get('upload_round', 0)}",
        help=t("docs.limit", mb=limit),
    )
    st.caption(t("docs.limit", mb=limit))
    if not files or not st.button(t("docs.ingest", n=len(files)), type="primary"):
        return
    too_big = [label(f.name) for f in files if f.size > limit * 2**20]
    if too_big:
        st.error(t("docs.too_big", names=", ".join(too_big), mb=limit))
        return
    if not _within_quota(ctx, [f.size for f in files]):
        return
    try:
        stored = {ctx.assistant.save_upload(f.name, f.getvalue(), kb=ctx.kb): f.name for f in files}
    except (KBError, OSError) as exc:
        st.error(t("docs.save_failed", error=str(exc)))
        return
    ctx.jobs.start(ctx.assistant, ctx.kb, stored)
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
    st.rerun()


def _within_quota(ctx: PageContext, sizes: list[int]) -> bool:
    """Count a batch against this browser session's upload total (checked before reading)."""
    used = int(st.session_state.get("uploaded_bytes", 0))
    try:
        check_batch(
            sizes, used, max_file=upload_limit_mb(ctx) << 20,
            max_session=ctx.assistant.settings.upload_session_mb << 20,
        )  # fmt: skip
    except UploadRejected as exc:
        st.error(ctx.t("docs.save_failed", error=str(exc)))
        return False
    st.session_state["uploaded_bytes"] = used + sum(sizes)
    return True


def _progress(ctx: PageContext) -> None:
    """Running batches refresh every second in a fragment; the rest of the page stays usable."""
    running = bool(ctx.jobs.active(ctx.kb))

    @st.fragment(run_every=1.0 if running else None)
    def jobs_view() -> None:
        if running and not ctx.jobs.active(ctx.kb):
            # The batch is in: rerun the whole page (document list) *before* showing the
            # result, so that nothing reruns after "Indexed" appears — a click on another
            # page right then was lost to this rerun.
            st.rerun(scope="app")
        jobs = ctx.jobs.jobs(ctx.kb)
        for job in jobs[:3]:
            _job(ctx, job, latest=job is jobs[0])

    jobs_view()


def _job(ctx: PageContext, job: IngestJob, *, latest: bool) -> None:
    t = ctx.t
    if job.reindex_to is not None:
        _reindex_job(ctx, job)
        return
    if job.active:
        if job.state == "waiting":
            label = t("docs.waiting_writer")
        elif job.state == "indexing":
            label = t("docs.building_index", chunks=job.chunks_done)
        else:
            label = t(
                "docs.progress", done=job.files_done, total=job.files_total,
                chunks=job.chunks_done, current=job.current or "…",
            )  # fmt: skip
        st.progress(job.fraction, text=label)
        return
    if job.state == "failed":
        st.error(t("docs.batch_failed", error=job.error or ""))
        return
    counts = {o: sum(r.outcome == o for r in job.results) for o in ("added", "updated",
              "unchanged", "failed", "skipped")}  # fmt: skip
    summary = t("docs.indexed", seconds=f"{job.seconds:.1f}", **counts)
    with st.expander(summary, expanded=latest):
        st.dataframe(
            [{t("docs.col_file"): r.name, t("docs.col_result"): t(f"outcome.{r.outcome}"),
              t("docs.col_reason"): r.reason} for r in job.results],
            hide_index=True, width="stretch",
        )  # fmt: skip


def _documents(ctx: PageContext) -> None:
    t = ctx.t
    if not ctx.assistant.library.exists(ctx.kb):
        st.info(t("docs.empty_kb", kb=ctx.kb))
        return
    docs = ctx.assistant.documents(ctx.kb)
    st.subheader(t("docs.list", n=len(docs)))
    if not docs:
        st.info(t("docs.none"))
        return
    st.dataframe(
        [{t("docs.col_name"): d.name, t("docs.col_pages"): "" if d.pages is None else str(d.pages),
          t("docs.col_chunks"): d.chunks, t("docs.col_added"): d.added_at.replace("T", " ")[:16],
          t("docs.col_notes"): "; ".join(d.notes)} for d in docs],
        hide_index=True, width="stretch",
    )  # fmt: skip
    labels = {f"{d.doc_id}: {d.name}": d for d in docs}
    doomed = st.multiselect(t("docs.select_delete"), list(labels))
    if doomed and st.button(t("docs.delete", n=len(doomed))):
        try:
            removed = ctx.assistant.remove([str(labels[x].doc_id) for x in doomed], kb=ctx.kb)
        except KBError as exc:
            st.error(str(exc))
            return
        st.toast(t("docs.deleted", n=len(removed)))
        st.rerun()


def _reindex_job(ctx: PageContext, job: IngestJob) -> None:
    t = ctx.t
    if job.active:
        label = (
            t("docs.waiting_writer") if job.state == "waiting"
            else t("docs.reindexing", model=job.reindex_to, done=job.chunks_done,
                   total=job.chunks_total or "…")
        )  # fmt: skip
        st.progress(job.fraction, text=label)
    elif job.state == "failed":
        st.error(t("docs.reindex_failed", error=job.error or ""))
    else:
        st.success(t("docs.reindexed", model=job.reindex_to, chunks=job.chunks_total,
                     seconds=f"{job.seconds:.1f}"))  # fmt: skip


def _embedding_model(ctx: PageContext) -> None:
    """The knowledge base's embedding model, and moving it to another one (``kb reindex``)."""
    t = ctx.t
    if not ctx.assistant.library.exists(ctx.kb):
        return
    current = ctx.assistant.knowledge_base(ctx.kb).refresh().embedding_model
    with st.expander(t("docs.embedding", model=current)):
        st.caption(t("docs.embedding_help"))
        choices = [name for name, model_id in EMBEDDING_MODELS.items() if model_id != current]
        if not choices:
            return
        model = st.selectbox(t("docs.embedding_to"), choices, key="reindex-model")
        busy = bool(ctx.jobs.active(ctx.kb))
        if st.button(t("docs.reindex"), disabled=busy) and model:
            ctx.jobs.start_reindex(ctx.assistant, ctx.kb, model)
            st.rerun()


def _delete_kb(ctx: PageContext) -> None:
    t = ctx.t
    if not ctx.assistant.library.exists(ctx.kb):
        return
    with st.expander(t("docs.danger")):
        confirm = st.text_input(t("docs.delete_kb_confirm", kb=ctx.kb), key="delete-kb-confirm")
        if st.button(t("docs.delete_kb"), disabled=confirm != ctx.kb):
            try:
                ctx.assistant.delete_kb(ctx.kb)
            except KBError as exc:
                st.error(str(exc))
                return
            st.session_state.pop("kb", None)
            st.session_state.pop("chat", None)
            st.rerun()


def _search(ctx: PageContext) -> None:
    t = ctx.t
    query = st.text_input(t("search.query"))
    k = st.slider(t("search.results"), 1, 20, 5)
    if not query.strip():
        return
    if not ctx.assistant.library.exists(ctx.kb):
        st.info(t("search.nothing"))
        return
    try:
        hits = ctx.assistant.search(query, k=k, kb=ctx.kb)
    except KBError as exc:
        st.error(str(exc))
        return
    if not hits:
        st.info(t("search.no_results"))
    terms = highlight_terms(query)
    for hit in hits:
        c = hit.chunk
        scores = (
            [f"{t('trace.dense')} {hit.dense_score:.2f}"] if hit.dense_score is not None else []
        )
        scores += [f"{t('trace.keyword')} {hit.keyword_score:.1f}"] if hit.keyword_score else []
        with st.container(border=True):
            place = where(c.name, c.page, c.sheet, t("where.page"), t("where.sheet"))
            st.caption(plain(f"[{hit.rank}] {place} — {', '.join(scores)}"))
            if c.heading:
                st.markdown(f"**{plain(c.heading)}**")
            st.markdown(highlighted(c.text, terms))


if __name__ == "__main__":  # run by st.navigation as a page
    render(current_context())
