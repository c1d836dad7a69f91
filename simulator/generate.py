"""Pure, deterministic content generation: extractive text and schema-fitting JSON.

Everything here is a function of the request's user text (and schema) only, so the
same request always yields the same reply, which keeps tests and billing repeatable.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

SUMMARY_MAX_CHARS = 200
PHRASE_MAX_CHARS = 120
DEFAULT_LIST_LENGTH = 3
# Past this nesting depth optional properties are dropped and arrays shrink to their
# minimum, so self-referencing schemas ($ref cycles) still terminate.
MAX_DEPTH = 6

_MARKER = re.compile(r"\[\[sim:[^\]]*\]\]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
# The SDK's transform_schema() moves keywords the API does not accept (maxLength,
# minimum, maxItems, ...) into the description as a trailing "{key: value, ...}".
_DESCRIPTION_CONSTRAINTS = re.compile(r"\{([^{}]*)\}\s*$")
_NUMERIC_KEYWORDS = frozenset(
    {
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
    }
)

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers him his how i if in into is
    it its itself just me more most my no nor not now of off on once only or other our
    ours out over own same she should so some such than that the their theirs them then
    there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours please thanks hello hi
    dear regards really still even much many get got make made one two""".split()
)
_NEGATIVE_WORDS = frozenset(
    """bad broken angry refund terrible awful horrible hate worst poor disappointed
    disappointing slow crash crashed crashes error errors fail failed failure failing
    problem problems issue issues complaint complain unhappy frustrated frustrating
    annoying annoyed useless unacceptable rude late missing damaged defective cancel
    wrong bug bugs""".split()
)
_POSITIVE_WORDS = frozenset(
    """good great love loved excellent happy amazing awesome perfect pleased fantastic
    helpful wonderful nice satisfied recommend best fast smooth easy
    delighted enjoy enjoyed""".split()
)
# Checked in this order because "dissatisfied" contains "satisf".
_LABEL_POLARITY: tuple[tuple[int, tuple[str, ...]], ...] = (
    (-1, ("neg", "bad", "angry", "unhappy", "frustrat", "dissatisf", "poor", "annoyed")),
    (1, ("pos", "good", "happy", "satisf", "great", "pleased", "delight")),
    (0, ("neu", "unknown", "none")),
)

_SUMMARY_NAMES = ("summary", "abstract", "tldr", "synopsis", "overview", "gist")
_TITLE_NAMES = ("title", "headline", "subject")
_SENTIMENT_NAMES = ("sentiment", "tone", "mood", "polarity", "feeling", "emotion")
_WORD_LIST_NAMES = ("topic", "tag", "keyword", "entit", "label", "categor", "theme")

_FORMAT_SAMPLES: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "PT1M",
    "email": "sim@example.com",
    "hostname": "example.com",
    "uri": "https://example.com/",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def strip_markers(text: str) -> str:
    """User text without ``[[sim:...]]`` markers, which steer the simulator, not content."""
    return re.sub(r"[ \t]{2,}", " ", _MARKER.sub("", text)).strip()


def sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_BREAK.split(text) if part.strip()]


