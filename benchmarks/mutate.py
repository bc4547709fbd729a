"""Mutation testing of the judging modules (``make mutate``; docs/testing.md, "Mutation testing").

Runs mutmut (configured in pyproject.toml, ``[tool.mutmut]``: which modules, which tests) from a clean
``mutants/`` folder, then prints the survivors per module and one last line
``mutation score: K/N killed (P %)`` (a mutant that times out counts as killed: the tests noticed it).

Usage: ``python benchmarks/mutate.py [--max-children 2] [--keep] [MUTANT_NAME_GLOB ...]``
(``--keep`` reuses the results of an earlier run for the functions that did not change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
BIN = Path(sys.executable).parent


def score(stats: dict[str, int]) -> tuple[int, int]:
    """(killed, total): timeouts count as killed, skipped mutants are not counted.

    Example:
        >>> score({"killed": 90, "timeout": 2, "survived": 8, "total": 101, "skipped": 1})
        (92, 100)
    """
    return stats["killed"] + stats.get("timeout", 0), stats["total"] - stats.get("skipped", 0)


def survivors() -> list[str]:
    """Names of the mutants that no test killed (``mutmut results``)."""
    out = subprocess.run([BIN / "mutmut", "results"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line.split(":")[0].strip() for line in out.splitlines() if line.strip().endswith(("survived", "no tests"))]


def module_of(name: str) -> str:
    """The module of a mutant's name.

    Example:
        >>> module_of("lightning_normwatch.judge.windows.xǁWindowsǁdescribe__mutmut_1")
        'windows'
    """
    return name.split(".")[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep mutants/ (reuse results of unchanged functions)")
    parser.add_argument("names", nargs="*", help="mutant name globs (default: all)")
    args = parser.parse_args()
    if not args.keep:
        shutil.rmtree(MUTANTS, ignore_errors=True)
    start = time.perf_counter()
    cmd = [str(BIN / "mutmut"), "run", "--max-children", str(args.max_children), *args.names]
    run = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])
        return run.returncode
    subprocess.run([BIN / "mutmut", "export-cicd-stats"], cwd=ROOT, capture_output=True, check=True)
    stats = json.loads((MUTANTS / "mutmut-cicd-stats.json").read_text())
    left = survivors()
    for name in left:
        print(f"survived: {name}")
    print("not killed per module:", ", ".join(f"{m} {n}" for m, n in sorted(Counter(map(module_of, left)).items())))
    killed, total = score(stats)
    print(
        f"{stats['total']} mutants in {seconds:.0f} s ({seconds / max(stats['total'], 1):.2f} s each), "
        f"{args.max_children} at once; {stats}"
    )
    print(f"mutation score: {killed}/{total} killed ({100 * killed / max(total, 1):.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
