"""What the graph holds: entities, relations, communities, and a chunk's extraction; and the
normalised names entities are matched by."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

ENTITY_TYPES = (
    "person", "organization", "place", "software", "concept", "event", "document", "other",
)  # fmt: skip
_PUNCTUATION = r"[\s\"'“”‘’`«»()\[\]{}<>《》「」『』（）【】,.;:!?，。；：！？、·*_-]+"
_EDGES = re.compile(f"^{_PUNCTUATION}|{_PUNCTUATION}$")
_ARTICLE = re.compile(r"^(?:the|a|an) ")
_SMALL_WORDS = {"of", "the", "and", "for", "in", "on", "de", "&"}


def normalise(name: str) -> str:
    """The key an entity name is matched by: NFKC, case-folded, spaces collapsed, surrounding
    punctuation and a leading English article dropped ("The Debian Project" → "debian
    project")."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = re.sub(r"\s+", " ", _EDGES.sub("", text.strip()))
    return _ARTICLE.sub("", text)


def acronym(key: str) -> str | None:
    """The initials of a normalised multi-word name ("free software foundation" → "fsf")."""
    words = [w for w in re.split(r"[\s/-]+", key) if w and w not in _SMALL_WORDS]
    if len(words) < 2 or not all(w[0].isascii() and w[0].isalpha() for w in words):
        return None
    return "".join(w[0] for w in words)


def compatible(a: str, b: str) -> bool:
    """Whether two entity types may name one thing (equal, or one of them unknown)."""
    return a == b or "other" in (a, b)


@dataclass(frozen=True)
class EntityMention:
    """An entity as one chunk names it."""

    name: str
    type: str
    description: str = ""


@dataclass(frozen=True)
class RelationMention:
    """A relation one chunk states between two of its entities (by name)."""

    source: str
    target: str
    relation: str
    description: str = ""
    strength: float = 1.0


@dataclass(frozen=True)
class Extraction:
    """What one chunk yields: its entities and the relations between them."""

    entities: tuple[EntityMention, ...] = ()
    relations: tuple[RelationMention, ...] = ()

    def to_json(self) -> str:
        """A compact JSON form (the extraction cache)."""
        return json.dumps(
            {"e": [asdict(e) for e in self.entities], "r": [asdict(r) for r in self.relations]},
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Extraction:
        """The inverse of ``to_json``."""
        data = json.loads(text)
        return cls(
            tuple(EntityMention(**e) for e in data["e"]),
            tuple(RelationMention(**r) for r in data["r"]),
        )


@dataclass(frozen=True)
class Entity:
    """An entity of the graph with what is known about it."""

    entity_id: int
    name: str
    type: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    mentions: int = 0
    degree: int = 0


@dataclass(frozen=True)
class Relation:
    """A relation between two entities, with its evidence summed over chunks."""

    relation_id: int
    source: int
    source_name: str
    target: int
    target_name: str
    relation: str
    description: str = ""
    strength: float = 1.0
    chunks: tuple[int, ...] = ()

    def label(self) -> str:
        """One line: ``source —relation→ target``."""
        return f"{self.source_name} —{self.relation}→ {self.target_name}"


@dataclass(frozen=True)
class Community:
    """A group of densely related entities, and what the model wrote about it."""

    community_id: int
    title: str
    summary: str
    size: int
    members: tuple[int, ...] = ()


@dataclass(frozen=True)
class GraphStats:
    """Counts of a knowledge base's graph."""

    method: str | None
    entities: int
    relations: int
    mentions: int
    communities: int
    chunks_done: int
    chunks_total: int
    types: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON object."""
        return asdict(self)
