"""Load YAML configuration files with the line of every value, and parse their scalars.

``yaml.safe_load`` drops the position of each value, but every validation problem
must name its file and line. This module composes the document with PyYAML, turns
the node tree into plain Python values and keeps a map from key path to line.
It never raises on bad input: syntax errors, duplicate keys and unreadable files
become ``Problem`` entries of the returned document.

The ``parse_*`` functions convert one scalar of a configuration file (a name, a
duration, a loss rate, a bandwidth) to SI units. They raise ``ValueError`` with a
message that shows the value and how to write it correctly.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

KeyPath = tuple[str | int, ...]
Parser = Callable[[Any], Any]

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is and what to do about it."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        location = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.path:
            return f"{location}: {self.path}: {self.message}"
        return f"{location}: {self.message}"


def format_path(path: KeyPath) -> str:
    """Format a key path as ``links[2].between``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = part
    return text


@dataclass
class YamlDocument:
    """A parsed file: plain values, the line of each value and key, and problems.

    ``data`` is None when the file could not be read or parsed. Lines are 1-based.
    """

    file: str
    data: Any
    value_lines: dict[KeyPath, int] = field(default_factory=dict)
    key_lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line(self, path: KeyPath) -> int | None:
        """Return the line of the value at ``path``, or of its nearest ancestor."""
        while True:
            if path in self.value_lines:
                return self.value_lines[path]
            if not path:
                return None
            path = path[:-1]

    def key_line(self, path: KeyPath) -> int | None:
        """Return the line of the mapping key that ends ``path``."""
        if path in self.key_lines:
            return self.key_lines[path]
        return self.line(path)


def load_yaml(path: Path | str) -> YamlDocument:
    """Read and parse one YAML file; unreadable files become a problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        message = f"the file is not UTF-8 text ({error.reason}); save it as UTF-8"
        return YamlDocument(file, None, problems=[Problem(file, None, "", message)])
    except FileNotFoundError:
        message = "file not found; check the path"
        return YamlDocument(file, None, problems=[Problem(file, None, "", message)])
    except OSError as error:
        message = f"failed to read the file: {error.strerror or error}; check the path"
        return YamlDocument(file, None, problems=[Problem(file, None, "", message)])
    return parse_yaml(text, file)


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse YAML text that came from ``file`` (used only in problem reports)."""
    document = YamlDocument(file, None)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        document.problems.append(_syntax_problem(file, error))
        return document
    except yaml.YAMLError as error:
        # the reader rejects characters such as NUL and reports only an offset
        line = None
        if isinstance(error, yaml.reader.ReaderError):
            line = text.count("\n", 0, error.position) + 1
        detail = " ".join(str(error).split())
        message = f"invalid YAML: {detail}; fix the syntax"
        document.problems.append(Problem(file, line, "", message))
        return document

    except RecursionError:
        # PyYAML composes nested collections recursively
        message = "invalid YAML: the collections are nested too deeply; flatten them"
        document.problems.append(Problem(file, None, "", message))
        return document

    if root is None:
        return document
    try:
        document.data = _Converter(document).convert(root, ())
    except RecursionError:
        message = "the collections are nested too deeply; flatten them"
        document.problems.append(Problem(file, None, "", message))
    return document


def _syntax_problem(file: str, error: yaml.MarkedYAMLError) -> Problem:
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark is not None else None
    what = error.problem or error.context or "syntax error"
    if error.context and error.problem:
        what = f"{error.problem} ({error.context})"

    # an unclosed bracket or quote is often detected lines after it was opened
    start = error.context_mark
    if (
        error.problem
        and start is not None
        and mark is not None
        and start.line < mark.line
    ):
        what = f"{what[:-1]} that starts on line {start.line + 1})"
    message = f"invalid YAML: {what}; check the indentation and quoting on this line"
    return Problem(file, line, "", message)


