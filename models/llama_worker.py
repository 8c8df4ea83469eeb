"""The model worker: the child process that holds one llama.cpp model and answers over a pipe.

llama.cpp is native code. An instruction this CPU cannot run (SIGILL, or a fault on AMX tiles),
a malformed GGUF (SIGSEGV) or the kernel's out-of-memory killer ends the process it runs in;
here that is this worker, never the app. ``models.llm.LocalLLM`` starts it as
``python -E -P -m kb_assistant.models.llama_worker IN OUT CONFIG`` (isolated: nothing from the
current folder is imported), talks JSON over two pipes, and starts a fresh one after a death.

Protocol (one JSON object per message; ``id`` pairs replies with requests):

- first, unasked: ``{"ready": {n_ctx, system_info, extra_buffers, ...}}`` or ``{"fatal": msg}``;
- ``{"id", "op": "format"|"count"|"count_prompt"|"reset", ...}`` -> ``{"id", "ok": value}``
  (``reset`` forgets the KV cache: the next prompt is read from scratch);
- ``{"id", "op": "chat", messages, sampling, tools, stop}`` -> ``{"id", "start": {prompt_tokens}}``,
  then ``{"id", "piece": text}`` per token, then ``{"id", "end": {stop_reason}}``;
- ``{"id", "op": "json", messages, schema, max_tokens, tools?}`` -> ``{"id", "ok": text}``
  (``tools``: rendered into the chat template, as for ``chat``);
- ``{"id", "op": "cancel", "target": id}``: the generation ``target`` ends after its current
  token (with its ``end``);
- any failure: ``{"id", "error": {"type", "message"}}``; ``type`` ``overflow`` is a prompt
  longer than the context window.

Token counting and prompt formatting are answered while a generation runs (the vocabulary
and the template are read-only); generations run one at a time, as the parent's lock sends
them. The prompt cache lives here, with the model, so follow-ups resume their prefix.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from kb_assistant.models.cpu import build_features, missing_features, rebuild_command

OVERFLOW = "exceed context window"  # llama.cpp's words for a prompt too long


def build_info() -> dict[str, Any]:
    """What the installed llama-cpp-python was compiled with (imports it: run in a child)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return {
        "llama_cpp_version": llama_cpp.__version__,
        "system_info": info,
        "features": sorted(build_features(info)),
        "missing_features": missing_features(info),
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
    }


def extra_buffers_wanted(setting: str, features: set[str]) -> bool:
    """Whether llama.cpp may use its extra buffer types (weight repacking; AMX tiles).

    ``auto``: not when the build has AMX kernels, which run only through an extra buffer type
    and fault on machines that advertise AMX without granting it (a native build on such a
    machine); otherwise yes, for the repacked matrix kernels."""
    if setting == "auto":
        return not any(f.startswith("AMX") for f in features)
    return setting == "on"


class Worker:
    """The model and the pipe, in the child."""

    def __init__(self, llama: Any, out: Connection) -> None:
        self.llama = llama
        self.out = out
        self.formatter = _chat_formatter(llama)
        self._write = threading.Lock()
        self._cancelled: set[int] = set()
        self._generating = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, ensure_ascii=False).encode()
        with self._write:
            self.out.send_bytes(data)

    def serve(self, requests: Connection) -> None:
        """Answer requests until the parent closes its end."""
        while True:
            try:
                request = json.loads(requests.recv_bytes())
            except EOFError:
                return
            op = request.get("op")
            if op == "cancel":
                self._cancelled.add(int(request["target"]))
            elif op in ("chat", "json", "reset"):
                threading.Thread(target=self._generate, args=(request,), daemon=True).start()
            else:
                self._answer(request)

    def _answer(self, request: dict[str, Any]) -> None:
        rid = request["id"]
        try:
            if request["op"] == "format":
                value: Any = self.prompt_text(request["messages"])
            elif request["op"] == "count":
                value = len(self.tokens(request["text"]))
            elif request["op"] == "count_prompt":
                value = len(self.tokens(self.prompt_text(request["messages"])))
            else:
                raise ValueError(f"unknown request {request['op']!r}")
        except Exception as exc:
            self.send({"id": rid, "error": _error(exc)})
            return
        self.send({"id": rid, "ok": value})

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        return str(self.formatter(messages=messages).prompt)

    def tokens(self, text: str) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _generate(self, request: dict[str, Any]) -> None:
        rid = request["id"]
        with self._generating:
            try:
                if request["op"] == "json":
                    self.send({"id": rid, "ok": self._json(request)})
                elif request["op"] == "reset":
                    self.llama.reset()
                    self.send({"id": rid, "ok": None})
                else:
                    self._chat(rid, request)
            except Exception as exc:
                self.send({"id": rid, "error": _error(exc)})
            finally:
                self._cancelled.discard(rid)

    def _chat(self, rid: int, request: dict[str, Any]) -> None:
        messages = request["messages"]
        prompt_tokens = len(self.tokens(self.prompt_text(messages)))
        self.send({"id": rid, "start": {"prompt_tokens": prompt_tokens}})
        sampling = request["sampling"]
        tools = request.get("tools")
        stream = self.llama.create_chat_completion(
            messages=messages, stream=True, stop=request.get("stop") or [],
            **sampling, **({"tools": tools} if tools else {}),
        )  # fmt: skip
        stop_reason = None
        for chunk in stream:
            choice = chunk["choices"][0]
            if choice.get("finish_reason"):
                stop_reason = choice["finish_reason"]
            piece = choice["delta"].get("content")
            if piece:
                self.send({"id": rid, "piece": piece})
            if rid in self._cancelled:
                stop_reason = "cancelled"
                stream.close()
                break
        self.send({"id": rid, "end": {"stop_reason": stop_reason}})

    def _json(self, request: dict[str, Any]) -> str:
        tools = request.get("tools")
        reply = self.llama.create_chat_completion(
            messages=request["messages"],
            response_format={"type": "json_object", "schema": request["schema"]},
            temperature=0.0, max_tokens=request["max_tokens"],
            **({"tools": tools} if tools else {}),
        )  # fmt: skip
        return str(reply["choices"][0]["message"]["content"] or "")


