"""Static rules for Python migrations: what a ``migrate(conn)`` may not do, found in its
syntax tree before any tenant is touched.

Why a module of its own: the rules need a small data-flow analysis (which names hold
the reconciler's connection) that has nothing to do with reading SQL files, and every
refusal must be exact — a rule that fires on correct code (``f.close()`` on a CSV
file, ``cur.close()`` on the migration's own cursor) is as wrong as one that misses.

Two families of rules, both reported as ``Problem`` with file, line and column:

* **Connection rules.** Only calls that act on the reconciler's connection are refused:
  ``commit``, ``rollback``, ``close``, ``executescript``, ``interrupt`` and
  ``deserialize`` on it, ``executescript`` on a cursor made from it, ``with conn:``
  (its exit commits), and assignments to its ``isolation_level`` / ``autocommit``
  (changing either ends or changes the open transaction). "The connection" is the
  first parameter of ``migrate``, any name bound to it (``c = conn``, ``with conn as
  c``, ``c := conn``), the matching parameter of a module-level function called with
  it (followed to a fixed point), and ``<cursor>.connection``. The same calls on other
  objects (a file, another database, the migration's own cursor) are fine.
* **Process-ending rules** (issue 11, item 10): ``sys.exit``, ``os._exit``,
  ``os.abort``, ``exit()``/``quit()``, ``os.exec*`` (replaces the process),
  ``os.kill(os.getpid(), …)`` / ``os.kill(0, …)``, ``os.killpg``,
  ``signal.raise_signal``, ``signal.pthread_kill``, and ``raise SystemExit`` /
  ``KeyboardInterrupt``, anywhere in the file, however imported (``from sys import
  exit as leave`` is followed). They would end or hijack the reconciler mid-step; a
  migration that must fail raises an ordinary exception, and its step is rolled back.

What cannot be seen statically (``getattr(os, "_exit")``, SQL built at run time) is the
run-time guard's job; these rules only ever refuse what they can name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import Problem

_CONN_METHODS = {
    "commit": "commits the reconciler's transaction half-way through the migration",
    "rollback": "ends the reconciler's transaction",
    "executescript": "COMMITs the reconciler's transaction before running the script",
    "close": "closes the reconciler's connection",
    "interrupt": "aborts the reconciler's statements and can roll its transaction back",
    "deserialize": "replaces the tenant's whole database",
}
_CONN_ATTRIBUTES = ("isolation_level", "autocommit")
_CONN_HINT = ("remove it: the reconciler wraps migrate(conn) in BEGIN IMMEDIATE … COMMIT; "
              "run statements with conn.execute")

_EXIT_CALLS = {
    "sys.exit": "raises SystemExit, ending the reconciler",
    "os._exit": "ends the reconciler's process at once",
    "posix._exit": "ends the reconciler's process at once",
    "os.abort": "kills the reconciler's process",
    "posix.abort": "kills the reconciler's process",
    "exit": "raises SystemExit, ending the reconciler",
    "quit": "raises SystemExit, ending the reconciler",
    "builtins.exit": "raises SystemExit, ending the reconciler",
    "builtins.quit": "raises SystemExit, ending the reconciler",
    "os.killpg": "signals the reconciler's process group",
    "signal.raise_signal": "signals the reconciler's own process",
    "signal.pthread_kill": "signals a thread of the reconciler's process",
    **{f"os.{name}": "replaces the reconciler's process with another program"
       for name in ("execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp",
                    "execvpe")},
}
_SELF_PIDS = ("os.getpid", "posix.getpid")
_EXIT_EXCEPTIONS = ("SystemExit", "KeyboardInterrupt", "builtins.SystemExit",
                    "builtins.KeyboardInterrupt")
_EXIT_HINT = ("raise an ordinary exception instead (e.g. `raise ValueError(\"why\")`): the "
              "step is then rolled back and reported as failed, and the reconciler goes on")


def problems(path: Path, tree: ast.Module) -> list[Problem]:
    """Every connection-rule and process-ending-rule violation in ``tree``, in source
    order. ``path`` is only used to name the file in each ``Problem``."""
    found = _connection_problems(path, tree) + _exit_problems(path, tree)
    return sorted(found, key=lambda p: (p.line or 0, p.column or 0))


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class _Origin:
    """Why a name holds the connection, for the message."""

    name: str
    why: str


def _connection_problems(path: Path, tree: ast.Module) -> list[Problem]:
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    holding = _holding(functions)
    out: list[Problem] = []
    for fname, seeds in holding.items():
        out.extend(_uses(path, functions[fname], seeds))
    return out


def _holding(functions: dict[str, ast.FunctionDef]) -> dict[str, dict[str, _Origin]]:
    """Function name → its parameters that hold the reconciler's connection: ``migrate``'s
    first, then those of module-level functions it is passed to (to a fixed point)."""
    migrate = functions.get("migrate")
    if migrate is None:
        return {}
    params = _params(migrate)
    if not params:
        return {}
    # function name -> {parameter: origin}, grown to a fixed point over helper calls
    holding: dict[str, dict[str, _Origin]] = {
        "migrate": {params[0]: _Origin(params[0], "migrate's parameter")}}
    changed = True
    while changed:
        changed = False
        for fname, seeds in list(holding.items()):
            conns, _cursors = _bound_names(functions[fname], seeds)
            for call in ast.walk(functions[fname]):
                if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) \
                        or call.func.id not in functions:
                    continue
                callee = functions[call.func.id]
                callee_params = _params(callee)
                passed: list[tuple[str, ast.expr]] = list(zip(callee_params, call.args,
                                                              strict=False))
                passed += [(k.arg, k.value) for k in call.keywords if k.arg is not None]
                for param, arg in passed:
                    if isinstance(arg, ast.Name) and arg.id in conns:
                        known = holding.setdefault(callee.name, {})
                        if param not in known:
                            known[param] = _Origin(
                                param, f"{callee.name}()'s parameter, passed the connection "
                                f"at line {call.lineno}")
                            changed = True
    return holding


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in (*a.posonlyargs, *a.args)]


def _bound_names(fn: ast.FunctionDef, seeds: dict[str, _Origin]
                 ) -> tuple[dict[str, _Origin], dict[str, _Origin]]:
    """Names holding the connection, and names holding a cursor made from it, in ``fn``
    (aliases followed to a fixed point; rebinding to something else is not tracked —
    a name once bound to the connection counts as the connection everywhere in ``fn``)."""
    conns = dict(seeds)
    cursors: dict[str, _Origin] = {}
    changed = True
    while changed:
        changed = False
        for node in ast.walk(fn):
            pairs: list[tuple[ast.expr, ast.expr]] = []
            if isinstance(node, ast.Assign):
                pairs = [(t, node.value) for t in node.targets]
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                pairs = [(node.target, node.value)]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                pairs = [(i.optional_vars, i.context_expr) for i in node.items
                         if i.optional_vars is not None]
            for target, value in pairs:
                if not isinstance(target, ast.Name) or target.id in conns \
                        or target.id in cursors:
                    continue
                if _is_conn(value, conns):
                    conns[target.id] = _Origin(target.id, f"bound to the connection at line "
                                               f"{target.lineno}")
                    changed = True
                elif (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                      and value.func.attr in ("cursor", "execute", "executemany")
                      and _is_conn(value.func.value, conns)):
                    cursors[target.id] = _Origin(target.id, f"a cursor of the connection (line "
                                                 f"{target.lineno})")
                    changed = True
    return conns, cursors


def _is_conn(expr: ast.expr, conns: dict[str, _Origin]) -> bool:
    """``expr`` is the connection: a name holding it, or ``<anything>.connection``
    (a cursor's connection attribute)."""
    if isinstance(expr, ast.Name):
        return expr.id in conns
    return isinstance(expr, ast.Attribute) and expr.attr == "connection"


def _describe(expr: ast.expr, conns: dict[str, _Origin]) -> str:
    if isinstance(expr, ast.Name) and expr.id in conns:
        o = conns[expr.id]
        return f"`{o.name}` is the reconciler's connection ({o.why})"
    return f"`{ast.unparse(expr)}` is the reconciler's connection (a cursor's .connection)"


def _uses(path: Path, fn: ast.FunctionDef, seeds: dict[str, _Origin]) -> list[Problem]:
    conns, cursors = _bound_names(fn, seeds)
    out: list[Problem] = []

    def add(node: ast.AST, what: str, why: str, whose: str) -> None:
        out.append(Problem(str(path), getattr(node, "lineno", None),
                           getattr(node, "col_offset", -1) + 1,
                           f"`{what}` {why}: {whose}", _CONN_HINT))

    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, target = node.func.attr, node.func.value
            if method in _CONN_METHODS and _is_conn(target, conns):
                add(node, f"{ast.unparse(node.func)}()", _CONN_METHODS[method],
                    _describe(target, conns))
            elif method == "executescript" and (
                    (isinstance(target, ast.Name) and target.id in cursors)
                    or (isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute)
                        and target.func.attr == "cursor" and _is_conn(target.func.value,
                                                                       conns))):
                whose = (f"`{target.id}` is {cursors[target.id].why}"
                         if isinstance(target, ast.Name) else "the cursor is the connection's")
                add(node, f"{ast.unparse(node.func)}()", _CONN_METHODS[method], whose)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if _is_conn(item.context_expr, conns):
                    add(node, f"with {ast.unparse(item.context_expr)}:",
                        "commits the reconciler's transaction when the block ends",
                        _describe(item.context_expr, conns))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if (isinstance(t, ast.Attribute) and t.attr in _CONN_ATTRIBUTES
                        and _is_conn(t.value, conns)):
                    add(t, f"{ast.unparse(t)} = …", "changes how the reconciler's "
                        "connection handles its open transaction", _describe(t.value, conns))
    return out


