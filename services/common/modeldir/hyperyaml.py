"""Read a HyperPyYAML model config as plain data, without executing any of its tags.

An official CosyVoice yaml builds Python objects (`!new:`), binds functions (`!name:`), calls
functions at load time (`!apply:`, e.g. `torch.manual_seed`) and cross-references values
(`!ref <a> * <b>`). We only need the hyperparameters, and a model directory from the internet
must never be able to run code in our process, so every tag becomes an inert `Tagged` node and
`!ref` is resolved by substitution plus a whitelist arithmetic evaluator.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A model config that cannot be read; the message names the file and the key."""


@dataclass
class Tagged:
    """An inert `!new:` / `!name:` / `!apply:` node: the target's dotted path and its arguments."""

    kind: str  # "new" | "name" | "apply"
    target: str  # e.g. "cosyvoice.llm.llm.Qwen2LM"
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]

    def __getitem__(self, key: str) -> Any:
        return self.kwargs[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)


@dataclass
class _Ref:
    expr: str  # raw text after !ref, e.g. "<chunk_size> * <token_mel_ratio>"


_TAG_KINDS = ("new", "name", "apply")


class _Loader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: _Loader, tag_suffix: str, node: yaml.Node, kind: str) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        return Tagged(kind, tag_suffix, kwargs=loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Tagged(kind, tag_suffix, args=loader.construct_sequence(node, deep=True))
    value = loader.construct_scalar(node)
    return Tagged(kind, tag_suffix, args=[] if value in ("", None) else [value])


for _kind in _TAG_KINDS:
    _Loader.add_multi_constructor(
        f"!{_kind}:",
        lambda loader, suffix, node, _k=_kind: _construct_tagged(loader, suffix, node, _k),
    )
_Loader.add_constructor("!ref", lambda loader, node: _Ref(str(loader.construct_scalar(node))))


def _reject_unknown_tag(loader: _Loader, suffix: str, node: yaml.Node) -> None:
    raise ConfigError(f"unsupported yaml tag '!{suffix}' at line {node.start_mark.line + 1}")


_Loader.add_multi_constructor("!", _reject_unknown_tag)
_Loader.add_multi_constructor("tag:yaml.org,2002:python/", _reject_unknown_tag)

# SafeLoader reads "1e-06" as a string because YAML 1.1 floats need a dot; HyperPyYAML
# (ruamel) reads it as a float, so we accept the same forms.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

_REF_PATTERN = re.compile(r"<([^<>]+)>")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _eval_arithmetic(text: str) -> int | float | None:
    """Evaluate `text` if it is pure number arithmetic; None otherwise (then it is a string)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None

    def visit(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = visit(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        raise ValueError

    try:
        return visit(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


class _Resolver:
    def __init__(self, root: dict[str, Any], source: str) -> None:
        self.root = root
        self.source = source
        self.resolving: set[str] = set()

    def lookup(self, key: str) -> Any:
        if key in self.resolving:
            raise ConfigError(f"{self.source}: circular !ref <{key}>")
        node: Any = self.root
        for part in key.replace("[", ".").replace("]", "").split("."):
            container = node.kwargs if isinstance(node, Tagged) else node
            if not isinstance(container, dict) or part not in container:
                raise ConfigError(f"{self.source}: !ref <{key}> names no key in the config")
            node = container[part]
        self.resolving.add(key)
        try:
            return self.resolve(node)
        finally:
            self.resolving.discard(key)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, _Ref):
            return self.resolve_ref(node.expr)
        if isinstance(node, Tagged):
            node.kwargs = {k: self.resolve(v) for k, v in node.kwargs.items()}
            node.args = [self.resolve(v) for v in node.args]
            return node
        if isinstance(node, dict):
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        return node

    def resolve_ref(self, expr: str) -> Any:
        keys = _REF_PATTERN.findall(expr)
        if not keys:
            raise ConfigError(f"{self.source}: '!ref {expr}' references nothing")
        if expr.strip() == f"<{keys[0]}>":
            return self.lookup(keys[0])  # a bare reference keeps the object, not its text
        text = _REF_PATTERN.sub(lambda m: str(self.lookup(m.group(1))), expr)
        value = _eval_arithmetic(text)
        return text if value is None else value


def load_hyperyaml(path: str | Path) -> dict[str, Any]:
    """Parse a HyperPyYAML file into plain dicts/lists/scalars and `Tagged` nodes."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read model config {path}: {exc.strerror}") from exc
    return parse_hyperyaml(text, source=str(path))


def parse_hyperyaml(text: str, source: str = "<string>") -> dict[str, Any]:
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid yaml: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    return _Resolver(raw, source).resolve(raw)
