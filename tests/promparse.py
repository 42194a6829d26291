"""A small, strict parser for the Prometheus text exposition format 0.0.4 (test helper).

Stricter than Prometheus itself where our exporter has no business being sloppy. ``parse`` raises
``PromParseError`` when:

* the text does not end with a newline, or contains a carriage return;
* a sample's metric family has no ``# TYPE`` line before it, TYPE/HELP is repeated, or the type is
  unknown;
* a metric or label name is invalid (label names starting with ``__`` are reserved), a label appears
  twice in one sample, or a label value has a bad escape (only ``\\\\``, ``\\"`` and ``\\n``) or is
  unterminated; HELP text may only use ``\\\\`` and ``\\n``;
* a value or timestamp is not a number;
* a counter is not named ``*_total`` or is negative/NaN;
* samples of one family are not contiguous, or the same series (name + label set) appears twice;
* a histogram series has no ``le`` on a bucket, ``le`` elsewhere, buckets whose ``le`` is not strictly
  increasing, counts that are not cumulative, a last bucket other than ``le="+Inf"``, a missing
  ``_sum``/``_count``, or ``_count`` different from the ``+Inf`` bucket.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["PromParseError", "Sample", "Family", "parse", "value"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?Inf|NaN")
_TIMESTAMP = re.compile(r"-?[0-9]+")
_META = re.compile(r"#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromParseError(ValueError):
    pass


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    name: str
    type: str
    help: str | None = None
    samples: list[Sample] = field(default_factory=list)


def _float(text: str, lineno: int) -> float:
    if not _FLOAT.fullmatch(text):
        raise PromParseError(f"line {lineno}: bad value {text!r}")
    if text.endswith("Inf"):
        return -math.inf if text.startswith("-") else math.inf
    return float(text)


def _unescape_help(text: str, lineno: int) -> str:
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\n":
                raise PromParseError(f"line {lineno}: bad escape in HELP")
            out.append("\\" if text[i + 1] == "\\" else "\n")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_labels(line: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Parse ``{name="value",...}`` starting at ``line[pos] == "{"``; return labels and the end index."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        m = _LABEL_NAME.match(line, pos)
        if not m:
            raise PromParseError(f"line {lineno}: bad label name at column {pos}")
        name = m.group(0)
        if name.startswith("__"):
            raise PromParseError(f"line {lineno}: reserved label name {name!r}")
        if name in labels:
            raise PromParseError(f"line {lineno}: duplicate label {name!r}")
        pos = m.end()
        if line[pos:pos + 2] != '="':
            raise PromParseError(f"line {lineno}: expected =\" after label {name!r}")
        pos += 2
        chars = []
        while True:
            if pos >= len(line):
                raise PromParseError(f"line {lineno}: unterminated label value")
            c = line[pos]
            if c == "\\":
                nxt = line[pos + 1:pos + 2]
                if nxt == "\\":
                    chars.append("\\")
                elif nxt == '"':
                    chars.append('"')
                elif nxt == "n":
                    chars.append("\n")
                else:
                    raise PromParseError(f"line {lineno}: bad escape in label value")
                pos += 2
            elif c == '"':
                pos += 1
                break
            else:
                chars.append(c)
                pos += 1
        labels[name] = "".join(chars)
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif pos < len(line) and line[pos] == "}":
            continue
        else:
            raise PromParseError(f"line {lineno}: expected , or }} after label value")


def _family_of(name: str, types: dict[str, str]) -> tuple[str, str]:
    """(family name, sample kind) where kind is "", "bucket", "sum" or "count"."""
    t = types.get(name)
    if t is not None:
        if t == "histogram":
            raise PromParseError(f"histogram {name!r} has a bare sample")
        return name, ""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            bt = types.get(base)
            if bt == "histogram" or (bt == "summary" and suffix != "_bucket"):
                return base, suffix[1:]
    raise PromParseError(f"sample {name!r} has no # TYPE line before it")


def parse(text: str) -> dict[str, Family]:
    if text and not text.endswith("\n"):
        raise PromParseError("exposition must end with a newline")
    if "\r" in text:
        raise PromParseError("carriage return in exposition")
    families: dict[str, Family] = {}
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    closed: set[str] = set()     # families whose sample block has ended
    current: str | None = None
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            m = _META.fullmatch(line)
            if not m:
                continue  # plain comment
            kind, name, rest = m.group(1), m.group(2), m.group(3) or ""
            if not _METRIC_NAME.fullmatch(name):
                raise PromParseError(f"line {lineno}: bad metric name {name!r}")
            if kind == "HELP":
                if name in helps:
                    raise PromParseError(f"line {lineno}: second HELP for {name!r}")
                helps[name] = _unescape_help(rest, lineno)
                if name in families:
                    families[name].help = helps[name]
            else:
                if name in types:
                    raise PromParseError(f"line {lineno}: second TYPE for {name!r}")
                if rest not in _TYPES:
                    raise PromParseError(f"line {lineno}: unknown type {rest!r}")
                if rest == "counter" and not name.endswith("_total"):
                    raise PromParseError(f"line {lineno}: counter {name!r} does not end in _total")
                types[name] = rest
                families[name] = Family(name, rest, helps.get(name))
            continue
        m = _METRIC_NAME.match(line)
        if not m:
            raise PromParseError(f"line {lineno}: bad metric name")
        name = m.group(0)
        pos = m.end()
        labels: dict[str, str] = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos, lineno)
        rest = line[pos:]
        if not rest or rest[0] not in " \t":
            raise PromParseError(f"line {lineno}: expected whitespace before the value")
        fields = rest.split()
        if len(fields) not in (1, 2):
            raise PromParseError(f"line {lineno}: expected value [timestamp]")
        val = _float(fields[0], lineno)
        if len(fields) == 2 and not _TIMESTAMP.fullmatch(fields[1]):
            raise PromParseError(f"line {lineno}: bad timestamp {fields[1]!r}")
        try:
            fam_name, part = _family_of(name, types)
        except PromParseError as e:
            raise PromParseError(f"line {lineno}: {e}") from None
        fam = families[fam_name]
        if fam_name != current:
            if fam_name in closed:
                raise PromParseError(f"line {lineno}: samples of {fam_name!r} are not contiguous")
            if current is not None:
                closed.add(current)
            current = fam_name
        if fam.type == "counter" and (math.isnan(val) or val < 0):
            raise PromParseError(f"line {lineno}: counter {name!r} has value {fields[0]}")
        if fam.type == "histogram":
            if (part == "bucket") != ("le" in labels):
                raise PromParseError(f"line {lineno}: 'le' must be on histogram buckets and only there")
        elif "le" in labels and fam.type == "summary":
            raise PromParseError(f"line {lineno}: 'le' label on a summary")
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise PromParseError(f"line {lineno}: duplicate series {name}{labels}")
        seen_series.add(key)
        fam.samples.append(Sample(name, labels, val))
    for fam in families.values():
        if fam.type == "histogram":
            _check_histogram(fam)
    return families


def _check_histogram(fam: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], dict] = {}
    for s in fam.samples:
        base = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        entry = series.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if s.name.endswith("_bucket"):
            le_text = s.labels["le"]
            if not _FLOAT.fullmatch(le_text):
                raise PromParseError(f"{fam.name}: bad le {le_text!r}")
            entry["buckets"].append((float(le_text.replace("Inf", "inf")), le_text, s.value))
        elif s.name.endswith("_sum"):
            entry["sum"] = s.value
        else:
            entry["count"] = s.value
    for base, e in series.items():
        buckets = e["buckets"]
        if not buckets:
            raise PromParseError(f"{fam.name}{dict(base)}: no buckets")
        prev_le, prev_count = -math.inf, 0.0
        for le, _text, count in buckets:
            if not le > prev_le:
                raise PromParseError(f"{fam.name}{dict(base)}: le values not increasing")
            if math.isnan(count) or count < prev_count:
                raise PromParseError(f"{fam.name}{dict(base)}: bucket counts not cumulative")
            prev_le, prev_count = le, count
        if buckets[-1][1] != "+Inf":
            raise PromParseError(f'{fam.name}{dict(base)}: last bucket is not le="+Inf"')
        if e["sum"] is None or e["count"] is None:
            raise PromParseError(f"{fam.name}{dict(base)}: missing _sum or _count")
        if e["count"] != buckets[-1][2]:
            raise PromParseError(f"{fam.name}{dict(base)}: _count differs from the +Inf bucket")


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    """The value of the sample ``name`` whose labels are exactly ``labels`` (KeyError if absent)."""
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise KeyError(f"{name}{labels}")
