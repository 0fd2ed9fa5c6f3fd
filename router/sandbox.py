"""Bounded evaluation of templates and ``if:`` expressions.

A rules file is trusted to say what to send, not to take the service down: a template
or an expression that would run too long or build too much fails its own delivery with
a ``LimitExceeded`` naming the limit, and nothing else. The limits, per render:

- ``render_timeout``: wall-clock seconds. Checked at every loop iteration and every
  call a template makes (the only ways a template can repeat work), so a runaway
  render stops at the deadline instead of running on.
- ``render_max_output``: the most characters (or list items) any one value may hold,
  the most a render may print in total, and the most loop iterations and calls it may
  make. Operations that multiply sizes (``*``, ``**``, ``%``, ``+``, ``~``, ``join``,
  ``replace``, ``center``, ``format``, ``lipsum``, ``range``, string padding) check
  the size of their result *before* building it.

The bounded environment does no constant folding, so nothing in a rules file or a
template is evaluated when it is loaded; ``static_problems`` finds the bombs that can
be seen without running anything (``'x' * 10**9``, ``range(10**8)``) for ``router
validate``.
"""

import contextlib
import math
import re
import string
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_RANGE",
    "BoundedSandbox",
    "LimitExceeded",
    "RenderLimits",
    "bounded",
    "static_problems",
]

#: ``range()`` never makes more items than this (the Jinja sandbox's own limit).
MAX_RANGE = 100_000


class LimitExceeded(Exception):
    """A template or expression went over one of its limits; the message names it."""


@dataclass(frozen=True)
class RenderLimits:
    """The limits of one render or one ``if:`` evaluation (``defaults.render_*``)."""

    timeout: float = 2.0
    max_output: int = 1_000_000

    def too_big(self, size: int, what: str) -> LimitExceeded:
        limit = f"render_max_output ({self.max_output})"
        return LimitExceeded(f"{what} would be {size} long, over {limit}")


DEFAULT_LIMITS = RenderLimits()


class _Budget:
    """What one render has used so far."""

    __slots__ = ("deadline", "limits", "printed", "steps")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout
        self.steps = 0
        self.printed = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_output:
            raise LimitExceeded(
                f"more than {self.limits.max_output} loop iterations and calls,"
                f" over render_max_output ({self.limits.max_output})"
            )
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"took longer than render_timeout ({self.limits.timeout:g}s)")

    def print(self, size: int) -> None:
        self.printed += size
        if self.printed > self.limits.max_output:
            raise LimitExceeded(
                f"printed more than {self.limits.max_output} characters,"
                f" over render_max_output ({self.limits.max_output})"
            )


_BUDGET: ContextVar[_Budget | None] = ContextVar("render_budget", default=None)


@contextlib.contextmanager
def bounded(limits: RenderLimits) -> Iterator[None]:
    """Evaluate templates and expressions within ``limits`` (a fresh budget) inside."""
    token = _BUDGET.set(_Budget(limits))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _limits() -> RenderLimits:
    budget = _BUDGET.get()
    return DEFAULT_LIMITS if budget is None else budget.limits


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step()


def _check(size: int, what: str) -> None:
    limits = _limits()
    if size > limits.max_output:
        raise limits.too_big(size, what)


def _size(value: Any) -> int:
    """Characters or items: what a value costs to hold or print (1 for scalars)."""
    try:
        return len(value)
    except TypeError:
        return 1


# --- operators -------------------------------------------------------------------------

_SEQUENCES = (str, list, tuple)
# A printf-style conversion: its width and precision (digits, or * from the arguments).
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _over(limit: int, numbers: Iterable[str]) -> bool:
    return any(len(n) > 9 or int(n) > limit for n in numbers)


def _check_format(spec: str, args: Iterable[Any], *, braces: bool = False) -> None:
    """``'%1000000000d'``, ``'%*d' % (10**9, 1)`` and ``'{:>{w}}'.format(1, w=10**9)``
    pad to any width: refuse widths and precisions over the limit, written or taken
    from the arguments."""
    limit = _limits().max_output
    from_args = False
    if braces:
        try:
            specs = [f or "" for _, _, f, _ in string.Formatter().parse(spec)]
        except ValueError:
            return  # str.format raises its own error
        from_args = any("{" in f for f in specs)
        too_wide = _over(limit, (n for f in specs for n in _DIGITS.findall(f)))
    else:
        conversions = _PRINTF.findall(spec)
        from_args = any("*" in part for c in conversions for part in c)
        too_wide = _over(limit, (p for c in conversions for p in c if p and p != "*"))
    if too_wide or (from_args and any(type(a) is int and abs(a) > limit for a in args)):
        raise LimitExceeded(f"a format width over render_max_output ({limit})")


