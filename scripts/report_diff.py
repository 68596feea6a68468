"""Before/after check of a behaviour-preserving change (a refactoring).

Runs the same demo benchmark runs (effectiveness, gap, robustness, fuzz with a fixed seed,
baseline gating, the ``unsafebench`` console script) on two source trees with the repository's
``.venv`` python, normalises what legitimately changes from run to run (timing, the temporary
folder) and diffs every output: JSON reports, prediction exports, HTML, Markdown, fuzz
artifacts, terminal output and exit codes. Exit 0 when all are identical, 1 otherwise.

    python scripts/report_diff.py --before 28c9316 [--after worktree|REV] [--keep DIR]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
DIFF_LINES = 60  # per output: enough to locate a change, short enough to read all outputs

# Only timing differs between two runs of the same code; everything else must match as is.
JSON_DROPPED_KEYS = ("timing",)  # top level: <step>_seconds, wall_seconds, finished_at
# Terminal output. A long step's line ("unsafebench: training ...: 378 steps in 18.0 s") is
# written only when the step took at least a second, so such lines come and go with the load;
# they interrupt pytest's progress dots, which are joined again. pytest pads its "=== 92 passed
# in 1.90s ===" lines to the width, so the padding follows the duration's digits.
STEP_LINE = re.compile(r"^unsafebench: .* in \d+(?:\.\d+)? (?:s|min \d\d s|h \d\d min)\b.*\n", re.M)
PROGRESS = re.compile(r"\s*\[\s*\d+%\]$")  # "test_gap.py ....   [100%]"
DOTS = re.compile(r"^[.sFExX]+$")  # the rest of a progress line after an interruption
FILE_DOTS = re.compile(r"^\S+\.py ?[.sFExX]*$")  # the start of one
DURATION = re.compile(r"\bin \d+(?:\.\d+)?s\b(?: \(\d+:\d\d:\d\d\))?")  # "in 65.12s (0:01:05)"
PADDED = re.compile(r"^([=_-])\1+ (.*) \1+$")
HTML_TIMING = re.compile(r"(<td>(?:\w+_seconds|finished_at)</td><td>)[^<]*")

# The robustness run's settings: one seed, small pools, a few conditions (about 30 s).
PYPROJECT = """\
[tool.unsafebench.robustness]
pool_size = 24
seeds = [2023]
attacks = ["gaussian", "fgsm", "pgd"]
evasions = ["text_overlay"]
corruptions = ["gaussian_noise", "jpeg_compression"]
"""

# Runs the entry point inside the venv, then checks that every module of the package that the
# run loaded (plugin, suites, classifiers) came from the tree. Importing the plugin before pytest
# does would change the run (pytest could no longer rewrite its asserts, and warns).
DRIVER = """\
import sys
from importlib import import_module
from importlib.metadata import entry_points

tree, plugin_ep, prog, entry, *args = sys.argv[1:]
installed = {ep.value for ep in entry_points(group="pytest11") if ep.name == "unsafebench"}
if installed != {plugin_ep}:
    sys.exit(f"report_diff: the venv's pytest11 entry point is {installed}, the tree's {plugin_ep}")
module, _, attr = entry.partition(":")
sys.argv = [prog, *args]
code = getattr(import_module(module), attr)()
loaded = {n: getattr(m, "__file__", None) or "" for n, m in sys.modules.items()
          if n.split(".")[0] == "pytest_unsafebench"}
if "pytest_unsafebench.plugin" not in loaded and prog == "pytest":
    sys.exit("report_diff: the run did not load pytest_unsafebench.plugin")
for name, path in sorted(loaded.items()):
    if not path.startswith(tree + "/"):
        sys.exit(f"report_diff: {name} was imported from {path}, not from {tree}")
