"""The import graph of ``pairq/`` (built with ``ast``): library packages never import
the command line or the test fixtures, and the broker's and client's modules import
no cycle, counting imports under ``if TYPE_CHECKING:`` too (a type-only import of a
module that imports you back is a back-pointer in disguise)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "pairq"
LIBRARIES = ("broker", "lookup", "gossip", "client")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(
    path: Path, modules: set[str] | None = None, *, type_checking: bool = False
) -> set[str]:
    """What ``path`` imports when it runs (with ``type_checking``, also what it imports
    for the type checker only). ``from pkg import mod`` counts as an import of
    ``pkg.mod`` (when ``modules`` lists it), not of the package."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )

    def visit(node: ast.AST, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            tc = in_type_checking
            if (
                isinstance(child, ast.If)
                and isinstance(child.test, ast.Name)
                and child.test.id == "TYPE_CHECKING"
                and not type_checking
            ):
                tc = True
            if not tc and isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif not tc and isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, base] if base else up)
                subs = {f"{base}.{a.name}" for a in child.names}
                known = {m for m in subs if modules is not None and m in modules}
                out.update(known)
                if len(known) < len(subs):  # names from the module itself
                    out.add(base)
            visit(child, tc)

    visit(tree, False)
    return {m for m in out if m == "pairq" or m.startswith("pairq.")}


def graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    mods = {module_name(p): p for p in ROOT.rglob("*.py") if "v1" not in p.parts}
    names = set(mods)
    return {
        m: {
            i
            for i in runtime_imports(p, names, type_checking=type_checking)
            if i in mods and i != m
        }
        for m, p in mods.items()
    }


def test_libraries_never_import_the_command_line_or_the_fixtures() -> None:
    bad = []
    for mod, deps in graph().items():
        if mod.split(".")[1:2] and mod.split(".")[1] in LIBRARIES and not mod.endswith(".cli"):
            bad += [
                f"{mod} -> {d}"
                for d in deps
                if d in ("pairq.cli", "pairq.testing")
                or d.startswith("pairq.cli.")
                or d.endswith(".cli")
            ]
    assert not bad, "library code imports a CLI module or pairq.testing:\n" + "\n".join(sorted(bad))


def test_only_the_entry_points_import_the_command_line() -> None:
    # Shared modules that libraries use (pairq.options, pairq.errors, ...) count as
    # library code too: nothing outside pairq/cli/ and ``python -m pairq`` imports it.
    bad = [
        f"{mod} -> {d}"
        for mod, deps in graph().items()
        if mod != "pairq.__main__" and mod != "pairq.cli" and not mod.startswith("pairq.cli.")
        for d in deps
        if d == "pairq.cli" or d.startswith("pairq.cli.")
    ]
    assert not bad, "only pairq/cli/ and pairq/__main__.py import the CLI:\n" + "\n".join(bad)
    assert "pairq.cli" in graph()["pairq.__main__"]  # the check sees the one that does


def test_the_graph_sees_real_imports() -> None:
    g = graph()  # a sanity check of the parser, so the test above cannot pass vacuously
    assert "pairq.broker.store" in g["pairq.broker.topic"]
    assert "pairq.broker.pair.core" in g["pairq.broker.pair.state"] or any(
        "pairq.broker.pair.core" in deps for deps in g.values()
    )


def find_cycles(g: dict[str, set[str]], prefix: str) -> list[list[str]]:
    out: list[list[str]] = []
    state: dict[str, int] = {}

    def dfs(n: str, stack: list[str]) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(g[n]):
            if not d.startswith(prefix):
                continue
            if state.get(d) == 1:
                out.append([*stack[stack.index(d) :], d])
            elif d not in state:
                dfs(d, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(m for m in g if m.startswith(prefix)):
        if n not in state:
            dfs(n, [])
    return out


def test_no_import_cycle_among_the_broker_modules_even_type_only() -> None:
    cycles = find_cycles(graph(type_checking=True), "pairq.broker.")
    assert not cycles, "import cycles among pairq.broker.*: " + "; ".join(
        " -> ".join(c) for c in cycles
    )


def test_type_only_imports_are_counted() -> None:
    # channel.py imports the subscriber for its annotations only.
    assert "pairq.broker.subscriber" not in graph()["pairq.broker.channel"]
    assert "pairq.broker.subscriber" in graph(type_checking=True)["pairq.broker.channel"]


def test_no_runtime_import_cycle_among_the_broker_or_the_client_modules() -> None:
    g = graph()
    for prefix in ("pairq.broker.", "pairq.client."):
        cycles = find_cycles(g, prefix)
        assert not cycles, f"import cycles among {prefix}*: " + "; ".join(
            " -> ".join(c) for c in cycles
        )


def test_no_import_cycle_among_the_client_modules_counting_type_only_imports() -> None:
    g = graph(type_checking=True)
    cycles = find_cycles(g, "pairq.client.")
    assert not cycles, "import cycles among pairq.client.* (type-only imports counted): " + (
        "; ".join(" -> ".join(c) for c in cycles)
    )


def test_type_only_imports_are_seen_when_asked_for() -> None:
    # message.py names the core's Outbox only for the type checker.
    src = ROOT / "client" / "message.py"
    names = set(graph())
    assert "pairq.client.consumer_core" in runtime_imports(src, names)
    tc = runtime_imports(ROOT / "broker" / "channel.py", names, type_checking=True)
    assert tc >= runtime_imports(ROOT / "broker" / "channel.py", names)
    ast_tc = [
        f
        for f in ROOT.rglob("*.py")
        if runtime_imports(f, names, type_checking=True) != runtime_imports(f, names)
    ]
    assert ast_tc, "no module has a type-only import: the TYPE_CHECKING branch is untested"


def test_the_cycle_finder_finds_a_cycle() -> None:
    g = {"x.a": {"x.b"}, "x.b": {"x.c"}, "x.c": {"x.a"}, "x.d": set()}
    assert find_cycles(g, "x.") == [["x.a", "x.b", "x.c", "x.a"]]