def checked_binop(operator: str, left: Any, right: Any) -> Any:
    """``left <operator> right`` for the operators that can build big values, refused
    when the result would be over the limit."""
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(times, int):
                _check(len(seq) * max(times, 0), "a repeated sequence")
        if isinstance(left, int) and isinstance(right, int):
            _check((left.bit_length() + right.bit_length()) // 8, "a product (in bytes)")
        return left * right
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check(int(right * math.log2(abs(left))) // 8, "a power (in bytes)")
        return left**right
    if operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            _check(len(left) + len(right), "a concatenation")
        return left + right
    if operator == "%":
        if isinstance(left, str):
            args = right if isinstance(right, tuple) else (right,)
            _check_format(left, args)
        return left % right
    raise ValueError(f"operator {operator!r} is not checked")


def _loop(iterable: Any) -> Iterator[Any]:
    """Every ``{% for %}`` loop goes through this: one step per iteration."""
    for item in iterable:
        _step()
        yield item


def _concat(value: Any) -> Any:
    """The result of ``a ~ b``: bounded like every other value."""
    _check(_size(value), "a concatenation")
    return value


def _printed(value: Any) -> Any:
    """Every ``{{ ... }}`` goes through this (the environment's ``finalize``): what a
    render prints, captured blocks and macros included, counts against the limit."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.print(_size(value))
    return value


# --- functions and filters that can build big values ----------------------------------


def bounded_range(*args: int) -> range:
    """``range`` of at most ``MAX_RANGE`` items, and never more than the output limit."""
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise LimitExceeded(f"a range of {len(values)} items, over the limit of {MAX_RANGE}")
    _check(len(values), "a range")
    return values


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """``lipsum`` within the output limit (each word is at most about 12 characters)."""
    _check(int(n) * int(max) * 12, "lipsum")
    return generate_lorem_ipsum(n, html, min, max)


def _filter(name: str) -> Any:
    # Each bounded filter returns Jinja's own filter's result as is: a Markup stays
    # Markup, so autoescaping works exactly as without the bounds.
    return jinja2.filters.FILTERS[name]


def bounded_center(value: Any, width: int = 80) -> str:
    _check(int(width), "center")
    return _filter("center")(value, width)


def bounded_indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    pad = len(width) if isinstance(width, str) else int(width)
    _check(len(text) + pad * (text.count("\n") + 1), "indent")
    return _filter("indent")(s, width, first, blank)


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    hits = len(text) + 1 if not old else text.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(len(new) - len(old), 0)


@jinja2.pass_eval_context
def bounded_replace(
    eval_ctx: jinja2.nodes.EvalContext, s: Any, old: Any, new: Any, count: int | None = None
) -> str:
    _check(_replaced_size(str(s), str(old), str(new), count), "replace")
    return _filter("replace")(eval_ctx, s, old, new, count)


@jinja2.pass_eval_context
def bounded_join(
    eval_ctx: jinja2.nodes.EvalContext,
    value: Iterable[Any],
    d: str = "",
    attribute: str | int | None = None,
) -> str:
    items = list(value)
    _check(len(str(d)) * max(len(items) - 1, 0), "join")
    return _filter("join")(eval_ctx, items, d, attribute)


def bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format(str(value), [*args, *kwargs.values()])
    return _filter("format")(value, *args, **kwargs)


def bounded_batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    _check(int(linecount), "batch")
    return _filter("batch")(value, linecount, fill_with)


def bounded_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    _check(int(slices), "slice")
    return _filter("slice")(value, slices, fill_with)


def bounded_wordwrap(
    environment: jinja2.Environment, s: Any, width: int = 79, *args: Any, **kwargs: Any
) -> str:
    _check(int(width), "wordwrap")
    return _filter("wordwrap")(environment, s, width, *args, **kwargs)


bounded_wordwrap = jinja2.pass_environment(bounded_wordwrap)  # type: ignore[assignment]

BOUNDED_FILTERS = {
    "center": bounded_center,
    "indent": bounded_indent,
    "replace": bounded_replace,
    "join": bounded_join,
    "format": bounded_format,
    "batch": bounded_batch,
    "slice": bounded_slice,
    "wordwrap": bounded_wordwrap,
    # Internal: the code generator wraps loops and ``~`` in these.
    "_bounded_loop": _loop,
    "_bounded_concat": _concat,
}

# str methods whose result can be far bigger than the string: the size they would build.
_PADDING = {"center", "ljust", "rjust", "zfill"}


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text, name = method.__self__, method.__name__
    if name in _PADDING and args and isinstance(args[0], int):
        _check(args[0], f"str.{name}")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        _check(len(text) * max(int(tab), 1), "str.expandtabs")
    elif name == "replace" and len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _check(_replaced_size(text, str(args[0]), str(args[1]), count), "str.replace")
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, list | tuple):
            _check(len(text) * max(len(items) - 1, 0), "str.join")


class _Wrap(NodeTransformer):
    """Route every loop's iterable and every ``~`` result through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter_node("_bounded_loop", node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter_node("_bounded_concat", node)


def _filter_node(name: str, node: nodes.Expr) -> nodes.Filter:
    # A filter compiles to a direct call (no sandbox call check): the cheapest hook.
    wrapped = nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
    wrapped.environment = node.environment
    return wrapped


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, on a template tree whose loops and ``~`` are wrapped."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Wrap().visit(node)
        super().visit_Template(node, frame)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with every way to repeat work or build a big value bounded
    by the budget of the render in progress (``bounded``)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("optimized", False)  # no constant folding: nothing runs at load
        kwargs.setdefault("finalize", _printed)
        super().__init__(*args, **kwargs)
        self.globals["range"] = bounded_range
        self.globals["lipsum"] = bounded_lipsum
        self.filters.update(BOUNDED_FILTERS)

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        return checked_binop(operator, left, right)

    def call(
        __self,
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _step()
        if isinstance(getattr(__obj, "__self__", None), str):
            _check_str_method(__obj, args, kwargs)
        elif getattr(__obj, "__name__", None) in ("format", "format_map"):
            # str.format, as the sandbox wraps it.
            method = getattr(__obj, "__wrapped__", None)
            if isinstance(getattr(method, "__self__", None), str):
                values = [*args, *kwargs.values()]
                if method.__name__ == "format_map" and args and isinstance(args[0], dict):
                    values = list(args[0].values())
                _check_format(method.__self__, values, braces=True)
        return super().call(__context, __obj, *args, **kwargs)


# --- what ``router validate`` can see without running anything -------------------------


class _NotConstant(Exception):
    pass


def _constant(node: nodes.Node) -> Any:
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.List | nodes.Tuple):
        return [_constant(item) for item in node.items]
    if isinstance(node, nodes.BinExpr) and node.operator in BoundedSandbox.intercepted_binops:
        return checked_binop(node.operator, _constant(node.left), _constant(node.right))
    raise _NotConstant


_BOUNDED_CALLS = {"range": bounded_range, "lipsum": bounded_lipsum}
_PLAIN_FILTERS = ("format", "center", "batch", "slice")


def _static_check(node: nodes.Node) -> None:
    """Run the size check of one operation whose operands are all constants."""
    if isinstance(node, nodes.BinExpr):
        _constant(node)
    elif isinstance(node, nodes.Call):
        if isinstance(node.node, nodes.Name) and node.node.name in _BOUNDED_CALLS:
            _BOUNDED_CALLS[node.node.name](*[_constant(arg) for arg in node.args])
    elif isinstance(node, nodes.Filter) and node.name in _PLAIN_FILTERS and node.node is not None:
        args = [_constant(arg) for arg in [node.node, *node.args]]
        BOUNDED_FILTERS[node.name](*args)


def _range_size(node: nodes.Expr) -> int:
    """The length of ``range(<constants>)``, else 1 (unknown: left to the budget)."""
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
        if node.node.name == "range" and not node.kwargs:
            try:
                return len(range(*[_constant(arg) for arg in node.args]))
            except Exception:
                return 1
    return 1


def _nested_loops(node: nodes.Node, outer: int, limits: RenderLimits) -> list[tuple[int, str]]:
    """Loops over constant ranges nested so deep that their iterations pass the limit."""
    found = []
    for child in node.iter_child_nodes():
        total = outer
        if isinstance(child, nodes.For):
            total = outer * _range_size(child.iter)
            if total > limits.max_output:
                message = (
                    f"nested loops of {total} iterations,"
                    f" over render_max_output ({limits.max_output})"
                )
                found.append((child.lineno, message))
                continue
        found.extend(_nested_loops(child, total, limits))
    return found


def static_problems(tree: nodes.Node, limits: RenderLimits) -> list[tuple[int, str]]:
    """The operations in a parsed template or expression whose constant operands already
    put them over a limit: ``(line, message)`` for each."""
    found = _nested_loops(tree, 1, limits)
    token = _BUDGET.set(_Budget(limits))
    try:
        for node in [tree, *tree.find_all((nodes.BinExpr, nodes.Call, nodes.Filter))]:
            try:
                _static_check(node)
            except LimitExceeded as exc:
                found.append((node.lineno, str(exc)))
            except Exception:  # not constant, or an error the render will report
                continue
    finally:
        _BUDGET.reset(token)
    return sorted(set(found))