def foreign_calls(tree: ast.Module) -> set[ast.Call]:
    """Method calls whose receiver is a local name bound only to something other than
    the reconciler's connection or a cursor of it (``scratch = sqlite3.connect(…)``,
    ``f = open(…)``): SQL they run does not reach the tenant's transaction. Any other
    receiver (the connection, its cursors, names not bound in the function) is not in
    the set, so its SQL is checked."""
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    holding = _holding(functions)
    out: set[ast.Call] = set()
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        conns, cursors = _bound_names(fn, holding.get(fn.name, {}))
        bound = {t.id for node in ast.walk(fn) for t in _targets(node)
                 if isinstance(t, ast.Name)}
        others = bound - set(conns) - set(cursors) - set(_params(fn))
        out.update(node for node in ast.walk(fn)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and isinstance(node.func.value, ast.Name) and node.func.value.id in others)
    return out


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AnnAssign, ast.NamedExpr, ast.For)):
        return [node.target]
    if isinstance(node, (ast.With, ast.AsyncWith)):
        return [i.optional_vars for i in node.items if i.optional_vars is not None]
    return []


# --------------------------------------------------------------------------- exits


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → the dotted name it was imported as, from every import in the file
    (``import os as o`` → ``o: os``; ``from sys import exit as leave`` → ``leave:
    sys.exit``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _defined(tree: ast.Module) -> set[str]:
    """Names the file defines itself (a local ``exit`` is not the builtin)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


def _dotted(expr: ast.expr, aliases: dict[str, str], defined: set[str]) -> str | None:
    """The imported dotted name ``expr`` refers to, or None when it is not one."""
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    if expr.id in aliases:
        base = aliases[expr.id]
    elif expr.id in defined:
        return None
    else:
        base = expr.id  # a builtin (exit, quit, SystemExit)
    return ".".join([base, *reversed(parts)])


def _exit_problems(path: Path, tree: ast.Module) -> list[Problem]:
    aliases, defined = _aliases(tree), _defined(tree)
    defined -= set(aliases)
    out: list[Problem] = []

    def add(node: ast.AST, what: str, why: str) -> None:
        out.append(Problem(str(path), getattr(node, "lineno", None),
                           getattr(node, "col_offset", -1) + 1,
                           f"`{what}` {why}; a migration must never end the reconciler",
                           _EXIT_HINT))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases, defined)
            if name in _EXIT_CALLS:
                add(node, f"{ast.unparse(node)}", _EXIT_CALLS[name])
            elif name in ("os.kill", "posix.kill") and node.args and _own_pid(
                    node.args[0], aliases, defined):
                add(node, f"{ast.unparse(node)}", "signals the reconciler's own process")
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = _dotted(exc, aliases, defined)
            if name in _EXIT_EXCEPTIONS:
                add(node, f"raise {ast.unparse(node.exc)}",
                    f"raises {name.rsplit('.', 1)[-1]}, which is not an error but a request "
                    "to end the process")
    return out


def _own_pid(arg: ast.expr, aliases: dict[str, str], defined: set[str]) -> bool:
    """``os.getpid()``, or 0 (the caller's process group)."""
    if isinstance(arg, ast.Constant) and arg.value == 0:
        return True
    return isinstance(arg, ast.Call) and _dotted(arg.func, aliases, defined) in _SELF_PIDS