class _Converter:
    """Converter from a composed node tree to dicts, lists and scalars, with lines."""

    def __init__(self, document: YamlDocument):
        self.document = document
        self.constructor = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()

    def report(self, node: Node, path: KeyPath, message: str) -> None:
        line = node.start_mark.line + 1
        problem = Problem(self.document.file, line, format_path(path), message)
        self.document.problems.append(problem)

    def convert(self, node: Node, path: KeyPath) -> Any:
        self.document.value_lines.setdefault(path, node.start_mark.line + 1)

        # an alias may point at an enclosing node, which would never end
        if id(node) in self.active:
            self.report(node, path, "recursive YAML alias; remove the self-reference")
            return None

        self.active.add(id(node))
        try:
            return self._convert_node(node, path)
        finally:
            self.active.discard(id(node))

    def _convert_node(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, ScalarNode):
            return self._convert_scalar(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != SEQ_TAG:
                self.report(node, path, f"unsupported YAML tag {node.tag}; remove it")
            return [
                self.convert(item, path + (i,)) for i, item in enumerate(node.value)
            ]
        if isinstance(node, MappingNode):
            if node.tag != MAP_TAG:
                self.report(node, path, f"unsupported YAML tag {node.tag}; remove it")
            return self._convert_mapping(node, path)
        return None

    def _convert_scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        try:
            return self.constructor.construct_object(node)
        except yaml.constructor.ConstructorError as error:
            self.report(node, path, f"invalid value: {error.problem}; fix or quote it")
        except (ValueError, OverflowError) as error:
            # an explicit tag or a date-like value that does not convert, such as
            # "!!int abc" or "2001-13-45"
            message = f"invalid value {node.value!r} ({error}); fix or quote it"
            self.report(node, path, message)
        return None

    def _convert_mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_lines: dict[str, int] = {}
        explicit, merged = self._entries(node, path)

        for key_node, value_node in explicit:
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, "a key must be a plain name; quote it")
                continue

            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in result:
                message = (
                    f"duplicate key '{key}' (first at line {first_lines[key]}); "
                    "remove one of them"
                )
                self.report(key_node, path + (key,), message)
                continue

            first_lines[key] = line
            self.document.key_lines[path + (key,)] = line
            result[key] = self.convert(value_node, path + (key,))

        # keys written out win over merged ones, and earlier merges over later ones
        for key_node, value_node in merged:
            if not isinstance(key_node, ScalarNode) or key_node.value in result:
                continue
            key = key_node.value
            self.document.key_lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.convert(value_node, path + (key,))
        return result

    def _entries(
        self, node: MappingNode, path: KeyPath
    ) -> tuple[list[tuple[Node, Node]], list[tuple[Node, Node]]]:
        """Split a mapping into its own entries and those merged in with ``<<``."""
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                explicit.append((key_node, value_node))
                continue

            sources = (
                value_node.value
                if isinstance(value_node, SequenceNode)
                else [value_node]
            )
            for source in sources:
                if not isinstance(source, MappingNode) or id(source) in self.active:
                    self.report(
                        source, path, "'<<' must merge a mapping; fix the alias"
                    )
                    continue
                self.active.add(id(source))
                own, inherited = self._entries(source, path)
                self.active.discard(id(source))
                merged.extend(own + inherited)
        return explicit, merged


class Checker:
    """Problem collector for one document, with typed reads of its values.

    Each read method reports a bad value at its line and returns a default, so that
    validation goes on and finds every problem of the file in one pass.
    """

    def __init__(self, document: YamlDocument):
        self.document = document
        self.problems: list[Problem] = list(document.problems)

    def report(self, path: KeyPath, message: str, *, at_key: bool = False) -> None:
        """Record a problem at the value (or, with ``at_key``, the key) of ``path``."""
        line = self.document.key_line(path) if at_key else self.document.line(path)
        problem = Problem(self.document.file, line, format_path(path), message)
        self.problems.append(problem)

    def mapping(self, value: Any, path: KeyPath, what: str) -> dict[str, Any] | None:
        """Return ``value`` if it is a mapping, else report it and return None."""
        if isinstance(value, dict):
            return value
        self.report(path, f"expected {what}, got {describe(value)}")
        return None

    def sequence(self, value: Any, path: KeyPath, what: str) -> list[Any]:
        """Return ``value`` if it is a list, else report it and return []."""
        if isinstance(value, list):
            return value
        self.report(path, f"expected {what}, got {describe(value)}")
        return []

    def check_keys(
        self,
        mapping: dict[str, Any],
        path: KeyPath,
        allowed: Sequence[str],
        required: Iterable[str] = (),
    ) -> None:
        """Report keys that are not ``allowed`` and ``required`` keys that are missing.

        A missing key that an unknown key's "did you mean" hint already names is not
        reported again.
        """
        suggested: set[str] = set()
        for key in mapping:
            if key not in allowed:
                message = f"unknown key '{key}'{suggest(key, allowed)}"
                self.report(path + (key,), message, at_key=True)
                suggested.update(difflib.get_close_matches(key, list(allowed), n=3))

        for key in required:
            if key not in mapping and key not in suggested:
                self.report(path, f"missing required key '{key}'; add it")

    def get(
        self,
        mapping: dict[str, Any] | None,
        path: KeyPath,
        key: str,
        parse: Parser,
        default: Any = None,
    ) -> Any:
        """Parse ``mapping[key]``; return ``default`` if it is absent or invalid."""
        if not isinstance(mapping, dict) or key not in mapping:
            return default
        try:
            return parse(mapping[key])
        except ValueError as error:
            self.report(path + (key,), str(error))
            return default


