#!/usr/bin/env python3
"""Shape figures of drover's source, for the closing notes of refactors: the largest files, the
longest functions, `unsafe` blocks, and import cycles between modules. Text-based and approximate
(it reads braces, not a syntax tree), but the same rules before and after a change.

    python3 bench/shape.py [src]
"""
import os
import re
import sys


def rust_files(root):
    for d, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(d, f)


def module_of(path, root):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts) or "crate"


def functions(lines):
    """(name, length) of every fn with a body, by brace depth from its opening line."""
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)", lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            code = re.sub(r"'(\\.|[^'\\])'", "''", code)
            depth += code.count("{") - code.count("}")
            if "{" in code:
                started = True
            if started and depth <= 0:
                break
            if not started and code.rstrip().endswith(";"):
                break
            j += 1
        if started:
            out.append((m.group(6), j - i + 1))
        i += 1
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    files, funcs, uses, mods = [], [], {}, set()
    unsafe_blocks = 0
    for p in rust_files(root):
        text = open(p).read()
        lines = text.splitlines()
        files.append((len(lines), p))
        in_tests = False
        body = []
        for l in lines:
            if l.startswith("#[cfg(test)]"):
                in_tests = True
            if not in_tests:
                body.append(l)
        unsafe_blocks += sum(len(re.findall(r"\bunsafe\s*\{", l)) for l in body if not l.strip().startswith("//"))
        for name, n in functions(body):
            funcs.append((n, f"{p}::{name}"))
        mod = module_of(p, root)
        mods.add(mod)
        refs = set(m.group(1) for m in re.finditer(r"crate::((?:\w+::)*\w+)", "\n".join(body)))
        for m in re.finditer(r"use crate::(\w+(?:::\w+)*)::\{([^}]*)\}", "\n".join(body)):
            for part in m.group(2).split(","):
                part = part.strip()
                if part and part != "self":
                    refs.add(m.group(1) + "::" + part)
        for m in re.finditer(r"use super::(\w+)", "\n".join(body)):
            parent = mod.rsplit("::", 1)[0] if "::" in mod else ""
            refs.add((parent + "::" if parent else "") + m.group(1))
        uses[mod] = refs
    files.sort(reverse=True)
    funcs.sort(reverse=True)
    print(f"files: {len(files)}; largest:")
    for n, p in files[:5]:
        print(f"  {n:5} {p}")
    print("longest functions (lines):")
    for n, f in funcs[:5]:
        print(f"  {n:5} {f}")
    over = [f for n, f in funcs if n > 80]
    print(f"functions over 80 lines: {len(over)}")
    print(f"files over 600 lines: {sum(1 for n, _ in files if n > 600)}")
    print(f"unsafe blocks (outside tests): {unsafe_blocks}")
    # resolve each reference to the longest module it names, then look for cycles between file
    # modules (a child using its own parent module's items is not counted as a cycle)
    def target(ref):
        parts = ref.split("::")
        for i in range(len(parts), 0, -1):
            cand = "::".join(parts[:i])
            if cand in mods:
                return cand
        return None

    graph = {}
    for m, refs in uses.items():
        graph[m] = set(t for t in (target(r) for r in refs) if t and t != m and not m.startswith(t + "::") and not t.startswith(m + "::"))
    uses = graph
    cycles = set()

    def dfs(start, node, path, seen):
        for d in sorted(uses.get(node, ())):
            if d == start and len(path) > 1:
                k = path[:]
                i = k.index(min(k))
                cycles.add(tuple(k[i:] + k[:i]))
            elif d not in seen and d in uses and len(path) < 6:
                dfs(start, d, path + [d], seen | {d})

    for m in sorted(uses):
        dfs(m, m, [m], {m})
    print(f"import cycles between modules: {len(cycles)}")
    for c in sorted(cycles, key=len)[:10]:
        print("  " + " -> ".join(c + (c[0],)))


if __name__ == "__main__":
    main()
