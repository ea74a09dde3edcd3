"""YAML as the product reads it: training configs, search spaces, `--set` values and MLmodel files all go through
`read_yaml` (text) or `read_yaml_file` (a file).

On top of PyYAML's safe loader: YAML 1.2's numbers (`1e-4` and `3e5` are numbers; PyYAML alone reads them as
strings), a key given twice in one mapping is an error (PyYAML keeps the last one silently), and nesting deeper than
MAX_DEPTH is an error (PyYAML's composer would end in a RecursionError). A file that cannot be read, is not UTF-8,
is not YAML or is not the mapping it must be is one UserError naming the file and the fix.
"""

import re
from pathlib import Path

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from .errors import UserError

MAX_DEPTH = 50  # levels of nesting: configs use four, PyYAML runs out of stack in the hundreds
NOT_KEYS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")  # `<<` and `=`: merge syntax, not keys


class DuplicateKeyError(ConstructorError):
    """A key given twice in one mapping; `problem` says which and where."""


class TooDeepError(ComposerError):
    """Nesting deeper than MAX_DEPTH."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats, unique keys and bounded nesting."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        if self.depth >= MAX_DEPTH:
            raise TooDeepError(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._check_unique_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _check_unique_keys(self, node):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag in NOT_KEYS:
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: PyYAML's own error names it
                continue
            if seen:
                raise DuplicateKeyError(None, None, f"the key {key!r} is given twice, on lines {first_line[key]} "
                                        f"and {line} (YAML would keep only the last): keep one of them",
                                        key_node.start_mark)
            first_line[key] = line


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def read_yaml(text: str):
    """The document in `text`; yaml.YAMLError (see yaml_problem) when it is not YAML, repeats a key or nests too
    deep."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line saying what is wrong and where (lines counted from 1), for a refusal."""
    if isinstance(err, DuplicateKeyError):
        return err.problem
    if isinstance(err, TooDeepError):
        return (f"{err.problem} (line {err.problem_mark.line + 1}): imf's files need a few levels; check the "
                "brackets and indentation there")
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark, context = err.problem_mark, f" {err.context}" if err.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}{context}; correct it there"
    if isinstance(err, yaml.reader.ReaderError):
        code = err.character if isinstance(err.character, int) else ord(err.character)
        return f"the character U+{code:04X} at offset {err.position} is not allowed in YAML; remove it"
    return str(err).replace("\n", " ")


def read_yaml_file(path, what: str, mapping_of: str | None = None):
    """The document in the YAML file at `path` (None when it holds none). A UserError naming `what`, the file and
    the fix when the file cannot be read, is not UTF-8 or not YAML, or, when `mapping_of` says what its keys are,
    holds something other than a mapping."""
    name = f"{what} {path}"
    try:
        document = read_yaml(_utf8_text(Path(path), name))
    except yaml.YAMLError as err:
        raise UserError(f"{name} is not valid YAML: {yaml_problem(err)}") from None
    if mapping_of and document is not None and not isinstance(document, dict):
        raise UserError(f"{name} must be a mapping of {mapping_of}, not a {type(document).__name__} "
                        f"({str(document)[:60]})")
    return document


def _utf8_text(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{name} cannot be read ({err.strerror or err}): check the path and its permissions") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is allowed, as YAML allows it
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{name} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}): save it as "
                        "UTF-8") from None
