"""YAML jobs files, read with budgets: nodes as written, nesting depth, and values after alias expansion.

PyYAML's composer shares an anchored node between its aliases, so a 1.5 KB "billion laughs" file composes quickly;
the cost comes later, from anything that walks the expanded value (construction, validation, error messages). Here
each job's expanded size and depth are measured on the node graph first (linear in the nodes as written, sizes
saturate at the budget), and a job over budget fails alone, with its line, before any of it is constructed. Deeper
nesting than `MAX_DEPTH` is skipped while composing (no recursion) and fails its job. Duplicate keys, integers too long
to read and invalid UTF-8 fail the job that holds them; a duplicate top-level key (``jobs:`` twice) refuses the file.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingEndEvent, MappingStartEvent, SequenceEndEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner
from yaml.tokens import ScalarToken, TagToken

from steer.jobs.read import (
    MAX_DEPTH,
    MAX_JOB_NODES,
    MAX_JOBS,
    MAX_YAML_EXPANDED,
    MAX_YAML_NODES,
    JobError,
    RawJob,
    clip,
    show,
)

try:  # libyaml scans and parses ~4x faster; composing stays in Python so that it can be bounded
    from yaml.cyaml import CParser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    CParser = None

_TOO_DEEP = "!steer-too-deep"  # a placeholder for a skipped, too deeply nested collection
_SCAN_DEPTH = MAX_DEPTH + 8  # flow nesting the pure-Python scanner follows before it skips (it is quadratic in depth)
_MERGE = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """The whole file is refused (one line)."""


class _BoundedComposer(Composer):
    """Counts the nodes it composes and skips (without recursing) anything nested deeper than `MAX_DEPTH`."""

    def __init__(self) -> None:
        super().__init__()
        self.steer_nodes = 0
        self.steer_depth = 0

    def _count(self, mark: Any) -> None:
        self.steer_nodes += 1
        if self.steer_nodes > MAX_YAML_NODES:
            raise _Refused(f"line {mark.line + 1}: more than {MAX_YAML_NODES} YAML nodes; split the file or use .jsonl")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._count(self.peek_event().start_mark)
        if self.check_event(AliasEvent):
            return super().compose_node(parent, index)
        if self.steer_depth >= MAX_DEPTH and self.check_event(SequenceStartEvent, MappingStartEvent):
            return self._skip_deep()
        self.steer_depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.steer_depth -= 1

    def _skip_deep(self) -> Node:
        """Consume one too-deep collection's events; a placeholder node (and its anchors) stands for it."""
        start = self.get_event()
        node = ScalarNode(_TOO_DEEP, "", start.start_mark, start.end_mark)
        level, event = 1, start
        if start.anchor is not None:
            self.anchors[start.anchor] = node
        while level:
            event = self.get_event()
            self._count(event.start_mark)
            if isinstance(event, SequenceStartEvent | MappingStartEvent):
                level += 1
            elif isinstance(event, SequenceEndEvent | MappingEndEvent):
                level -= 1
            if not isinstance(event, AliasEvent) and getattr(event, "anchor", None) is not None:
                self.anchors[event.anchor] = node
        node.end_mark = event.end_mark
        return node


class _Loader(_BoundedComposer, Reader, Scanner, Parser, SafeConstructor, Resolver):
    """Pure-Python scanner and parser (no nesting limit of their own); the bounded composer; the safe constructor."""

    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        if self.flow_level < _SCAN_DEPTH:
            super().fetch_flow_collection_start(TokenClass)
            return
        # Skip the whole collection in linear time; the parser sees one placeholder scalar in its place.
        self.save_possible_simple_key()
        self.allow_simple_key = False
        start_mark = self.get_mark()
        self.forward(_flow_collection_length(self.buffer, self.pointer))
        end_mark = self.get_mark()
        self.tokens.append(TagToken(("!", _TOO_DEEP[1:]), start_mark, start_mark))
        self.tokens.append(ScalarToken("", False, start_mark, end_mark, "'"))

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            return SafeConstructor.construct_yaml_int(self, node)
        except ValueError as err:  # more than 4300 digits
            raise ConstructorError(None, None, f"unreadable integer ({clip(str(err), 80)})", node.start_mark) from None

    def construct_safely(self, node: Node) -> Any:
        """Construct one job (already measured); after a failure the constructor's state is reset for the next."""
        try:
            return self.construct_document(node)
        except BaseException:
            self.constructed_objects, self.recursive_objects, self.state_generators = {}, {}, []
            self.deep_construct = False
            raise


