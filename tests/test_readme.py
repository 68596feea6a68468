"""The README's commands, run as printed.

Every command in a ``bash`` block of README.md is either run here, in a copy of the repository,
exactly as printed, or matched by one entry of ``CANNOT_RUN_HERE``, which says why not (the
network, a gated dataset, a cluster, a synopsis with placeholders). A new README command that
is neither fails ``test_every_readme_command_is_run_or_explained``.

The copy's ``.venv`` is a fresh virtual environment that sees this environment's packages
through a ``.pth`` file, so ``bash scripts/setup.sh`` runs for real (pip, the editable install,
its import check) without downloading anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# (pattern found in the command, why it cannot run in this test). First match wins.
CANNOT_RUN_HERE: tuple[tuple[str, str], ...] = (
    ("bash .ci/run", "the whole suite, which this test is part of"),
    ("hf:yiting/UnsafeBench", "the gated hub dataset needs the network and a token"),
    ("data/UnsafeBench", "the real dataset's parquet files are not here"),
    ("ray start", "starts a Ray cluster (the Ray executor has its own tests)"),
    ("--unsafebench-executor=ray", "needs a Ray cluster at HEAD_IP"),
    ("--unsafebench-classifier=mine", "'mine' is the reader's registered classifier"),
    ("pytest_unsafebench.fuzzing pin", "needs a fuzz run's counterexamples (tests/test_fuzz.py)"),
    ("--unsafebench-fuzz-replay", "needs a pinned regressions file (tests/test_fuzz.py)"),
    ("unsafebench show run.json", "synopsis: run.json stands for a saved report"),
    ("unsafebench report run.json", "synopsis: run.json stands for a saved report"),
    ("unsafebench compare", "synopsis with placeholders (tests/test_gating.py runs it)"),
)
# The whole as-printed run: setup, the demo's first (training) run, the recipes. About 5 minutes
# on 2 busy cores.
SLOW_SECONDS = 1500


def bash_commands(text: str) -> list[list[str]]:
    """Each ``bash`` block's commands: comments dropped, ``\\`` continuations joined."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        commands, pending = [], ""
        for raw in body.splitlines():
            line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if not line.strip():
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            commands.append(pending + line.strip())
            pending = ""
        blocks.append(commands)
    return blocks


def why_not(command: str) -> str | None:
    return next((why for pattern, why in CANNOT_RUN_HERE if pattern in command), None)


def blocks_of(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


# ---------------------------------------------------------------------------- fast checks


def test_every_readme_command_is_run_or_explained() -> None:
    blocks = bash_commands(README.read_text())
    commands = [c for block in blocks for c in block]
    assert commands, "no bash blocks found"
    runnable = [c for c in commands if why_not(c) is None]
    # The quick start and the recipes run here; only what needs the outside world does not.
    assert runnable[0].startswith("bash scripts/setup.sh && .venv/bin/pytest ")
    assert "source .venv/bin/activate" in runnable
    unused = [pattern for pattern, _ in CANNOT_RUN_HERE
              if not any(pattern in c for c in commands)]
    assert not unused, f"CANNOT_RUN_HERE entries that match no README command: {unused}"


def test_readme_toml_blocks_parse_and_the_entry_point_is_quoted() -> None:
    docs = [tomllib.loads(body) for body in blocks_of("toml")]
    groups = [d["project"]["entry-points"] for d in docs if "entry-points" in d.get("project", {})]
    assert groups == [{"pytest_unsafebench.classifiers": {"mine": "myclf:load"}}]


def test_setup_script_refuses_a_malformed_extra() -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "dev]; rm -rf x"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "UNSAFEBENCH_VENV": "/nonexistent/never-made"})
    assert result.returncode == 2
    assert "setup: bad extra" in result.stderr
    assert not Path("/nonexistent/never-made").exists()


def test_ci_installs_the_dev_extras_and_the_quick_start_does_not() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/setup\.sh dev\b", ci, re.M)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'extra="${1:-torch}"' in setup  # the README's command 1 gives no argument


# ---------------------------------------------------------------------------- as printed


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository whose .venv sees this environment's packages."""
    copy = tmp_path_factory.mktemp("readme") / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist",
        "*.egg-info", ".mypy_cache"))
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", str(copy / ".venv")], check=True, timeout=300)
    site = Path(subprocess.run(
        [str(copy / ".venv" / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    (site / "unsafebench-readme-test.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip installs pytest's launcher only with pytest itself, which it finds satisfied here.
    launcher = copy / ".venv" / "bin" / "pytest"
    launcher.write_text(f"#!{copy / '.venv' / 'bin' / 'python'}\n"
                        "import sys\nfrom pytest import console_main\n"
                        "sys.exit(console_main())\n")
    launcher.chmod(0o755)
    return copy


def run_script(project: Path, commands: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The commands in one bash session (so ``source`` holds), stopping at the first failure."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("PYTEST_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))
    script = "set -ex\n" + "\n".join(commands) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS, method="thread")
def test_readme_quick_start_and_recipes_run_as_printed(project: Path) -> None:
    blocks = bash_commands(README.read_text())
    ran = []
    for block in blocks:
        commands = [c for c in block if why_not(c) is None]
        if not commands:
            continue
        result = run_script(project, commands, timeout=SLOW_SECONDS / 2)
        assert result.returncode == 0, (commands, result.stdout[-4000:], result.stderr[-4000:])
        ran += commands
    assert any(c.startswith("bash scripts/setup.sh") for c in ran)
    for name in ("report.json", "report.html", "report.md", "baseline.json"):
        assert (project / name).is_file(), name

    # "Add your own classifier": the README's myclf.py, run with the command it gives.
    (project / "myclf.py").write_text(next(b for b in blocks_of("python")
                                            if b.startswith("# myclf.py")))
    command = re.search(r"Run it with `(pytest --unsafebench-classifier=myclf:load)`",
                        README.read_text()).group(1)
    result = run_script(project, ["source .venv/bin/activate", command],
                        timeout=SLOW_SECONDS / 4)
    out = result.stdout + result.stderr
    assert "No module named" not in out and "no module" not in out, out[-3000:]
    assert "classifier myclf:load [mine-v1]" in out, out[-3000:]
    assert result.returncode in (0, 1), out[-3000:]  # its thresholds may fail; it ran

    # "The same objects are available from Python": the API example, in the same folder.
    api = next(body for body in blocks_of("python") if "load_classifier" in body)
    result = subprocess.run([str(project / ".venv" / "bin" / "python"), "-c", api],
                            cwd=project, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
