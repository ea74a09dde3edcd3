"""MkDocs hook: the training-configuration reference, generated from the pydantic models of pipelines/config.py
each time the site is built, so that it cannot drift from the code.

configuration.md holds the prose; its MARKER line becomes one table per section of TrainConfig (key, type,
default, allowed values, description) and a table of where the shipped configs differ from the defaults. A
field's description is its pydantic `description`, else its source comment (at the end of its line, or the
comment lines just above it), looked up in the section's class or in the dataclass it mirrors (DrawConfig).
"""

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing

MARKER = "<!-- generated: the training config reference -->"
PAGE = "configuration.md"
BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def on_page_markdown(markdown, page, **kwargs):
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} lost its marker line {MARKER!r}: put it back where the reference goes")
    return markdown.replace(MARKER, reference())


def reference() -> str:
    from pipelines import config

    parts = [section_table(name, field.annotation, config) for name, field in config.TrainConfig.model_fields.items()]
    return "\n\n".join(parts + [shipped_table(config)])


def section_table(name, section, config) -> str:
    comments = source_comments(section, config)
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for key, field in section.model_fields.items():
        default = field.get_default(call_default_factory=True)
        description = field.description or comments.get(key, "")
        rows.append(f"| `{name}.{key}` | `{type_name(field.annotation)}` | `{value_text(default)}` | "
                    f"{allowed(section, key, field, config)} | {escape(description)} |")
    return f"## `{name}`\n\n" + "\n".join(rows)


def shipped_table(config) -> str:
    """Every key that a shipped config sets to other than the default, one column per config."""
    defaults = config.TrainConfig().flat()
    names = sorted(path.stem for path in config.CONFIGS.glob("*.yaml"))
    shipped = {name: config.load_config(name).flat() for name in names}
    rows = [f"| key | default | {' | '.join(f'`{n}`' for n in names)} |", "|---|---|" + "---|" * len(names)]
    for key, default in defaults.items():
        values = [shipped[n][key] for n in names]
        if any(value != default for value in values):
            cells = " | ".join("" if v == default else f"`{value_text(v)}`" for v in values)
            rows.append(f"| `{key}` | `{value_text(default)}` | {cells} |")
    intro = ("The shipped configs (`--config NAME`, files in `pipelines/configs/`), where they differ from the "
             "defaults above (an empty cell: the default).")
    return "## Shipped configs\n\n" + intro + "\n\n" + "\n".join(rows)


def type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def value_text(value) -> str:
    """A value as it is written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def allowed(section, key, field, config) -> str:
    """The field's bounds, lengths and choices, and the messages of the validators that check it alone."""
    parts = []
    if typing.get_origin(field.annotation) is typing.Literal:
        parts.append("one of " + ", ".join(f"`{a}`" for a in typing.get_args(field.annotation)))
    for meta in field.metadata:
        parts += [f"{symbol} {getattr(meta, bound)}" for bound, symbol in BOUNDS.items() if hasattr(meta, bound)]
        if getattr(meta, "min_length", None):
            parts.append(f"at least {meta.min_length} value(s)")
    for decorator in section.__pydantic_decorators__.field_validators.values():
        if key in decorator.info.fields:
            parts += validator_messages(decorator.func, config)
    return escape("; ".join(parts))


def validator_messages(func, config) -> list[str]:
    """The messages a validator raises (or collects with `.append`), as far as they can be read without running
    it: an f-string's parts are evaluated in the config module (e.g. the list of model sizes), a bare name of the
    value being checked is shown in capitals (KEY, VALUE), and a message with any other part is left out."""
    messages = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func)))):
        raised = isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args
        collected = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
        if raised or collected:
            text = message_text((node.exc if raised else node).args[0], vars(config))
            if text is not None:
                messages.append(f'refused: "{text}"')
    return messages


def message_text(node, names):
    if isinstance(node, ast.Constant):
        return str(node.value)
    if not isinstance(node, ast.JoinedStr):
        return None
    parts = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            parts.append(str(part.value))
            continue
        try:
            value = eval(compile(ast.Expression(part.value), "<validator>", "eval"), names)  # noqa: S307 - our source
            parts.append(repr(value) if part.conversion == ord("r") else str(value))
        except NameError:
            if not isinstance(part.value, ast.Name):
                return None
            parts.append(part.value.id.upper())
    return "".join(parts)


def source_comments(section, config) -> dict[str, str]:
    comments = {}
    mirrored = [obj for obj in vars(config).values() if dataclasses.is_dataclass(obj) and isinstance(obj, type)]
    for cls in [*mirrored, *reversed(section.__mro__)]:
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):  # a class made at run time (pydantic's create_model)
            continue
        comments.update({k: v for k, v in class_comments(source).items() if k in section.model_fields})
    return comments


def class_comments(source: str) -> dict[str, str]:
    """{field: comment} of the annotated assignments in a class body's source."""
    lines = source.splitlines()
    by_line = {token.start[0]: token.string.lstrip("#").strip()
               for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = by_line.get(node.end_lineno, "")
        above, k = [], node.lineno - 1
        while not text and k in by_line and lines[k - 1].lstrip().startswith("#"):
            above.insert(0, by_line[k])
            k -= 1
        if text or above:
            found[node.target.id] = text or " ".join(above)
    return found


def escape(text: str) -> str:
    """Table-cell text: a pipe would end the cell, and braces would read as attributes (attr_list)."""
    return text.replace("|", "\\|").replace("{", "\\{").replace("}", "\\}")
