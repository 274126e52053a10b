"""The documentation a new user reads: the README's two commands stay verbatim, every relative link resolves.

    .venv/bin/python -m pytest tests/unit/test_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEMO = "bash scripts/setup.sh && .venv/bin/csr demo"
TESTS = "bash scripts/setup.sh --test && .venv/bin/python -m pytest -q"


def test_the_readme_keeps_its_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{DEMO}\n```" in readme and f"```bash\n{TESTS}\n```" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert TESTS in ci and "\n.venv/bin/ruff check .\n" in ci


def test_the_readme_layout_table_names_every_module_and_package():
    """Every module and package of src/csr_vlm sits in a row of the README's layout table (or in a package it names),
    and every file the table names exists: the table stays the true map of the code."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", table))
    package = ROOT / "src" / "csr_vlm"
    present = {p.name + "/" if p.is_dir() else p.name for p in package.iterdir()
               if (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
               or (p.is_dir() and (p / "__init__.py").is_file())}
    assert present - named == set(), f"not in the README's layout table: {sorted(present - named)}"
    assert all((package / name).exists() for name in named if "/" not in name.rstrip("/")), "a named file is gone"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    text = page.read_text()
    for target, anchor in re.findall(r"\]\((?!https?://)([^)#\s]*)(#[^)\s]*)?\)", text):
        linked = (page.parent / target).resolve() if target else page
        assert linked.exists(), f"{page.name}: link to {target} goes nowhere"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor[1:] in slugs, f"{page.name}: no heading {anchor} in {linked.name}"


def test_the_license_is_the_one_pyproject_declares():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
