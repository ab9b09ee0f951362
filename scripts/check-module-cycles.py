#!/usr/bin/env python3
"""Fail if the modules of a Rust crate import each other in a cycle.

    scripts/check-module-cycles.py host/src            check (exit 1 on a cycle)
    scripts/check-module-cycles.py host/src --graph    also print every module's imports

Every `.rs` file under the folder is a module (`server/connection.rs` is
`server::connection`, `server/mod.rs` is `server`, `lib.rs` the crate root; `main.rs`, a
binary, is left out). A module depends on another when its code names a path into it:
`crate::a::b::Item` (or `super::…`, resolved from the module) depends on the longest prefix
that is a module, `a::b`. Comments are ignored, test code is not. A path through a re-export
(`crate::Item` where the crate root re-exports it) depends on the module that re-exports,
so code inside the crate must name the module that defines what it uses — which is also what
keeps the graph honest.
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
# `use crate::a::{b, c::D}`: each item of a group is a path of its own.
GROUP = re.compile(r"\b(crate|super|self)((?:::\w+)*)::\{([^{}]*)\}")


def module_name(root: Path, file: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return "::".join(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def resolve(module: str, is_folder_module: bool, head: str, rest: list[str], modules: set[str]):
    if head == "crate":
        base: list[str] = []
    else:
        base = module.split("::") if module else []
        # `super` from `a/b.rs` is `a`; from `a/mod.rs` (module `a`) it is the crate root.
        if head == "super":
            base = base[:-1]
        # `self` is the module itself.
    # A `super::super::…` chain.
    while rest and rest[0] == "super":
        base = base[:-1]
        rest = rest[1:]
    path = base + rest
    for end in range(len(path), -1, -1):
        candidate = "::".join(path[:end])
        if candidate in modules:
            return candidate
    return None


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    root = Path(sys.argv[1])
    files = {module_name(root, f): f for f in root.rglob("*.rs") if f.name != "main.rs"}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, file in files.items():
        folder = file.name == "mod.rs"
        code = strip_comments(file.read_text())
        paths = [(head, tail.strip(":").split("::")) for head, tail in PATH.findall(code)]
        for head, prefix, items in GROUP.findall(code):
            base = [part for part in prefix.split("::") if part]
            for item in items.split(","):
                item = item.strip().split(" as ")[0]
                if item and item != "self":
                    paths.append((head, base + item.split("::")))
        for head, parts in paths:
            target = resolve(module, folder, head, parts, modules)
            if target is not None and target != module:
                # A parent's `mod child;` is not an import; only named paths are.
                graph[module].add(target)
    if "--graph" in sys.argv:
        for module in sorted(graph):
            print(f"{module or '(root)'} -> {', '.join(sorted(graph[module])) or '-'}")

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    if cycles:
        for cycle in cycles:
            print("import cycle: " + " -> ".join(m or "(root)" for m in cycle), file=sys.stderr)
        return 1
    print(f"check-module-cycles: {len(modules)} modules of {root}, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
