"""Settings: the model and how it runs, retrieval, chunking, languages; saved to config.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from kb_assistant.errors import KBError
from kb_assistant.models.chat_models import CHAT_MODELS, installed_path
from kb_assistant.models.llm import EMBEDDED_CHAT_MODEL, is_remote_model
from kb_assistant.settings import Settings, load_settings, save_settings, set_in_environment
from kb_assistant.ui.i18n import LANGUAGES, Text
from kb_assistant.ui.state import PageContext, current_context

EDITABLE = (
    "chat_model", "n_gpu_layers", "context_size", "temperature", "top_k", "top_p", "max_tokens",
    "retrieval_k", "max_sources", "chunk_tokens", "chunk_overlap", "answer_language",
    "ui_language",
)  # fmt: skip


def render(ctx: PageContext) -> None:
    """The settings page."""
    t, s = ctx.t, ctx.settings
    st.title(t("settings.title"))
    values: dict[str, Any] = {}
    st.subheader(t("settings.model"))
    values["chat_model"] = _model_picker(t, s)
    left, right = st.columns(2)
    values["n_gpu_layers"] = left.number_input(
        t("settings.gpu_layers"), -1, 999, s.n_gpu_layers, help=t("settings.gpu_help")
    )
    values["context_size"] = right.number_input(
        t("settings.context"), 512, 131072, s.context_size, step=512
    )
    values["temperature"] = left.slider(t("settings.temperature"), 0.0, 2.0, s.temperature, 0.05)
    values["top_p"] = right.slider(t("settings.top_p"), 0.05, 1.0, s.top_p, 0.05)
    values["top_k"] = left.number_input(t("settings.top_k"), 0, 1000, s.top_k)
    values["max_tokens"] = right.number_input(t("settings.max_tokens"), 16, 8192, s.max_tokens)
    candidate = _candidate(t, s, values)
    if candidate is not None:
        _memory(t, candidate)
    st.subheader(t("settings.retrieval"))
    left, right = st.columns(2)
    values["retrieval_k"] = left.number_input(t("settings.retrieval_k"), 1, 100, s.retrieval_k)
    values["max_sources"] = right.number_input(t("settings.max_sources"), 1, 20, s.max_sources)
    values["chunk_tokens"] = left.number_input(
        t("settings.chunk_tokens"), 16, 2048, s.chunk_tokens, help=t("settings.chunk_help")
    )
    values["chunk_overlap"] = right.number_input(
        t("settings.chunk_overlap"), 0, 2047, s.chunk_overlap, help=t("settings.chunk_help")
    )
    st.subheader(t("settings.languages"))
    left, right = st.columns(2)
    answer_codes = ["auto", "en", "zh"]
    values["answer_language"] = left.selectbox(
        t("settings.answer_language"), answer_codes, answer_codes.index(s.answer_language),
        format_func=lambda c: t("settings.auto") if c == "auto" else LANGUAGES[c],
    )  # fmt: skip
    ui_codes = list(LANGUAGES)
    values["ui_language"] = right.selectbox(
        t("settings.ui_language"), ui_codes, ui_codes.index(s.ui_language),
        format_func=LANGUAGES.__getitem__,
    )  # fmt: skip
    if _candidate(t, s, values) is not None:
        _save_buttons(ctx, values)


def _model_picker(t: Text, s: Settings) -> str:
    """An installed catalog model, the embedded one, a GGUF found under ``<home>/models``, or
    any path typed in (catalog models not installed are named, with the command)."""
    installed = [n for n in CHAT_MODELS if installed_path(n, s.model_cache_dir) is not None]
    missing = [n for n in CHAT_MODELS if n not in installed]
    found = sorted(str(p) for p in (s.home / "models").glob("**/*.gguf"))
    options = list(dict.fromkeys([*installed, EMBEDDED_CHAT_MODEL, *found, s.chat_model]))

    def label(option: str) -> str:
        if option in CHAT_MODELS:
            entry = CHAT_MODELS[option]
            return f"{option} — {entry.parameters}, {entry.languages}"
        return t("settings.embedded", name=option) if option == EMBEDDED_CHAT_MODEL else option

    chosen = st.selectbox(
        t("settings.model_file"), options, options.index(s.chat_model), format_func=label
    )
    if missing:
        st.caption(t("settings.more_models", names=", ".join(missing)))
    typed = st.text_input(t("settings.model_path"), placeholder="/path/to/model.gguf",
                          help=t("settings.model_path_help"))  # fmt: skip
    if is_remote_model(typed):  # a server's address, not a path (Path would fold its "//")
        return typed.strip()
    return str(Path(typed.strip()).expanduser()) if typed.strip() else str(chosen)


def _candidate(t: Text, s: Settings, values: dict[str, Any]) -> Settings | None:
    """The settings as they would be saved (None, with the reason shown, if invalid)."""
    try:
        return load_settings(s.home, **values)
    except KBError as exc:
        st.error(str(exc))
        return None


def _memory(t: Text, candidate: Settings) -> None:
    """The memory estimate of ``kb doctor`` for the chosen model and context, before loading."""
    from kb_assistant.models.hardware import doctor_report

    if is_remote_model(candidate.chat_model):
        return  # served elsewhere: its memory is the server's business
    try:
        report = doctor_report(candidate, check=False)
    except KBError as exc:
        st.error(str(exc))
        return
    cols = st.columns(4)
    cols[0].metric(t("settings.model_size"), f"{report['model_size_mib']:.0f} MiB")
    cols[1].metric(t("settings.ram"), f"{report['estimated_ram_mib']:.0f} MiB")
    cols[2].metric(t("settings.vram"), f"{report['estimated_vram_mib']:.0f} MiB")
    cols[3].metric(t("settings.context_used"), report["context_size"])
    st.caption(t("settings.memory_note", available=f"{report['available_ram_mib']:.0f}",
                 layers=report["gpu_layers_offloaded"], total=report["layers"] + 1,
                 fits=report["largest_context_that_fits"]))  # fmt: skip
    if report["estimated_ram_mib"] > report["available_ram_mib"]:
        st.warning(t("settings.too_big"))
    if warning := report.get("warning"):
        st.warning(warning)


def _save_buttons(ctx: PageContext, values: dict[str, Any]) -> None:
    t = ctx.t
    save, reset = st.columns([1, 1])
    if save.button(t("settings.save"), type="primary", icon=":material/save:"):
        changed = {k: v for k, v in values.items() if getattr(ctx.settings, k) != v}
        try:
            save_settings(ctx.settings.home, changed)
        except KBError as exc:
            st.error(str(exc))
            return
        st.session_state["ui_language"] = values["ui_language"]
        st.session_state["settings_saved"] = sorted(changed)
        st.rerun()
    if reset.button(t("settings.reset"), icon=":material/restart_alt:"):
        save_settings(ctx.settings.home, {}, remove=EDITABLE)
        st.session_state.pop("ui_language", None)
        st.session_state["settings_saved"] = list(EDITABLE)
        st.rerun()
    if (saved := st.session_state.pop("settings_saved", None)) is not None:
        st.success(t("settings.saved", file=str(ctx.settings.config_file)))
        if pinned := set_in_environment(saved):
            st.warning(t("settings.env_wins", names=", ".join(f"KB_{n.upper()}" for n in pinned)))


if __name__ == "__main__":  # run by st.navigation as a page
    render(current_context())
