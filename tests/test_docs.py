"""The README and the docs/ pages: links resolve, the alert table is complete, shown outputs are generated.

The outputs the docs show come from ``docs/generate_outputs.sh`` (``docs/demo_output.txt``,
``docs/report_output.txt``); here every line of a ``console`` excerpt must be a line of those files, and
the files must agree with a fresh run of the demo (the same alerts, the same report headlines).
"""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path

import pytest

from lightning_normwatch.judge.alerts import SEVERITY
from lightning_normwatch.view.report import format_reports, load_reports

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUTPUTS = [ROOT / "docs" / "demo_output.txt", ROOT / "docs" / "report_output.txt"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading.

    >>> slug('Ioffe & Szegedy 2015, Figure 1, and "noisy BN"'), slug("Scalars: `normwatch/<tensor>/<figure>`")
    ('ioffe--szegedy-2015-figure-1-and-noisy-bn', 'scalars-normwatchtensorfigure')
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def console_blocks(page: Path) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```console\n(.*?)```", page.read_text(), flags=re.S)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(file), f"{page.name}: no heading for #{anchor} in {file.name}"


def test_readme_is_a_front_page_linking_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
        first = page.read_text().splitlines()
        assert first[0].startswith("# ") and first[1] == "" and first[2], f"{page.name}: a title, then what it is"


def test_readme_alert_table_lists_every_kind_once() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", readme.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0], re.M)
    assert sorted(rows) == sorted(SEVERITY.items())


def test_console_excerpts_are_lines_of_the_generated_outputs() -> None:
    generated = {line for out in OUTPUTS for line in out.read_text().splitlines()}
    shown = 0
    for page in PAGES:
        for block in console_blocks(page):
            for line in block:
                if line not in ("...", "$ make demo"):
                    assert line in generated, (
                        f"{page.name}: not in docs/*_output.txt (rerun docs/generate_outputs.sh?): {line!r}"
                    )
                    shown += 1
    assert shown > 20


@pytest.fixture(scope="module")
def fresh_demo(tmp_path_factory: pytest.TempPathFactory):
    """The demo's two runs, trained here as examples/quickstart.py trains them (a few seconds)."""
    spec = importlib.util.spec_from_file_location("quickstart_demo", ROOT / "examples" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    logdir = str(tmp_path_factory.mktemp("quickstart"))
    raw = demo.train("raw_features", standardize=False, batchnorm=False, steps=300, logdir=logdir)
    norm = demo.train("standardized_batchnorm", standardize=True, batchnorm=True, steps=300, logdir=logdir)
    return demo, raw, norm, logdir


def test_generated_outputs_match_a_fresh_demo_run(fresh_demo) -> None:
    demo, raw, norm, logdir = fresh_demo
    checked = doctest.testmod(demo)  # the demo's table words (``shape_in_words``)
    assert checked.attempted >= 1 and checked.failed == 0
    demo_output = (ROOT / "docs" / "demo_output.txt").read_text().splitlines()
    for line in demo.verdict(raw, norm).splitlines():  # e.g. "raw features: 2 warning(s): ...; 4 information alert(s)"
        assert line in demo_output
    report_output = (ROOT / "docs" / "report_output.txt").read_text().splitlines()
    headlines = [line for line in format_reports(load_reports(logdir)).splitlines() if line.startswith("run ")]
    assert len(headlines) == 2 and all(line in report_output for line in headlines)
    for watch, line in zip((raw, norm), headlines, strict=True):  # the report counts what the callback raised
        counts = {s: sum(a.severity == s for a in watch.alerts) for s in ("error", "warning", "info")}
        assert f"{len(watch.alerts)} alerts ({counts['error']} error, {counts['warning']} warning, " in line
        assert line.endswith(f"{counts['info']} info)")