sys.exit(code)
"""


@dataclass(frozen=True)
class Run:
    """One command of the comparison: its name names its terminal output and exit code."""

    name: str
    tool: str  # "pytest" or "unsafebench"
    args: tuple[str, ...]


DEMO = ("-p", "no:randomly", "-p", "no:cacheprovider", "--unsafebench-classifier=demo",
        "--unsafebench-split=test")
RUNS = (
    Run("effectiveness", "pytest", (*DEMO, "--unsafebench-json=effectiveness.json",
        "--unsafebench-html=effectiveness.html", "--unsafebench-markdown=effectiveness.md",
        "--unsafebench-predictions=effectiveness.jsonl",
        "--unsafebench-save-baseline=baseline.json")),
    Run("gap", "pytest", (*DEMO, "--unsafebench-suites=gap", "--unsafebench-json=gap.json",
        "--unsafebench-markdown=gap.md")),
    Run("robustness", "pytest", (*DEMO, "--unsafebench-suites=robustness",
        "--unsafebench-json=robustness.json", "--unsafebench-html=robustness.html",
        "--unsafebench-markdown=robustness.md")),
    # The ci profile is derandomized: the same examples on every run, no example database.
    Run("fuzz", "pytest", (*DEMO, "--unsafebench-suites=fuzz", "--hypothesis-profile=ci",
        "--hypothesis-seed=0", "--unsafebench-json=fuzz.json", "--unsafebench-html=fuzz.html")),
    Run("gate_pass", "pytest", (*DEMO, "--unsafebench-baseline=baseline.json",
        "--unsafebench-json=gate_pass.json", "--unsafebench-markdown=gate_pass.md")),
    Run("gate_fail", "pytest", (*DEMO, "--unsafebench-baseline=baseline_raised.json",
        "--unsafebench-json=gate_fail.json", "--unsafebench-markdown=gate_fail.md")),
    Run("cli_show", "unsafebench", ("show", "effectiveness.json")),
    Run("cli_report", "unsafebench", ("report", "fuzz.json", "--html", "cli_report.html",
        "--markdown", "cli_report.md")),
    Run("cli_compare_pass", "unsafebench", ("compare", "baseline.json", "gate_pass.json")),
    Run("cli_compare_fail", "unsafebench", ("compare", "baseline_raised.json", "gate_pass.json")),
)


def raise_baseline(run_dir: Path) -> None:
    """baseline_raised.json: the baseline with its lowest F1 0.15 higher, past the hard limit
    (0.10), so that gating this run against it fails. None if no baseline was saved: the gate
    run then fails on the missing file, and the diff shows it."""
    if not (run_dir / "baseline.json").is_file():
        return
    doc = json.loads((run_dir / "baseline.json").read_text())
    row = min((r for r in doc["rows"] if r["metric"] == "f1"), key=lambda r: r["value"])
    row["value"] += 0.15
    (run_dir / "baseline_raised.json").write_text(json.dumps(doc, indent=2))


def checkout(rev: str, dest: Path) -> None:
    """The sources of REV, or of the working tree (tracked and untracked, not ignored)."""
    dest.mkdir(parents=True)
    if rev != "worktree":
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a deleted file is still listed until its deletion is staged
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def link_packages(tree: Path) -> dict[str, Any]:
    """Link each package that pyproject maps from another folder (classifiers/, suites/) to
    where its import name puts it, so that PYTHONPATH=tree imports all of it from the tree."""
    project = tomllib.loads((tree / "pyproject.toml").read_text())
    for name, folder in project["tool"]["setuptools"]["package-dir"].items():
        natural = tree / name.replace(".", "/")
        if Path(folder) != natural.relative_to(tree) and not natural.exists():
            natural.symlink_to(os.path.relpath(tree / folder, natural.parent))
    return project


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "PYTHON", "HYPOTHESIS", "UNSAFEBENCH", "CI"))
           and k not in ("FORCE_COLOR", "GITHUB_ACTIONS")}
    env.update(PYTHONPATH=str(tree), TZ="UTC", COLUMNS="120", PYTHONHASHSEED="0",
               NO_COLOR="1", PY_COLORS="0", HF_HUB_OFFLINE="1", TERM="dumb")
    return env


def run_side(rev: str, side: Path) -> float:
    """Run every command on the sources under SIDE/src; returns the seconds it took."""
    start = time.monotonic()
    tree, run_dir, cache = side / "src", side / "run", side / "cache"
    project = link_packages(tree)
    plugin_ep = project["project"]["entry-points"]["pytest11"]["unsafebench"]
    entries = {"pytest": "pytest:main",
               "unsafebench": project["project"]["scripts"]["unsafebench"]}
    run_dir.mkdir()
    (run_dir / "pyproject.toml").write_text(PYPROJECT)
    env = environment(tree)
    codes = []
    for run in RUNS:
        if run.name == "gate_fail":
            raise_baseline(run_dir)
        args = run.args
        if run.tool == "pytest":
            args = (*args, f"--unsafebench-cache-dir={cache}")
        t0 = time.monotonic()
        with open(run_dir / f"{run.name}.out", "wb") as out:
            proc = subprocess.run([str(PYTHON), "-c", DRIVER, str(tree), plugin_ep, run.tool,
                                   entries[run.tool], *args], cwd=run_dir, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
        if b"report_diff:" in (run_dir / f"{run.name}.out").read_bytes():
            sys.exit(f"{rev}: {run.name} did not run the tree's code; see {run_dir / run.name}.out")
        codes.append(f"{run.name}: exit {proc.returncode}\n")
        print(f"  {rev}: {run.name} exit {proc.returncode} in {time.monotonic() - t0:.0f} s",
              flush=True)
    (run_dir / "exit_codes.txt").write_text("".join(codes))
    return time.monotonic() - start


def outputs(side: Path) -> Iterator[tuple[str, Path]]:
    """Every file the runs wrote (and the fuzz artifacts), by a name shared by both sides."""
    for base, label in ((side / "run", ""), (side / "cache" / "artifacts", "artifacts/")):
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                yield label + rel.as_posix(), path


def normalise(path: Path, side: Path) -> str:
    """The output as text with its run-to-run differences replaced by placeholders."""
    data = path.read_bytes()
    if path.suffix not in (".json", ".jsonl", ".md", ".html", ".out", ".txt", ".toml"):
        return data.hex()
    text = data.decode().replace(str(side), "<SIDE>")
    if path.suffix == ".json":
        doc = json.loads(text)
        if isinstance(doc, dict):
            for key in JSON_DROPPED_KEYS:
                if key in doc:
                    doc[key] = "<dropped>"
        return json.dumps(doc, indent=1)
    if path.suffix == ".html":
        return HTML_TIMING.sub(r"\1<T>", text)
    if path.suffix == ".out":
        return terminal(text)
    return text


def terminal(text: str) -> str:
    lines: list[str] = []
    for line in STEP_LINE.sub("", text).splitlines():
        line = PADDED.sub(r"\1\1 \2 \1\1", DURATION.sub("in <T>s", PROGRESS.sub("", line)))
        if lines and DOTS.match(line) and FILE_DOTS.match(lines[-1]):
            lines[-1] = lines[-1].rstrip() + ("" if lines[-1].endswith(tuple(line)) else " ") + line
        else:
            lines.append(line)
    return "\n".join(lines)


def compare(before: Path, after: Path) -> bool:
    left, right = dict(outputs(before)), dict(outputs(after))
    same = True
    for name in sorted(left.keys() | right.keys()):
        if name not in left or name not in right:
            print(f"DIFFERS    {name}: only {'after' if name in right else 'before'} wrote it")
            same = False
            continue
        a, b = normalise(left[name], before), normalise(right[name], after)
        if a == b:
            print(f"identical  {name}")
            continue
        same = False
        print(f"DIFFERS    {name}")
        diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), f"before/{name}",
                                         f"after/{name}", lineterm="", n=2))
        for line in diff[:DIFF_LINES]:
            print("    " + (line if len(line) <= 200 else line[:200] + " ..."))
        if len(diff) > DIFF_LINES:
            print(f"    ... {len(diff) - DIFF_LINES} more diff lines")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision")
    parser.add_argument("--after", default="worktree", help="git revision or 'worktree'")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    ns = parser.parse_args()
    work = ns.keep or Path(tempfile.mkdtemp(prefix="report_diff-"))
    if ns.keep:
        work.mkdir(parents=True)
    sides = {"before": ns.before, "after": ns.after}
    try:
        for side, rev in sides.items():  # both first: the working tree as it was at the start
            checkout(rev, work / side / "src")
        seconds = {side: run_side(rev, work / side) for side, rev in sides.items()}
        same = compare(work / "before", work / "after")
    finally:
        if not ns.keep:
            shutil.rmtree(work)
    for side, s in seconds.items():
        print(f"{side}: {len(RUNS)} runs in {s:.0f} s")
    print("all outputs identical" if same else "outputs differ (normalised: timing, the folder)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