def clip(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars``, at a word boundary when there is one."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    boundary = cut.rfind(" ")
    return (cut[:boundary] if boundary > 0 else cut).rstrip(" ,;:-")


def extractive_summary(text: str, max_chars: int = SUMMARY_MAX_CHARS) -> str:
    """The leading sentences of ``text`` within ``max_chars`` (at least the clipped first one)."""
    parts = sentences(text)
    if not parts:
        return ""
    summary = clip(parts[0], max_chars)
    for sentence in parts[1:]:
        if len(summary) + 1 + len(sentence) > max_chars:
            break
        summary = f"{summary} {sentence}"
    return summary


def salient_words(text: str, limit: int) -> list[str]:
    """Most frequent non-stopwords, lower-cased; ties keep first-occurrence order."""
    words = (w.lower().strip("'-") for w in _WORD.findall(text))
    counts = Counter(w for w in words if len(w) > 2 and w not in _STOPWORDS)
    return [word for word, _ in counts.most_common(limit)]


def key_phrases(text: str, limit: int) -> list[str]:
    """Sentences after the opening one (the summary's), topped up with salient words."""
    phrases = [clip(s, PHRASE_MAX_CHARS) for s in sentences(text)[1:]][:limit]
    for word in salient_words(text, limit):
        if len(phrases) >= limit:
            break
        if word not in phrases:
            phrases.append(word)
    return phrases


def sentiment_hits(text: str) -> tuple[int, int]:
    """How many positive and how many negative keywords the text contains."""
    words = [w.lower() for w in _WORD.findall(text)]
    return sum(w in _POSITIVE_WORDS for w in words), sum(w in _NEGATIVE_WORDS for w in words)


def pick_sentiment(text: str, options: Sequence[Any]) -> Any:
    """The enum option matching the text's keyword polarity.

    Balanced non-zero hits choose a "mixed" option when there is one; a polarity the
    enum cannot express falls back to a neutral option, then to the first option.
    """
    positive, negative = sentiment_hits(text)
    wanted = (positive > negative) - (positive < negative)
    mixed = [o for o in options if "mixed" in str(o).lower()]
    if wanted == 0 and positive and mixed:
        return mixed[0]
    by_polarity: dict[int, Any] = {}
    for option in options:
        polarity = _label_polarity(str(option).lower())
        if polarity is not None:
            by_polarity.setdefault(polarity, option)
    if wanted in by_polarity:
        return by_polarity[wanted]
    return by_polarity.get(0, options[0])


def _label_polarity(label: str) -> int | None:
    for polarity, stems in _LABEL_POLARITY:
        if any(stem in label for stem in stems):
            return polarity
    return None


def plain_reply(text: str) -> str:
    """Reply to a request without tools or an output schema: an extractive summary."""
    return extractive_summary(strip_markers(text)) or "(no text to summarise)"


def fit_schema(schema: Mapping[str, Any], text: str) -> Any:
    """A value that validates against ``schema``, filled with content drawn from ``text``."""
    return _SchemaFiller(schema, strip_markers(text)).value(schema, name="", depth=0)


def schema_constraints(schema: Mapping[str, Any]) -> dict[str, float]:
    """Numeric keywords from the schema itself or from the SDK's description suffix."""
    found: dict[str, float] = {}
    description = schema.get("description")
    if isinstance(description, str) and (match := _DESCRIPTION_CONSTRAINTS.search(description)):
        for item in match.group(1).split(","):
            key, _, raw = item.partition(":")
            if key.strip() in _NUMERIC_KEYWORDS:
                try:
                    found[key.strip()] = float(raw)
                except ValueError:
                    continue
    for key in _NUMERIC_KEYWORDS:
        value = schema.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = float(value)
    return found


def _name_has(name: str, stems: Sequence[str]) -> bool:
    lowered = name.lower()
    return any(stem in lowered for stem in stems)


class _SchemaFiller:
    """Walks a JSON schema, resolving local ``$ref``s against the root document."""

    def __init__(self, root: Mapping[str, Any], text: str) -> None:
        self._root = root
        self._text = text
        self._words = {w.lower() for w in _WORD.findall(text)}

    def value(self, schema: Mapping[str, Any], name: str, depth: int) -> Any:
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._enum(schema["enum"], name)
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self._choose(schema[key], depth), name, depth)
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            return self.value(self._merge(schema["allOf"]), name, depth)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "string":
            return self._string(schema, name)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        return None

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen: set[str] = set()
        while isinstance(ref := schema.get("$ref"), str):
            if ref in seen or not ref.startswith("#"):
                raise ValueError(f"unresolvable $ref {ref!r}")
            seen.add(ref)
            target: Any = self._root
            for part in filter(None, ref[1:].split("/")):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            # Sibling keywords next to $ref (e.g. a description) refine the target.
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def _choose(self, options: Sequence[Mapping[str, Any]], depth: int) -> Mapping[str, Any]:
        resolved = [self._resolve(option) for option in options]
        nulls = [o for o in resolved if o.get("type") == "null"]
        others = [o for o in resolved if o.get("type") != "null"]
        if depth > MAX_DEPTH and nulls:
            return nulls[0]
        return (others or nulls)[0]

    def _merge(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        required: list[str] = []
        for part in map(self._resolve, parts):
            merged.update(part)
            properties.update(part.get("properties", {}))
            required.extend(r for r in part.get("required", []) if r not in required)
        merged.pop("allOf", None)
        if properties:
            merged.update(type="object", properties=properties, required=required)
        return merged

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> str | None:
        declared = schema.get("type")
        if isinstance(declared, list):
            non_null = [t for t in declared if t != "null"]
            return non_null[0] if non_null else None
        if isinstance(declared, str):
            return declared
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return None

    def _enum(self, options: Sequence[Any], name: str) -> Any:
        if _name_has(name, _SENTIMENT_NAMES):
            return pick_sentiment(self._text, options)
        mentioned = [o for o in options if isinstance(o, str) and o.lower() in self._words]
        return mentioned[0] if mentioned else options[0]

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        required = set(schema.get("required", []))
        return {
            key: self.value(sub, key, depth + 1)
            for key, sub in schema.get("properties", {}).items()
            if depth <= MAX_DEPTH or key in required
        }

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        limits = schema_constraints(schema)
        low = int(limits.get("minItems", 0))
        high = int(limits["maxItems"]) if "maxItems" in limits else None
        item_schema = self._resolve(schema.get("items", {}))
        is_text = (
            self._type(item_schema) == "string"
            and not {"enum", "const", "format"} & item_schema.keys()
        )
        wanted = DEFAULT_LIST_LENGTH if is_text else 1
        if depth > MAX_DEPTH:
            wanted = low
        count = max(low, wanted if high is None else min(wanted, high))
        if not is_text:
            return [self.value(item_schema, name, depth + 1) for _ in range(count)]
        if _name_has(name, _WORD_LIST_NAMES):
            phrases = salient_words(self._text, count)
        else:
            phrases = key_phrases(self._text, count)
        # Short inputs yield fewer phrases than minItems asks for; repeat rather than invent.
        phrases = phrases or [self._text_for(name, PHRASE_MAX_CHARS)]
        return [self._string(item_schema, name, phrases[i % len(phrases)]) for i in range(count)]

    def _text_for(self, name: str, max_chars: int) -> str:
        if _name_has(name, _SUMMARY_NAMES):
            return extractive_summary(self._text, min(max_chars, SUMMARY_MAX_CHARS))
        if _name_has(name, _TITLE_NAMES):
            first = sentences(self._text)[:1]
            return clip(" ".join(first[0].split()[:8]).rstrip(".!?,;:"), max_chars) if first else ""
        return extractive_summary(self._text, min(max_chars, PHRASE_MAX_CHARS))

    def _string(self, schema: Mapping[str, Any], name: str, preset: str | None = None) -> str:
        """A string for property ``name`` (or the given ``preset``) within the schema's limits."""
        fmt = schema.get("format")
        if fmt == "uuid":
            return str(uuid.uuid5(uuid.NAMESPACE_URL, self._text))
        if isinstance(fmt, str) and fmt in _FORMAT_SAMPLES:
            return _FORMAT_SAMPLES[fmt]
        limits = schema_constraints(schema)
        low = int(limits.get("minLength", 0))
        high = int(limits.get("maxLength", SUMMARY_MAX_CHARS))
        text = clip(preset, high) if preset is not None else self._text_for(name, high)
        filler = self._text or "simulated"
        while len(text) < low:
            text = f"{text} {filler}".strip()
        return text[: max(low, high)] if len(text) > high else text

    @staticmethod
    def _number(schema: Mapping[str, Any], integer: bool) -> int | float:
        """The midpoint of the allowed range (0 when unbounded), e.g. 0.5 for a confidence."""
        limits = schema_constraints(schema)
        low = limits.get("minimum", limits.get("exclusiveMinimum"))
        high = limits.get("maximum", limits.get("exclusiveMaximum"))
        low_strict = "minimum" not in limits and low is not None
        high_strict = "maximum" not in limits and high is not None
        step = 1.0 if integer else 0.5
        if low is not None and high is not None:
            value = (low + high) / 2
        elif low is not None:
            value = low + step if low_strict else low
        elif high is not None:
            value = min(0.0, high - step if high_strict else high)
        else:
            value = 0.0
        if not integer:
            return value
        rounded = math.floor(value)
        if low is not None and (rounded < low or (low_strict and rounded <= low)):
            rounded = math.ceil(value)
        return rounded
