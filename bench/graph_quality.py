"""Knowledge-graph extraction quality and cost against the hand-annotated gold set.

Extraction: every chunk of ``eval/graph_gold.jsonl`` (Debian FAQ, half English, half Chinese,
entities and relations annotated by hand) goes through the chosen extractor; precision and
recall of entities (by name or alias) and relations (by their two ends, either direction) come
from ``eval.graph_quality``, with seconds per chunk. Resolution: every pair of
``eval/graph_resolution.jsonl`` goes through the same resolver ``kb graph build`` uses (names,
aliases, acronyms, a type check, and in llm mode name embeddings of the knowledge base's model
at ``graph_merge_cosine``); accuracy against the hand decisions.

Usage:
    python -m bench.graph_quality --mode fast --home H   # H: the dev home (faq, zhfaq)
    python -m bench.graph_quality --mode llm --model qwen2.5-coder-1.5b --home H [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from kb_assistant.assistant import build_assistant
from kb_assistant.chains.graph_extract import Extractor, ModelExtractor, NlpExtractor
from kb_assistant.eval.graph_quality import load_gold, score_extraction, score_resolution
from kb_assistant.settings import load_settings
from kb_assistant.vectorstore.graph import EntityMention, Extraction
from kb_assistant.vectorstore.graph.resolve import Resolver
from kb_assistant.vectorstore.graph.schema import GRAPH_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"


def extract_all(extractors: dict[str, Extractor], gold: list[dict[str, Any]]) -> dict[str, Any]:
    """Predictions by gold id, and the seconds each language took."""
    predicted: dict[str, Any] = {}
    seconds = {"en": 0.0, "zh": 0.0}
    failures = 0
    for record in gold:
        started = time.perf_counter()
        [found] = extractors[record["lang"]].extract([record["text"]])
        seconds[record["lang"]] += time.perf_counter() - started
        if found is None:
            failures += 1
            found = Extraction()
        print(f"{record['id']}: {time.perf_counter() - started:.1f} s, "
              f"{len(found.entities)} entities, {len(found.relations)} relations",
              file=sys.stderr, flush=True)  # fmt: skip
        predicted[record["id"]] = {
            "entities": [{"name": e.name, "type": e.type, "description": e.description}
                         for e in found.entities],
            "relations": [{"source": r.source, "target": r.target, "relation": r.relation}
                          for r in found.relations],
        }  # fmt: skip
    return {"predicted": predicted, "seconds": seconds, "failures": failures}


def resolver_decides(embed: Any | None, threshold: float | None, strict: bool) -> Any:
    """``same(a, b)``: whether the graph's resolver files mention b under mention a's entity."""

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        db = sqlite3.connect(":memory:")
        db.executescript("CREATE TABLE chunks (id INTEGER PRIMARY KEY);" + GRAPH_SCHEMA)
        names = [a["name"], b["name"]]
        vectors = dict(zip(names, embed(names), strict=True)) if embed else {}
        resolver = Resolver(db, vectors, threshold, strict)
        first = resolver.entity_for(EntityMention(a["name"], a["type"]))
        return resolver.find(EntityMention(b["name"], b["type"])) == first

    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["fast", "llm"], default="fast")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="Gold chunks per language.")
    parser.add_argument("--glean", action="store_true")
    args = parser.parse_args()
    gold = load_gold(ROOT / "eval" / "graph_gold.jsonl")
    if args.limit:
        gold = [
            *[g for g in gold if g["lang"] == "en"][: args.limit],
            *[g for g in gold if g["lang"] == "zh"][: args.limit],
        ]
    assistant = build_assistant(load_settings(args.home, chat_model=args.model))
    extractors: dict[str, Extractor] = {}
    for lang, kb in (("en", "faq"), ("zh", "zhfaq")):
        catalog = assistant.knowledge_base(kb).catalog
        if args.mode == "fast":
            extractors[lang] = NlpExtractor(catalog.document_frequency, catalog.chunk_count())
        else:
            extractors[lang] = extractors.get("en") or ModelExtractor(
                assistant.chat_model, glean=args.glean
            )
    run = extract_all(extractors, gold)
    scores = score_extraction(gold, run["predicted"])
    pairs = load_gold(ROOT / "eval" / "graph_resolution.jsonl")
    embedder = assistant.embedder_for(assistant.knowledge_base("faq"))
    llm = args.mode == "llm"
    same = resolver_decides(
        embedder.embed_array if llm else None,
        assistant.settings.graph_merge_cosine if llm else None,
        strict=llm,
    )
    resolution = score_resolution(pairs, same)
    counts = {lang: sum(1 for g in gold if g["lang"] == lang) for lang in ("en", "zh")}
    result = {
        "mode": args.mode, "model": args.model if llm else None, "glean": args.glean,
        "chunks": counts,
        "seconds_per_chunk": {
            lang: round(run["seconds"][lang] / max(counts[lang], 1), 2) for lang in counts
        },
        "failures": run["failures"],
        "extraction": scores, "resolution": resolution,
    }  # fmt: skip
    OUT.mkdir(exist_ok=True)
    name = f"graph_quality-{args.mode}{'-' + args.model if llm else ''}.json"
    (OUT / name).write_text(json.dumps({**result, "predicted": run["predicted"]},
                                       ensure_ascii=False, indent=1))  # fmt: skip
    print(json.dumps(result, ensure_ascii=False, indent=1, default=str))
    assistant.close()


if __name__ == "__main__":
    main()