def describe(value: Any) -> str:
    """Describe a value of the wrong type for an error message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()} (quote it if you meant text)"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value!r})"


def suggest(
    word: str, options: Sequence[str], *, list_options: bool = False, limit: int = 12
) -> str:
    """Return a "did you mean" hint for ``word``, and the options if there is none.

    With ``list_options`` the options are listed even when a close match exists.
    At most ``limit`` options are listed.
    """
    options = list(options)
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    hint = ""
    if close:
        hint = "; did you mean " + " or ".join(f"'{name}'" for name in close) + "?"
    if not options or (close and not list_options):
        return hint

    listed = ", ".join(options[:limit])
    if len(options) > limit:
        listed += f" and {len(options) - limit} more"
    return f"{hint} (valid: {listed})" if hint else f"; valid: {listed}"


NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "use 1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-'"


def parse_name(value: Any) -> str:
    """Parse a name of a topology, node, link, LAN or group."""
    if not isinstance(value, str):
        raise ValueError(f"expected a name, got {describe(value)}; {NAME_RULE}")
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"invalid name {value!r}; {NAME_RULE}")
    return value


def parse_text(value: Any) -> str:
    """Parse free text such as a description."""
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {describe(value)}; quote it")
    return value


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def parse_int(value: Any, minimum: int = 0) -> int:
    """Parse an integer that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        message = f"expected a whole number >= {minimum}, got {describe(value)}"
        raise ValueError(message)
    if value < minimum:
        raise ValueError(f"invalid value {value}; use a whole number >= {minimum}")
    return value


def parse_positive_int(value: Any) -> int:
    return parse_int(value, minimum=1)


def _parse_number(value: Any) -> float | None:
    """Return ``value`` as a finite float if it is a plain YAML number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        raise ValueError(f"invalid number {value!r}; use a finite number")
    return float(value)


_QUANTITY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-zµ%]*)\s*")

DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(value: Any, number_unit: str = "s") -> float:
    """Parse a non-negative duration to seconds.

    A plain number is in ``number_unit``. Text is a number with one of the units in
    ``DURATION_UNITS``, such as "250us", "1.5s", "2h" or "1d".
    """
    example = "a number of seconds" if number_unit == "s" else "a number of ms"
    rule = (
        f"write {example} or a number with a unit: '250us', '5ms', '1.5s', '2h', '1d'"
    )
    number = _parse_number(value)
    if number is not None:
        if number < 0:
            raise ValueError(f"invalid duration {value!r}; it must not be negative")
        return number * DURATION_UNITS[number_unit]

    if not isinstance(value, str):
        raise ValueError(f"expected a duration, got {describe(value)}; {rule}")
    match = _QUANTITY.fullmatch(value)
    if match is None or match.group(2) not in DURATION_UNITS:
        raise ValueError(f"invalid duration {value!r}; {rule}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_delay(value: Any) -> float:
    """Parse a link delay or jitter to seconds; a plain number is in milliseconds."""
    return parse_duration(value, number_unit="ms")


def parse_positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}; it must be greater than zero")
    return seconds


def parse_loss(value: Any) -> float:
    """Parse a loss rate, "1%" or the fraction 0.01, to a fraction in [0, 1)."""
    rule = "write a percentage such as '1%' or a fraction such as 0.01, below 100%"
    fraction = _parse_number(value)
    if fraction is None and isinstance(value, str):
        match = _QUANTITY.fullmatch(value)
        if match is not None and match.group(2) == "%":
            fraction = float(match.group(1)) / 100
    if fraction is None:
        shown = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"invalid loss rate {shown}; {rule}")
    if not 0 <= fraction < 1:
        raise ValueError(f"invalid loss rate {value!r}; {rule}")
    return fraction


BANDWIDTH_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 1,
    "kbps": 10**3,
    "mbps": 10**6,
    "gbps": 10**9,
    "tbps": 10**12,
}


def parse_bandwidth(value: Any) -> int:
    """Parse a bandwidth to bits per second; units are decimal (1kbit = 1000 bit/s)."""
    rule = "write bits per second or a number with a unit: '512kbit', '10Mbit', '1Gbit'"
    number = _parse_number(value)
    if number is None and isinstance(value, str):
        match = _QUANTITY.fullmatch(value)
        unit = match.group(2).lower() if match is not None else ""
        if match is not None and unit in BANDWIDTH_UNITS:
            number = float(match.group(1)) * BANDWIDTH_UNITS[unit]
    if number is None:
        shown = repr(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"invalid bandwidth {shown}; {rule}")

    bits = round(number)
    if bits < 1:
        raise ValueError(f"invalid bandwidth {value!r}; it must be at least 1 bit/s")
    return bits


def choice_parser(options: Sequence[str], what: str) -> Parser:
    """Return a parser that accepts one of ``options`` and names them on error."""

    def parse_choice(value: Any) -> str:
        if isinstance(value, str) and value in options:
            return value
        if isinstance(value, str):
            hint = suggest(value, options, list_options=True)
            raise ValueError(f"unknown {what} {value!r}{hint}")
        valid = ", ".join(options)
        raise ValueError(f"expected a {what}, got {describe(value)}; valid: {valid}")

    return parse_choice
