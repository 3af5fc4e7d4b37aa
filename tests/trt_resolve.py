"""Resolve chains of TensorRT API uses (tests/trt_uses.py) against the real `tensorrt` module.

Run inside an environment holding TensorRT's Python bindings: `python trt_resolve.py < uses.json`,
stdlib only. Each chain is followed step by step from the module: attributes are looked up on
the real classes, calls are matched against the bindings' own signatures (pybind11 writes them
into the docstrings: argument count and keyword names) and give the type of their result, so
that the methods of the objects TensorRT returns are looked up on the right classes. A step
that is missing, a call that no signature takes, or a member documented as [DEPRECATED] in
this version, is reported.

Input: a JSON list of chains. Output: {"version", "module", "results"}, results holding per
chain {"error": str | None, "deprecated": str | None, "reached": what the chain ends on}.
`--buffer-classes` lists instead the classes whose objects give Python's buffer protocol.
"""

from __future__ import annotations

import builtins
import ctypes
import inspect
import json
import re
import sys

import tensorrt

_PREFIX = re.compile(r"^(?:tensorrt_bindings\.tensorrt|tensorrt_bindings|tensorrt)\.")
_GENERIC = re.compile(r"^(?:typing\.|collections\.abc\.)?(?:List|list|Sequence|Iterable|Iterator|tuple|Tuple)\[(.*)\]$")
_OPTIONAL = re.compile(r"^(?:typing\.)?Optional\[(.*)\]$")
_SIGNATURE = re.compile(r"^(?:\d+\. )?[\w.]*\(.*\)(?: -> .*)?$")


class State:
    """What a chain has reached. kind: "obj" (a concrete object: the module, a class, an enum
    member), "inst" (an instance of the class `value`), "method" ((function, 'Class.name')),
    "list" (of the state `value`) or "unknown" (`value`: why, or None)."""

    def __init__(self, kind: str, value: object = None, label: str = ""):
        self.kind, self.value, self.label = kind, value, label

    @staticmethod
    def obj(value: object, label: str) -> State:
        return State("obj", value, label)

    @staticmethod
    def inst(cls: object, label: str) -> State:
        return State("inst", cls, label)