_LOADERS: list[type] = [_Loader]
if CParser is not None:

    class _FastLoader(_BoundedComposer, CParser, SafeConstructor, Resolver):  # type: ignore[misc, valid-type]
        """libyaml's scanner and parser (refuses nesting deeper than 1,000: then the pure-Python loader reads it)."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

        construct_yaml_int = _Loader.construct_yaml_int
        construct_safely = _Loader.construct_safely

    _LOADERS.insert(0, _FastLoader)

for _cls in _LOADERS:
    _cls.add_constructor("tag:yaml.org,2002:int", _cls.construct_yaml_int)
    assert _cls.compose_node is _BoundedComposer.compose_node and _cls.get_single_node is Composer.get_single_node



# ======================================================================================================================
def _flow_collection_length(text: str, start: int) -> int:
    """Characters from the ``[`` or ``{`` at ``start`` to its matching close (or to the end), skipping quoted scalars
    and comments. In a flow collection a bracket is always structural unless quoted; a quote opens a scalar only at
    its start (after ``[ { , :`` or a space)."""
    depth, quote, prev, i, n = 0, "", " ", start, len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                if quote == "'" and i + 1 < n and text[i + 1] == "'":
                    i += 1
                else:
                    quote = ""
        elif ch in "\"'" and prev in "[{,: \t\r\n":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1 - start
        elif ch == "#" and prev in " \t\r\n":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == "\0":
            break
        prev = ch
        i += 1
    return i - start


class _Measure:
    """Expanded size, depth and the first problem of every node of the graph, memoized (linear in nodes as written)."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[int, int, str | None]] = {}

    def __call__(self, root: Node) -> tuple[int, int, str | None]:
        cap = MAX_YAML_EXPANDED + 1
        on_path: set[int] = set()
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            key = id(node)
            if key in self.memo:
                continue
            children = _children(node)
            if not done:
                if key in on_path:
                    self.memo[key] = (cap, MAX_DEPTH + 1, f"a YAML alias at line {node.start_mark.line + 1} refers to itself")
                    continue
                on_path.add(key)
                stack.append((node, True))
                stack.extend((c, False) for c in children if id(c) not in self.memo)
                continue
            on_path.discard(key)
            size, depth, problem = 1, 0, _own_problem(node)
            for c in children:
                c_size, c_depth, c_problem = self.memo.get(id(c), (cap, MAX_DEPTH + 1, "a YAML alias refers to itself"))
                size = min(cap, size + c_size)
                depth = max(depth, c_depth)
                problem = problem or c_problem
            self.memo[key] = (size, depth + 1 if children else 0, problem)
        return self.memo[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _own_problem(node: Node) -> str | None:
    if node.tag == _TOO_DEEP:
        return f"nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})"
    if isinstance(node, MappingNode):
        seen: dict[Any, int] = {}
        for k, _ in node.value:
            if not isinstance(k, ScalarNode) or k.tag == _MERGE:
                continue
            if k.value in seen:
                return f"duplicate key {show(k.value)} at line {k.start_mark.line + 1} (first at line {seen[k.value]})"
            seen[k.value] = k.start_mark.line + 1
    return None


def _error_text(err: yaml.YAMLError) -> str:
    mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    if context is not None and getattr(err, "context", None):
        where += f" ({err.context} from line {context.line + 1})"
    return f"{where}: {clip(str(getattr(err, 'problem', None) or err))}"


def _bad_utf8_lines(data: bytes) -> list[int]:
    """Line numbers (from 1) holding invalid UTF-8; empty for a valid file (the common case, one decode)."""
    try:
        data.decode("utf-8")
        return []
    except UnicodeDecodeError:
        pass
    bad = []
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(line_no)
    return bad


def _has_replacement(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and "\ufffd" in v:
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


# ======================================================================================================================
def read_yaml(data: bytes) -> list[RawJob]:
    """A list of jobs, or ``{defaults: {...}, jobs: [...]}``, as ``(line, fields | JobError)`` pairs."""
    bad_lines = _bad_utf8_lines(data)
    text = data.decode("utf-8", errors="replace")
    for i, cls in enumerate(_LOADERS):
        loader = cls(text)
        try:
            try:
                root = loader.get_single_node()
            except _Refused as err:
                raise ValueError(str(err)) from None
            except yaml.YAMLError as err:
                if i + 1 < len(_LOADERS) and "nesting depth" in str(err):
                    continue  # libyaml's own limit: the pure-Python parser reads it, the composer skips the deep part
                raise ValueError(f"YAML syntax error{_error_text(err)}") from None
            if root is None:
                return []
            return _jobs(loader, root, bad_lines)
        finally:
            loader.dispose()
    raise AssertionError("unreachable")


def _jobs(loader: _Loader, root: Node, bad_lines: list[int]) -> list[RawJob]:
    measure = _Measure()
    defaults: dict[str, Any] = {}
    jobs_node = root
    if isinstance(root, MappingNode):
        jobs_node, defaults = _top_level(loader, root, measure, bad_lines)
    if not isinstance(jobs_node, SequenceNode):
        raise ValueError("a YAML jobs file is a list of jobs or a mapping with 'jobs' and optional 'defaults'")
    if len(jobs_node.value) > MAX_JOBS:
        raise ValueError(f"more than {MAX_JOBS} jobs; split the file")
    jobs: list[RawJob] = []
    total = 0
    for node in jobs_node.value:
        line = node.start_mark.line + 1
        size, depth, problem = measure(node)
        problem = problem or _budget_problem(size, depth, total + size, bad_lines, node)
        if problem is not None:
            jobs.append((line, JobError(line, problem)))
            continue
        total += size
        try:
            value = loader.construct_safely(node)
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as err:
            text = _error_text(err) if isinstance(err, yaml.YAMLError) else f": {clip(str(err))}"
            jobs.append((line, JobError(line, f"unreadable value{text}")))
            continue
        if not isinstance(value, dict):
            jobs.append((line, JobError(line, f"a job must be a mapping, got {type(value).__name__}")))
        elif bad_lines and _has_replacement(value):
            jobs.append((line, JobError(line, "not valid UTF-8 (in a value it uses)")))
        else:
            jobs.append((line, {**defaults, **value}))
    return jobs


def _budget_problem(size: int, depth: int, total: int, bad_lines: list[int], node: Node) -> str | None:
    if size > MAX_JOB_NODES:
        return f"its YAML aliases expand to more than {MAX_JOB_NODES} values (an alias bomb?)"
    if total > MAX_YAML_EXPANDED:
        return f"the file's YAML aliases expand to more than {MAX_YAML_EXPANDED} values; this job and later ones are refused"
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    first = node.start_mark.line + 1
    last = node.end_mark.line + (1 if node.end_mark.column else 0)  # a block ends at the start of the next line
    bad = [b for b in bad_lines if first <= b <= last]
    if bad:
        return f"not valid UTF-8 (line {bad[0]})"
    return None


def _top_level(loader: _Loader, root: MappingNode, measure: _Measure, bad_lines: list[int]) -> tuple[Node | None, dict[str, Any]]:
    """The ``jobs`` node and the constructed ``defaults`` of a mapping root; anything odd refuses the file."""
    found: dict[str, Node] = {}
    first_line: dict[str, int] = {}
    for k, v in root.value:
        name = k.value if isinstance(k, ScalarNode) else None
        line = k.start_mark.line + 1
        if name not in ("defaults", "jobs"):
            raise ValueError(f"line {line}: unknown top-level key {show(name if name is not None else '<' + k.id + '>')}; "
                             "a YAML jobs file is a list of jobs or a mapping with 'jobs' (a list) and optional 'defaults'")
        if name in found:
            raise ValueError(f"line {line}: duplicate key {name!r} (first at line {first_line[name]})")
        found[name], first_line[name] = v, line
    if "jobs" not in found:
        raise ValueError("a YAML jobs file is a list of jobs or a mapping with 'jobs' (a list) and optional 'defaults'")
    node = found.get("defaults")
    if node is None or (isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        return found["jobs"], {}
    size, depth, problem = measure(node)
    problem = problem or _budget_problem(size, depth, size, bad_lines, node)
    if problem is not None:
        raise ValueError(f"line {node.start_mark.line + 1}: defaults: {problem}")
    try:
        defaults = loader.construct_safely(node)
    except (yaml.YAMLError, ValueError, TypeError) as err:
        text = _error_text(err) if isinstance(err, yaml.YAMLError) else f": {clip(str(err))}"
        raise ValueError(f"YAML 'defaults' is unreadable{text}") from None
    if not isinstance(defaults, dict):
        raise ValueError("YAML 'defaults' must be a mapping of job fields")
    return found["jobs"], defaults
