"""Every use of TensorRT's Python API in a source tree, found by walking its syntax trees.

A use is a chain of steps from the `tensorrt` module, to be resolved against a real module:
  ["attr", NAME]                         an attribute, enum member, method or property
  ["call", N_POSITIONAL, [KEYWORDS...], STARRED]   a call, with what it was given
  ["inst"]                               an instance of the class so far (from an annotation)
  ["item"]                               an element (indexing, iteration)
  ["list"]                               a list of the value so far (a comprehension)
Values are followed through local names, `self.` attributes, parameter and return annotations,
comprehensions and for loops, so that `network = builder.create_network(flags)` followed by
`network.get_input(0)` is the chain trt.Builder(logger).create_network(flags).get_input(0).

Each use also carries the TensorRT majors it runs under: all of them, unless it sits in a
branch guarded by a comparison of the TensorRT major: `trt_major()` or a name bound to it
(`if major < 11:`, `... if trt_major() >= 11 else ...`, with `and`, `or`, `not`). Guards of
another form (an early return, a flag derived from the major) are not seen: write the
comparison where the version-specific call is.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "tensorrt"
MAJOR_FUNCTION = "trt_major"  # hwnas's one way of reading the TensorRT major
ALL_MAJORS = frozenset(range(100))
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_MAJOR = object()  # the value bound to names assigned from trt_major()


@dataclass
class Use:
    file: str
    line: int
    chain: list
    majors: frozenset[int]
    text: str

    def key(self) -> tuple:
        return repr(self.chain), tuple(sorted(self.majors))

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"

    def guarded(self) -> bool:
        return self.majors != ALL_MAJORS


@dataclass
class _Scope:
    names: dict = field(default_factory=dict)  # name -> chain, or _MAJOR


class _Walker:
    def __init__(self, tree: ast.Module, source: str, file: str):
        self.source, self.file = source, file
        self.uses: list[Use] = []
        self.roots: dict[str, list] = {}  # names bound to the module (or to a name imported from it)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == MODULE:
                        self.roots[alias.asname or MODULE] = []
            elif isinstance(node, ast.ImportFrom) and node.module == MODULE:
                for alias in node.names:
                    self.roots[alias.asname or alias.name] = [["attr", alias.name]]
        self.majors = ALL_MAJORS
        self.scope = _Scope()
        self.self_attrs: dict[str, list] = {}
        self.returns: dict[str, list] = {}  # module-level functions annotated with a TensorRT return type
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
                chain = self.annotation(node.returns)
                if chain is not None:
                    self.returns[node.name] = chain

    # --- recording ---------------------------------------------------------------------------

    def record(self, chain: list, node: ast.AST) -> None:
        text = ast.get_source_segment(self.source, node) or ""
        self.uses.append(Use(self.file, getattr(node, "lineno", 0), chain, self.majors, " ".join(text.split())[:120]))

    # --- annotations -------------------------------------------------------------------------

    def annotation(self, node: ast.expr | None) -> list | None:
        """The chain of an instance of the annotated TensorRT class (`trt.X`, `trt.X | None`, "trt.X")."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.annotation(node.left) or self.annotation(node.right)
        chain = self.plain_chain(node)
        return None if chain is None else [*chain, ["inst"]]

    def plain_chain(self, node: ast.expr) -> list | None:
        """`trt.A.B` as a chain, without recording (annotations are recorded where they are walked)."""
        if isinstance(node, ast.Name) and node.id in self.roots:
            return list(self.roots[node.id])
        if isinstance(node, ast.Attribute):
            base = self.plain_chain(node.value)
            return None if base is None else [*base, ["attr", node.attr]]
        return None

    # --- guards ------------------------------------------------------------------------------

    def is_major(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == MAJOR_FUNCTION:
            return True
        return isinstance(node, ast.Name) and self.scope.names.get(node.id) is _MAJOR

    def condition(self, node: ast.expr) -> tuple[frozenset[int], frozenset[int]]:
        """The majors under which `node` can be true, and those under which it can be false."""
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            true, false = self.condition(node.operand)
            return false, true
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            trues, falses = [p[0] for p in parts], [p[1] for p in parts]
            if isinstance(node.op, ast.And):
                return frozenset.intersection(*trues), frozenset.union(*falses)
            return frozenset.union(*trues), frozenset.intersection(*falses)
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(self.is_major(o) for o in operands) and all(
                    self.is_major(o) or (isinstance(o, ast.Constant) and type(o.value) is int) for o in operands):
                def holds(major: int) -> bool:
                    values = [major if self.is_major(o) else o.value for o in operands]
                    return all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:]))
                true = frozenset(m for m in ALL_MAJORS if holds(m))
                return true, ALL_MAJORS - true
        return ALL_MAJORS, ALL_MAJORS

    # --- expressions -------------------------------------------------------------------------

    def expr(self, node: ast.AST | None) -> list | None:
        """Walk an expression, recording its uses; the chain of its value where it is a TensorRT one."""
        if node is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in self.roots:
                return list(self.roots[node.id])
            value = self.scope.names.get(node.id)
            return None if value is None or value is _MAJOR else list(value)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.self_attrs:
                return list(self.self_attrs[node.attr])
            base = self.expr(node.value)
            if base is None:
                return None
            chain = [*base, ["attr", node.attr]]
            self.record(chain, node)
            return chain
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Subscript):
            base = self.expr(node.value)
            self.expr(node.slice)
            return None if base is None else [*base, ["item"]]
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            self.generators(node.generators)
            elt = self.expr(node.elt)
            return None if elt is None else [*elt, ["list"]]
        if isinstance(node, ast.DictComp):
            self.generators(node.generators)
            self.expr(node.key)
            self.expr(node.value)
            return None
        if isinstance(node, ast.IfExp):
            self.expr(node.test)
            true, false = self.condition(node.test)
            self.under(true, lambda: self.expr(node.body))
            self.under(false, lambda: self.expr(node.orelse))
            return None
        if isinstance(node, ast.Lambda):
            return self.expr(node.body)
        for child in ast.iter_child_nodes(node):
            self.expr(child)
        return None

    def call(self, node: ast.Call) -> list | None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            base = self.expr(node.args[0])
            for arg in node.args[2:]:
                self.expr(arg)
            if base is None:
                return None
            chain = [*base, ["attr", node.args[1].value]]
            if func.id == "hasattr" or len(node.args) == 2:  # getattr with a default may miss
                self.record(chain, node)
            return chain if func.id == "getattr" else None
        if isinstance(func, ast.Name) and func.id in self.returns and func.id not in self.scope.names:
            self.arguments(node)
            return list(self.returns[func.id])
        target = self.expr(func)
        self.arguments(node)
        if target is None:
            return None
        starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
        chain = [*target, ["call", sum(not isinstance(a, ast.Starred) for a in node.args),
                           sorted(k.arg for k in node.keywords if k.arg), starred]]
        self.record(chain, node)
        return chain

    def arguments(self, node: ast.Call) -> None:
        for arg in node.args:
            self.expr(arg)
        for kw in node.keywords:
            self.expr(kw.value)

    def generators(self, generators: list[ast.comprehension]) -> None:
        for gen in generators:
            it = self.expr(gen.iter)
            self.bind(gen.target, None if it is None else [*it, ["item"]])
            for cond in gen.ifs:
                self.expr(cond)

    def under(self, majors: frozenset[int], walk) -> None:
        outer = self.majors
        self.majors = outer & majors
        try:
            walk()
        finally:
            self.majors = outer

    # --- statements --------------------------------------------------------------------------

    def bind(self, target: ast.AST, value) -> None:
        if isinstance(target, ast.Name):
            if value is None:
                self.scope.names.pop(target.id, None)
            else:
                self.scope.names[target.id] = value
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            if value is None or value is _MAJOR:
                self.self_attrs.pop(target.attr, None)
            else:
                self.self_attrs[target.attr] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, None)  # tuple unpacking is not followed
        else:
            self.expr(target)

    def stmts(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for deco in node.decorator_list:
                self.expr(deco)
            outer = self.scope
            self.scope = _Scope(dict(outer.names))
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None:
                    if arg.annotation is not None:
                        self.expr(arg.annotation)
                    self.bind(ast.Name(arg.arg), self.annotation(arg.annotation))
            self.expr(node.returns)
            self.stmts(node.body)
            self.scope = outer
        elif isinstance(node, ast.ClassDef):
            outer_attrs = self.self_attrs
            self.self_attrs = {}
            for base in node.bases:
                self.expr(base)
            self.stmts(node.body)
            self.self_attrs = outer_attrs
        elif isinstance(node, ast.Assign):
            value = _MAJOR if self.is_major(node.value) else self.expr(node.value)
            for target in node.targets:
                self.bind(target, value)
        elif isinstance(node, ast.AnnAssign):
            self.expr(node.annotation)
            value = self.expr(node.value)
            self.bind(node.target, value if value is not None else self.annotation(node.annotation))
        elif isinstance(node, ast.If):
            self.expr(node.test)
            true, false = self.condition(node.test)
            self.under(true, lambda: self.stmts(node.body))
            self.under(false, lambda: self.stmts(node.orelse))
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            it = self.expr(node.iter)
            self.bind(node.target, None if it is None else [*it, ["item"]])
            self.stmts(node.body)
            self.stmts(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                value = self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, value)
            self.stmts(node.body)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.stmt(child)
                elif isinstance(child, ast.expr):
                    self.expr(child)
                else:  # handlers, match cases...
                    for grandchild in ast.iter_child_nodes(child):
                        if isinstance(grandchild, ast.stmt):
                            self.stmt(grandchild)
                        elif isinstance(grandchild, ast.expr):
                            self.expr(grandchild)


def source_uses(source: str, file: str) -> list[Use] | None:
    """The uses in one module's source; None when it does not import TensorRT."""
    tree = ast.parse(source)
    walker = _Walker(tree, source, file)
    if not walker.roots:
        return None
    walker.stmts(tree.body)
    return walker.uses


def tensorrt_modules(root: Path) -> dict[Path, list[Use]]:
    """The modules under `root` that import TensorRT, with their uses of it."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        uses = source_uses(path.read_text(), str(path.relative_to(root.parent)))
        if uses is not None:
            found[path] = uses
    return found


def unique(uses: list[Use]) -> list[Use]:
    """One use per (chain, majors), at its first place."""
    seen: dict[tuple, Use] = {}
    for use in uses:
        seen.setdefault(use.key(), use)
    return list(seen.values())
