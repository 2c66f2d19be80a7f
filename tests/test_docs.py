"""The README and docs/ hold: their links resolve and the files their commands name exist.

Cheap on purpose (no JAX, no training): it reads Markdown and looks at the file system.
Checked: every relative link or image in README.md and docs/*.md points at a file of the repo,
and its #anchor (if any) at a heading of that file; every `configs/X.py`, `sweeps/X.yaml` and
code file the text names exists, and so does the script or module of every `python ...`
command. Links to code files are not used in the docs (code paths are written in backticks),
so a link here is always to a Markdown page or an image.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _text(page):
  return page.read_text(encoding="utf-8")


def _prose(page):
  """The page without its fenced code blocks (links are not links there)."""
  lines, in_code = [], False
  for line in _text(page).splitlines():
    if FENCE.match(line.strip()):
      in_code = not in_code
      continue
    if not in_code:
      lines.append(line)
  return "\n".join(lines)


def _slug(heading):
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  heading = re.sub(r"`", "", heading.strip().lower())
  heading = re.sub(r"[^\w\- ]", "", heading)
  return heading.replace(" ", "-")


def _anchors(page):
  seen, anchors = {}, set()
  for line in _prose(page).splitlines():
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
      slug = _slug(m.group(1))
      n = seen.get(slug, 0)
      seen[slug] = n + 1
      anchors.add(slug if n == 0 else f"{slug}-{n}")
  return anchors


def _links():
  for page in PAGES:
    for target in LINK.findall(_prose(page)):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        continue
      yield pytest.param(page, target, id=f"{page.relative_to(ROOT)}->{target}")


def test_there_are_docs_pages_and_links():
  assert len(PAGES) > 1
  assert len(list(_links())) > 10


@pytest.mark.parametrize(("page", "target"), list(_links()))
def test_every_relative_link_resolves(page, target):
  path, _, anchor = target.partition("#")
  resolved = (page.parent / path).resolve() if path else page
  assert resolved.is_file(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
  assert ROOT in resolved.parents, f"{page.relative_to(ROOT)} links outside the repo: {target}"
  if anchor:
    assert resolved.suffix == ".md", f"{target}: an anchor into a file that is not Markdown"
    assert anchor in _anchors(resolved), (
      f"{page.relative_to(ROOT)} links to #{anchor} in {resolved.relative_to(ROOT)}, which has no such heading; "
      f"it has: {sorted(_anchors(resolved))}"
    )


def _named(pattern):
  names = set()
  for page in PAGES:
    names |= {(page, m) for m in re.findall(pattern, _text(page))}
  return sorted(names)


def test_every_sweep_file_is_documented():
  documented = {path for _, path in _named(r"sweeps/\w+\.yaml")}
  for sweep in sorted((ROOT / "sweeps").glob("*.yaml")):
    assert f"sweeps/{sweep.name}" in documented, f"sweeps/{sweep.name} is in no page of the docs"


# configs/X.py, sweeps/X.yaml and the code files: the repo's paths that the docs name.
NAMED_FILE = r"(?<![\w/.])((?:configs|sweeps|depthlab|nets|benchmarks|tests)/\w+\.(?:py|yaml|sh|txt))"


@pytest.mark.parametrize(
  ("page", "path"),
  [pytest.param(page, path, id=f"{page.relative_to(ROOT)}:{path}") for page, path in _named(NAMED_FILE)],
)
def test_every_named_config_sweep_and_code_file_exists(page, path):
  assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} names {path}, which does not exist"


@pytest.mark.parametrize(
  ("page", "command"),
  [
    pytest.param(page, command, id=f"{page.relative_to(ROOT)}:{command}")
    for page, command in _named(r"python (?:-m [\w.]+|[\w/]+\.py)")
  ],
)
def test_every_python_command_names_a_file_of_the_repo(page, command):
  """`python train.py`, `python sweeps/run.py`, `python -m benchmarks.bench`: the script or module is
  here (`python -m pytest` and `python -m pip` are the tools', not ours)."""
  target = command.split()[-1]
  if command.startswith("python -m "):
    if target.split(".")[0] in ("pytest", "pip", "venv"):
      return
    module = ROOT / target.replace(".", "/")
    assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file(), (
      f"{page.relative_to(ROOT)}: {command}: no module {target} in the repo"
    )
  else:
    assert (ROOT / target).is_file(), f"{page.relative_to(ROOT)}: {command}: no {target} in the repo"


# A test the docs cite as the one that holds a claim: `test_checkpoints.py::test_...` (or `::test_...`
# after such a name, for another test of the same file).
CITED_TESTS = r"(test_\w+\.py)::(test_\w+)|, `::(test_\w+)"


def _cited_tests():
  cited = []
  for page in PAGES:
    file = None
    for match in re.finditer(CITED_TESTS, _text(page)):
      file = match.group(1) or file
      cited.append((page, file, match.group(2) or match.group(3)))
  return cited


@pytest.mark.parametrize(
  ("page", "file", "name"),
  [pytest.param(p, f, n, id=f"{p.relative_to(ROOT)}:{f}::{n}") for p, f, n in _cited_tests()],
)
def test_every_test_the_docs_cite_exists(page, file, name):
  path = ROOT / "tests" / file
  assert path.is_file() and re.search(rf"^def {name}\(", path.read_text(), re.M), (
    f"{page.relative_to(ROOT)} cites tests/{file}::{name}, which does not exist"
  )
