"""The app over a scripted chat model, for AppTest (``tests/test_app.py`` sets the script).

Run by AppTest in the test process, so the module-level script below is the test's.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import AIMessage

from kb_assistant.assistant import Assistant, build_assistant
from kb_assistant.models.chat import ScriptedChatModel
from kb_assistant.models.embeddings import HashEmbedder
from kb_assistant.settings import Settings

REPLIES: list[str | AIMessage] = []
NATIVE_TOOLS = False
WAIT_FIRST = False  # the first answer finds the model busy (as with two browser tabs)
MODELS: list[ScriptedChatModel] = []  # every model built, latest last
SECRET = "{secret}"  # in a reply: replaced by the system prompt's first line (its secret)
CODE = "{code}"  # in a reply: replaced by the secret code alone


class ObedientChatModel(ScriptedChatModel):
    """Scripted, and it recites its instructions where a reply says so (prompt injection)."""

    def _reply(self, messages: list[Any]) -> str:
        reply = super()._reply(messages)
        first = str(messages[0].content).splitlines()[0]
        code = re.search(r"[0-9a-f]{12}", first)
        return reply.replace(SECRET, first).replace(CODE, code.group() if code else "")


class QueuedChatModel(ScriptedChatModel):
    """Scripted, but its first call waits for the model as a second tab's question would."""

    waited: bool = False

    def _stream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Any:
        stats = kwargs.get("stats")
        if not self.waited and kwargs.get("on_wait") is not None:
            self.waited = True
            kwargs["on_wait"]()
        yield from super()._stream(messages, stop, run_manager, **kwargs)
        if stats is not None and self.waited:
            stats.waited = 1.5  # what the trace records after a real wait


def build(settings: Settings) -> Assistant:
    """An Assistant whose model replies with ``REPLIES`` (then extractively)."""
    kind = QueuedChatModel if WAIT_FIRST else ObedientChatModel
    model = kind(responses=list(REPLIES), native_tools=NATIVE_TOOLS)
    MODELS.append(model)
    return build_assistant(settings, embeddings=HashEmbedder(), chat_model=model)


if __name__ == "__main__":
    # Run as a script, this file's globals are not the module's: use the module, whose
    # REPLIES the test has set.
    from kb_assistant.ui.shell import run
    from tests.scripted_app import build as scripted_build

    run(build=scripted_build)
