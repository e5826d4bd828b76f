"""The package's layout rules (docs/architecture.md): checked on the source.

No import cycle between ``potts_jax`` modules (imports inside functions
included), no module over 400 lines, a small top level, the solver a
package, no reference to documents outside the repository or to issue
numbers, and a README that is a landing page.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "potts_jax"
MAX_LINES = 400
MAX_TOP_MODULES = 16
MAX_README_LINES = 250


def _modules() -> dict[str, pathlib.Path]:
  """Dotted name -> path of every module of the package."""
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    found[".".join(parts)] = path
  return found


def _imports(path: pathlib.Path, name: str, modules) -> set[str]:
  """The package modules ``path`` imports, at any depth of its code."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  deps = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import name`: the submodule if `name` is one, else `pkg`.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    else:
      continue
    deps.update(t for t in targets if t in modules and t != name)
  return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return found


def test_cycle_finder_finds_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(path, name, modules)
           for name, path in modules.items()}
  assert _cycles(graph) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_length(name):
  lines = len(_modules()[name].read_text().splitlines())
  assert lines <= MAX_LINES, f"{name}: {lines} lines > {MAX_LINES}"


def test_top_level_is_small_and_the_solver_is_a_package():
  top = [p for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
  assert len(top) <= MAX_TOP_MODULES, sorted(p.name for p in top)
  assert (PACKAGE / "solver" / "__init__.py").is_file()
  assert (PACKAGE / "solver" / "reference.py").is_file()


def test_no_references_outside_the_repository():
  pattern = re.compile(r"ARCHITECTURE|\b[Ii]ssues? #?\d+")
  offenders = []
  for path in sorted(PACKAGE.rglob("*")):
    if path.is_file() and path.suffix in (".py", ".cc", ".md", ".js", ".html"):
      for number, line in enumerate(path.read_text().splitlines(), 1):
        if pattern.search(line):
          offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


def test_readme_is_a_landing_page():
  lines = len((ROOT / "README.md").read_text().splitlines())
  assert lines <= MAX_README_LINES, f"README.md: {lines} lines"


def test_architecture_lists_every_module():
  text = (ROOT / "docs" / "architecture.md").read_text()
  missing = [str(p.relative_to(ROOT)) for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "__init__.py" and f" {p.name} " not in text
             and f" {p.name}\n" not in text]
  assert not missing, f"docs/architecture.md does not list {missing}"
