"""A pickle planted in a knowledge base is never unpickled (issue 7, item 1).

LangChain's FAISS store keeps ``index.pkl`` next to ``index.faiss`` and unpickles it on load;
a shared or downloaded knowledge-base folder could carry code that way. Ours stores vectors as
a FAISS index file and everything else in SQLite; no path reads a pickle.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from click.testing import CliRunner

from kb_assistant.assistant import build_assistant
from kb_assistant.cli import main
from kb_assistant.settings import Settings


class Marker:
    """Unpickling this creates a file: proof that the pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))  # unpickling opens (creates) the file


def test_a_planted_index_pkl_is_never_unpickled(settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(Marker(marker))
    pickle.loads(payload).close()  # the payload works: loading it creates the marker ...
    assert marker.exists()
    marker.unlink()

    (tmp_path / "notes.md").write_text("# Apt\n\napt installs packages.", encoding="utf-8")
    assistant = build_assistant(settings)
    assistant.ingest([tmp_path / "notes.md"])
    folder = assistant.knowledge_base().folder
    for name in ("index.pkl", "docstore.pkl", "index.faiss", "vectors.pkl"):
        (folder / name).write_bytes(payload)
    assistant.close()

    # ... but no way of using the knowledge base loads it.
    reopened = build_assistant(settings)
    assert reopened.search("apt packages", k=1)
    (tmp_path / "more.md").write_text("# Dpkg\n\ndpkg unpacks .deb files.", encoding="utf-8")
    reopened.ingest([tmp_path / "more.md"])
    reopened.close()
    runner = CliRunner()
    for command in (["search", "dpkg"], ["docs"], ["kbs"], ["ask", "what installs packages?"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 0, (command, result.output)
    assert not marker.exists()
