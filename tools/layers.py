#!/usr/bin/env python3
"""layers.py — check that the C core's files form layers: no circle of
calls (or includes of internal headers) among src/core/*.c.

For every function defined in a .c file (a line starting a definition at
column 0), it finds which other .c files call it; the files and those
edges form a graph, and any cycle is printed and fails the run. Static
functions are local and ignored; inline functions in headers belong to no
file. Usage: python3 tools/layers.py [--print] [DIR]   (default src/core)."""
import os
import re
import sys

DEF = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b(pp_\w+)\s*\(([^;]*)$")
CALL = re.compile(r"\b(pp_\w+)\s*\(")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def graph(root):
    files = sorted(f for f in os.listdir(root) if f.endswith(".c"))
    src = {f: strip_comments(open(os.path.join(root, f)).read()) for f in files}
    owner = {}
    for f, text in src.items():
        for line in text.splitlines():
            m = DEF.match(line)
            if m:
                owner[m.group(1)] = f
    edges = {f: set() for f in files}
    for f, text in src.items():
        for name in CALL.findall(text):
            g = owner.get(name)
            if g and g != f:
                edges[f].add(g)
    return edges


def cycles(edges):
    out, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                out.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return out


def main(argv):
    show = "--print" in argv
    args = [a for a in argv if a != "--print"]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..",
                                             "src", "core")
    edges = graph(root)
    if show:
        for f in sorted(edges):
            print("%-12s -> %s" % (f, ", ".join(sorted(edges[f])) or "-"))
    found = cycles(edges)
    for c in found:
        print("circle: " + " -> ".join(c))
    if not found:
        print("layers: %d files, no circle" % len(edges))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