def _error(exc: Exception) -> dict[str, str]:
    kind = "overflow" if OVERFLOW in str(exc) else type(exc).__name__
    return {"type": kind, "message": str(exc) or type(exc).__name__}


def _chat_formatter(llama: Any) -> Any:
    """The GGUF's own chat template as a formatter (ChatML if the file has none)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template") or _CHATML
    eos = llama._model.token_get_text(llama.token_eos())
    bos = llama._model.token_get_text(llama.token_bos())
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load(config: dict[str, Any], features: set[str]) -> tuple[Any, bool]:
    """The ``Llama`` for ``config``, and whether extra buffer types are on."""
    import llama_cpp
    from llama_cpp import Llama

    extra = extra_buffers_wanted(config.get("extra_buffers", "auto"), features)
    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def model_params() -> Any:
        params = default_params()
        params.use_extra_bufts = extra
        return params

    # Llama() exposes no argument for this field; it builds its model parameters from here.
    llama_cpp.llama_cpp.llama_model_default_params = model_params
    errors: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def record(level: int, text: bytes, _user: Any) -> None:
        if level == 4:  # GGML_LOG_LEVEL_ERROR (llama_cpp._logger maps it to DEBUG: dropped)
            errors.append(text.decode(errors="replace").strip())

    llama_cpp.llama_log_set(record, ctypes.c_void_p(0))
    try:
        llama = Llama(
            model_path=config["path"], n_ctx=config["n_ctx"],
            n_batch=config["n_batch"],  # LangChain's wrapper defaults to 8: ten times slower
            n_threads=config["threads"], n_threads_batch=config["threads"],
            n_gpu_layers=config["n_gpu_layers"], lora_path=config.get("lora_path"),
            verbose=False,
        )  # fmt: skip
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default_params
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    # llama-cpp-python 0.3.36 declares the adapter pointer as POINTER(c_void_p), so a refused
    # adapter comes back as a NULL pointer, not None, and its own check never fires: the
    # worker would die at the first token. llama.cpp logged why; say it.
    if config.get("lora_path") and not llama._lora_adapter:
        reason = "; ".join(e.split(": ", 1)[-1] for e in errors) or "see llama.cpp's log"
        llama.close()
        raise ValueError(f"LoRA adapter {config['lora_path']} refused: {reason}")
    if config.get("prompt_cache_bytes"):
        # Saved states are keyed by their tokens; a new prompt resumes from the longest
        # matching one, even after an unrelated call (the condense step).
        llama.set_cache(lean_cache(config["prompt_cache_bytes"]))
    return llama, extra


def lean_cache(capacity: int) -> Any:
    """llama-cpp-python's RAM prompt cache, without the logits copy in each saved state.

    ``Llama.save_state`` copies up to ``n_batch x n_vocab`` float32 logits with every state
    (311 MB for Qwen2.5's 151,936-token vocabulary), which it never reads back without
    ``logits_all`` (a restored state is decoded again before sampling), and which the cache's
    capacity does not count: twenty saved states held a 1.5B model's worker at 9.4 GB. One
    zero row is kept, the shape ``load_state`` assigns from.
    """
    import numpy as np
    from llama_cpp.llama_cache import LlamaRAMCache

    class LeanRAMCache(LlamaRAMCache):
        def __setitem__(self, key: Any, value: Any) -> None:
            value.scores = np.zeros((1, value.scores.shape[1]), dtype=np.single)
            super().__setitem__(key, value)

    return LeanRAMCache(capacity_bytes=capacity)


def main(argv: list[str]) -> int:
    """``llama_worker IN_FD OUT_FD CONFIG_JSON`` (the model worker) or ``--build-info``."""
    if argv == ["--build-info"]:
        print(json.dumps(build_info()))
        return 0
    requests = Connection(int(argv[0]), writable=False)
    out = Connection(int(argv[1]), readable=False)
    config = json.loads(argv[2])
    info = build_info()
    if info["missing_features"]:
        names = ", ".join(info["missing_features"])
        out.send_bytes(json.dumps({"fatal": (
            f"this llama-cpp-python build uses instructions this CPU does not have ({names}); "
            f"it was compiled on another machine. Rebuild it here: {rebuild_command()}"
        )}).encode())  # fmt: skip
        return 3
    try:
        llama, extra = load(config, set(info["features"]))
    except (ValueError, RuntimeError, OSError) as exc:
        out.send_bytes(json.dumps({"fatal": f"llama.cpp cannot load it: {exc}"}).encode())
        return 3
    worker = Worker(llama, out)
    worker.send({"ready": {**info, "n_ctx": int(llama.n_ctx()), "extra_buffers": extra}})
    worker.serve(requests)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