class Unresolved(Exception):
    pass


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets (signatures nest [], (), <> and quotes)."""
    parts, depth, cur, quote = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def signatures(func: object, name: str) -> list[tuple[list[tuple[str, bool, str]], str]]:
    """pybind11's signatures of `func` from its docstring: ([(param, has_default, kind)], return type).

    kind is "pos", "kw" (keyword-only), "var" (*args) or "varkw" (**kwargs); a leading `self` is
    dropped. An overloaded function lists one signature per overload. Empty when the docstring
    has none.
    """
    found = []
    for match in re.finditer(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> (.+)$", _doc(func), flags=re.M):
        params, keyword_only = [], False
        for part in split_top(match.group(1)):
            head = part.split("=", 1)[0].split(":", 1)[0].strip()
            if head in ("/", "*"):
                keyword_only = keyword_only or head == "*"
                continue
            kind = "varkw" if head.startswith("**") else "var" if head.startswith("*") else \
                "kw" if keyword_only else "pos"
            params.append((head.lstrip("*"), "=" in part, kind))
        if params and params[0][0] == "self":
            params = params[1:]
        found.append((params, match.group(2).strip()))
    return found


def _doc(value: object) -> str:
    doc = getattr(value, "__doc__", None)
    return doc if isinstance(doc, str) else ""


def accepts(params: list[tuple[str, bool, str]], positional: int, keywords: list[str]) -> bool:
    """Whether a signature takes `positional` arguments and these keywords, as Python would bind them."""
    slots = [p for p in params if p[2] == "pos"]
    if positional > len(slots) and not any(p[2] == "var" for p in params):
        return False
    bound = {p[0] for p in slots[:positional]}
    names = {p[0] for p in params if p[2] in ("pos", "kw")}
    for kw in keywords:
        if kw in bound or (kw not in names and not any(p[2] == "varkw" for p in params)):
            return False
        bound.add(kw)
    return all(p[1] or p[0] in bound for p in params if p[2] in ("pos", "kw"))


def type_state(text: str, label: str) -> State:
    """The state of a value of the type pybind11 wrote in a signature."""
    text = text.strip()
    opt = _OPTIONAL.match(text)
    if opt:
        return type_state(opt.group(1), label)
    if " | " in text:
        kinds = [t for t in split_top(text, "|") if t.strip() != "None"]
        if len(kinds) == 1:
            return type_state(kinds[0], label)
    generic = _GENERIC.match(text)
    if generic:
        items = split_top(generic.group(1))
        return State("list", type_state(items[0], label) if len(items) == 1 else State("unknown", None, label), label)
    if _PREFIX.match(text):
        value: object = tensorrt
        for part in _PREFIX.sub("", text).split("."):
            value = getattr(value, part, None)
        if isinstance(value, type):
            return State.inst(value, label)
    elif isinstance(getattr(builtins, text, None), type):
        return State.inst(getattr(builtins, text), label)
    return State("unknown", f"its type {text} is not a Python class of the bindings", label)


def deprecation(owner: object, name: str, member: object) -> str | None:
    """The [DEPRECATED] note that opens a member's description, or its line in its enum's member list."""
    if isinstance(owner, type) and hasattr(owner, "__members__") and name in owner.__members__:
        match = re.search(rf"^\s*{re.escape(name)} : (\[DEPRECATED\].*)$", _doc(owner), flags=re.M)
        return match.group(1).strip() if match else None
    if hasattr(type(member), "__members__"):
        return None  # an enum value: its docstring is its enum's
    if isinstance(member, property) and isinstance(owner, type):  # documented in its class's :ivar list
        for cls in owner.__mro__:
            match = re.search(rf"^\s*:ivar {re.escape(name)}:(?: :class:`[\w.]+`)? (\[DEPRECATED\].*)$", _doc(cls),
                              flags=re.M)
            if match:
                return match.group(1).strip()
    docs = [_doc(member), _doc(member.fget) if isinstance(member, property) else ""]
    for doc in docs:
        for line in doc.splitlines():
            line = line.strip()
            if not line or _SIGNATURE.match(line) or line == "Overloaded function.":
                continue
            if line.startswith("[DEPRECATED]"):
                return line
            break
    return None


def attribute(state: State, name: str) -> tuple[State, str | None]:
    label = f"{state.label}.{name}"
    if state.kind == "obj":
        owner = state.value
        if not hasattr(owner, name):
            raise Unresolved(f"{state.label} has no attribute '{name}'")
        value = getattr(owner, name)
        raw = inspect.getattr_static(owner, name, None) if isinstance(owner, type) else None
        return State.obj(value, label), deprecation(owner, name, raw if raw is not None else value)
    if state.kind == "inst":
        cls = state.value
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            raise Unresolved(f"{state.label} (a {cls.__name__}) has no attribute '{name}'") from None
        note = deprecation(cls, name, raw)
        if isinstance(raw, property):
            doc = (raw.fget.__doc__ or "") if raw.fget else ""
            match = re.match(r"^\(.*?\) -> (.+)$", doc.split("\n", 1)[0])
            return (type_state(match.group(1), label) if match else State("unknown", None, label)), note
        if callable(raw) and not isinstance(raw, type) and not hasattr(type(raw), "__members__"):
            return State("method", (getattr(cls, name), f"{cls.__name__}.{name}"), label), note
        return State.obj(getattr(cls, name), label), note
    if state.kind == "list":
        if not hasattr(list, name):
            raise Unresolved(f"{state.label} (a list) has no attribute '{name}'")
        return State("unknown", None, label), None
    raise Unresolved(f"cannot follow {label}: {unknown(state)}")


def call(state: State, positional: int, keywords: list[str], starred: bool) -> State:
    label = f"{state.label}(...)"
    if state.kind == "obj" and isinstance(state.value, type):
        cls = state.value
        sigs = signatures(cls.__init__, "__init__")
        sigs = [([p for p in params if p[0] != "self"], ret) for params, ret in sigs]
        if sigs and not starred and not any(accepts(p, positional, keywords) for p, _ in sigs):
            raise Unresolved(f"{state.label} takes no call with {positional} positional arguments and keywords "
                             f"{keywords}: its constructors are {[[p[0] for p in s] for s, _ in sigs]}")
        return State.inst(cls, label)
    if state.kind == "method":
        func, qualname = state.value
        name = qualname.rsplit(".", 1)[-1]
    elif state.kind == "obj" and callable(state.value):
        func, name = state.value, getattr(state.value, "__name__", "")
    else:
        raise Unresolved(f"{state.label} is not callable" if state.kind != "unknown"
                         else f"cannot follow {label}: {unknown(state)}")
    sigs = signatures(func, name)
    if not sigs:  # not a pybind11 function (str.split...): Python's own signature, when it has one
        try:
            inspect.signature(func).bind(*range(positional), **dict.fromkeys(keywords))
        except TypeError as exc:
            if not starred:
                raise Unresolved(f"{state.label} takes no call with {positional} positional arguments and "
                                 f"keywords {keywords}: {exc}") from None
        except ValueError:
            pass  # no signature to check against
        return State("unknown", None, label)
    matching = sigs if starred else [(p, ret) for p, ret in sigs if accepts(p, positional, keywords)]
    if not matching:
        raise Unresolved(f"{state.label} takes no call with {positional} positional arguments and keywords "
                         f"{keywords}: its signatures are {[[p[0] for p in s] for s, _ in sigs]}")
    returns = {ret for _, ret in matching}
    return type_state(returns.pop(), label) if len(returns) == 1 else State("unknown", None, label)


def item(state: State) -> State:
    if state.kind == "list":
        return state.value
    if state.kind == "inst":
        getitem = inspect.getattr_static(state.value, "__getitem__", None)
        if getitem is None:
            raise Unresolved(f"{state.label} (a {state.value.__name__}) cannot be indexed")
        sigs = signatures(getitem, "__getitem__")
        returns = {ret for params, ret in sigs if accepts(params, 1, [])}
        if len(returns) == 1:
            return type_state(returns.pop(), f"{state.label}[...]")
    return State("unknown", None, f"{state.label}[...]")


def resolve(chain: list) -> dict:
    state = State.obj(tensorrt, "tensorrt")
    deprecated = []
    try:
        for step in chain:
            if step[0] == "attr":
                state, note = attribute(state, step[1])
                if note:
                    deprecated.append(f"{state.label}: {note}")
            elif step[0] == "call":
                state = call(state, step[1], step[2], step[3])
            elif step[0] == "inst":
                if state.kind != "obj" or not isinstance(state.value, type):
                    raise Unresolved(f"{state.label} is not a class")
                state = State.inst(state.value, state.label)
            elif step[0] == "item":
                state = item(state)
            elif step[0] == "list":
                state = State("list", state, state.label)
            else:
                raise ValueError(f"unknown step {step}")
    except Unresolved as exc:
        return {"error": str(exc), "deprecated": None, "reached": None}
    return {"error": None, "deprecated": "; ".join(deprecated) or None, "reached": describe(state)}


def unknown(state: State) -> str:
    return f"the type of {state.label} is not known" + (f" ({state.value})" if state.value else "")


def describe(state: State) -> str:
    """What a chain reached, for tests that check values were followed: 'method IExecutionContext.x'..."""
    if state.kind == "method":
        return f"method {state.value[1]}"
    if state.kind == "inst":
        return f"instance {state.value.__qualname__}"
    if state.kind == "list":
        return f"list of {describe(state.value)}"
    if state.kind == "obj":
        return f"object {type(state.value).__qualname__}"
    return "unknown"


def buffer_classes() -> list[str]:
    """The classes whose objects give Python's buffer protocol (pybind11 stub generators cannot see it)."""
    check = ctypes.pythonapi.PyObject_CheckBuffer
    check.argtypes = [ctypes.py_object]
    found = []
    for name in dir(tensorrt):
        cls = getattr(tensorrt, name)
        if isinstance(cls, type) and type(cls).__name__ == "pybind11_type":
            try:
                blank = cls.__new__(cls)  # allocated, not constructed: enough to read the type's slots
            except TypeError:
                continue
            if check(blank):
                found.append(name)
    return found


if __name__ == "__main__":
    if sys.argv[1:] == ["--buffer-classes"]:
        json.dump(buffer_classes(), sys.stdout)
    else:
        json.dump({"version": tensorrt.__version__, "module": tensorrt.Builder.__module__,
                   "results": [resolve(chain) for chain in json.load(sys.stdin)]}, sys.stdout)
