"""depthlab/__init__.py: the table of which module may import which holds for the code, and
reading runs (`eval.py compare`) loads neither orbax nor the training loop."""

import ast
import os
import re
import subprocess
import sys

import depthlab
from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "depthlab")


def imports_of(module: str) -> set[str]:
  """The depthlab modules `module` imports when it is loaded (not those imported for type checking only)."""
  tree = ast.parse(open(os.path.join(PACKAGE, f"{module}.py")).read())
  found = set()
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module == "depthlab":
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("depthlab."):
      found.add(node.module.split(".")[1])
  return found


def levels_in_docstring() -> dict[str, int]:
  levels, level = {}, 0
  for line in depthlab.__doc__.splitlines():
    match = re.match(r"  (\d)  (.*?)(?:\s{3,}.*)?$", line) or re.match(r"     (\S.*?)(?:\s{3,}.*)?$", line)
    if match and len(match.groups()) == 2:
      level = int(match.group(1))
    if match:
      levels.update({name.strip(): level for name in match.groups()[-1].split(",") if name.strip()})
  return levels


def test_the_package_docstring_gives_every_module_a_level():
  modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"}
  assert set(levels_in_docstring()) == modules


def test_each_module_imports_only_modules_of_a_lower_level_so_no_chain_is_longer_than_5():
  levels = levels_in_docstring()
  wrong = {
    f"{module} ({level}) imports {other} ({levels[other]})"
    for module, level in levels.items()
    for other in imports_of(module)
    if levels[other] >= level
  }
  assert not wrong
  assert max(levels.values()) <= 5


def test_eval_py_compare_loads_neither_orbax_nor_the_training_loop(tmp_path):
  result = subprocess.run(
    [sys.executable, "-X", "importtime", "eval.py", "compare", "results/warmup_linear", f"--out={tmp_path / 'fig'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
  assert "depthlab.figures" in loaded  # what compare does load
  assert not {m for m in loaded if m.startswith("orbax") or m in ("depthlab.loop", "depthlab.trainer")}
