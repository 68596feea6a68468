"""An offline run with missing weights fails fast and plainly, and long steps show
progress (live on a terminal, one line each in logs and under -q) with their time in the JSON.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

# Imported before pytester runs (see test_plugin.py: C extensions must not be imported twice;
# the robustness runs import torch for the square attack).
import numpy  # noqa: F401
import pytest

import pytest_unsafebench.session

try:
    import torch  # noqa: F401

    import pytest_unsafebench.classifiers.clip_heads
    import pytest_unsafebench.classifiers.keras_savedmodel
    import pytest_unsafebench.robustness.attacks  # noqa: F401
except ImportError:  # the torch-free install: those tests skip
    pass
from plugin_helpers import CLASSIFIER, build_dataset, write_toyclf
from pytest_unsafebench import progress, weights
from pytest_unsafebench.weights import WeightFile, WeightsNotFound

pytest_plugins = ["pytester"]


# ---------------------------------------------------------------------------- offline weights


def test_q16_offline_fails_fast_with_one_line_naming_every_missing_file(
        pytester: pytest.Pytester, empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_dataset(pytester.path / "ds")
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)  # the tiny pass must still say its line
    started = time.perf_counter()
    result = pytester.runpytest(
        "--unsafebench-classifier=q16", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=effectiveness", "-p", "no:randomly")
    elapsed = time.perf_counter() - started
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert elapsed < 30, f"an offline run with missing weights took {elapsed:.0f} s"
    # Every errored test gives the same one line, naming BOTH missing things, and no traceback.
    reasons = [line for line in result.outlines if line.startswith("classifier 'q16' failed")]
    assert reasons and len(set(reasons)) == 1
    reason = reasons[0]
    assert "2 required files or models are missing" in reason
    assert "prompts.p" in reason and "openai/clip-vit-large-patch14" in reason
    assert "HF_HUB_OFFLINE is set" in reason
    assert "Traceback" not in out and "ClassifierFailed" not in out and "session.py:" not in out
    # The pass does not claim to have classified anything.
    result.stdout.fnmatch_lines(["unsafebench: prediction pass: no classifier loaded, only "
                                 "checking images: 48 images in *; 0 new predictions; none from "
                                 "q16 (failed: see its tests)"])
    assert "decoded and classified" not in out


def test_missing_files_of_a_head_and_its_backbone_come_in_one_error(
        empty_hub: Path, tmp_path: Path) -> None:
    from pytest_unsafebench.classifiers import clip_heads as ch

    with pytest.raises(WeightsNotFound) as info:
        ch.load_nsfw_detector(cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert msg.startswith("nsfw_detector: 2 required files or models are missing: (1) ")
    assert "clip_autokeras_binary_nsfw.pth" in msg and "(2) the CLIP model" in msg
    assert "\n" not in msg
    with pytest.raises(WeightsNotFound, match=r"^multiheaded: 6 required .*political\.pt.*CLIP"):
        ch.load_multiheaded(cache_dir=tmp_path / "cache")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_is_probed_once_and_no_download_is_tried(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(weights, "_PROBE", {})
    probes: list[str] = []
    real_probe = weights._probe
    monkeypatch.setattr(weights, "_probe", lambda e: probes.append(e) or real_probe(e))
    downloads: list[str] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: downloads.append(a) or "nowhere")
    spec = WeightFile("q16", "prompts.p", "origin", "prompts", repo_id="yiting/Q16")
    for _ in range(3):
        with pytest.raises(WeightsNotFound, match=r"hub \(http://127\.0\.0\.1:\d+\) cannot be "
                                                  r"reached"):
            weights.resolve(spec, None, tmp_path / "cache")
    assert downloads == []
    assert len(probes) == 1  # detected once per process, not per file
    # HF_HUB_OFFLINE is honoured without any connection attempt.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "_PROBE", {})
    assert weights.hub_offline_reason() == "HF_HUB_OFFLINE is set" and len(probes) == 1


# ---------------------------------------------------------------------------- progress


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.redraws: list[str] = []


def test_live_progress_redraws_with_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Lines()
    display = progress.Display(out.lines.append, out.redraws.append)
    monkeypatch.setattr(progress, "LIVE_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "REDRAW_EVERY_S", 0.0)
    progress.activate(display)
    try:
        with progress.step("demo_training", "training", total=4, unit="steps") as bar:
            for _ in range(4):
                time.sleep(0.01)
                bar.advance()
    finally:
        progress.deactivate(display)
    assert len(out.redraws) == 4
    assert out.redraws[1].startswith("unsafebench: training: 2/4 steps (50%, ")
    assert "steps/s" in out.redraws[1] and "left)" in out.redraws[1]
    assert len(out.lines) == 1 and out.lines[0].startswith("unsafebench: training: 4 steps in ")
    assert set(display.timing()) == {"demo_training_seconds"}
    assert display.timing()["demo_training_seconds"] >= 0.04


def test_logs_get_one_line_per_long_step_and_short_steps_only_their_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = Lines()
    display = progress.Display(out.lines.append)  # not a terminal: no redraws
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.05)
    progress.activate(display)
    try:
        with progress.step("quick", "quick step", total=3, unit="images") as bar:
            bar.update(3)
        with progress.step("slow", "slow step", total=2, unit="images") as bar:
            time.sleep(0.06)
            bar.update(1)
            bar.update(2)
        with pytest.raises(RuntimeError), progress.step("broken", "broken step"):
            raise RuntimeError("boom")
    finally:
        progress.deactivate(display)
    assert len(out.lines) == 1
    assert out.lines[0].startswith("unsafebench: slow step: 2 images in ")
    assert set(display.timing()) == {"quick_seconds", "slow_seconds", "broken_seconds"}
    # with nothing active a step writes nothing and fails nothing
    with progress.step("x", "x") as bar:
        bar.advance()


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "-q"])
def test_run_prints_one_line_per_step_and_times_them_in_the_json(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, quiet: bool) -> None:
    build_dataset(pytester.path / "ds")
    write_toyclf(pytester.path)
    pytester.syspathinsert()
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)
    out_json = pytester.path / "out.json"
    result = pytester.runpytest(
        f"--unsafebench-classifier={CLASSIFIER}", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=effectiveness", "-p", "no:randomly",
        f"--unsafebench-json={out_json}", *(["-q"] if quiet else []))
    assert result.ret == 0, result.stdout.str()
    pass_lines = [line for line in result.outlines
                  if line.startswith("unsafebench: prediction pass")]
    assert len(pass_lines) == 1, result.stdout.str()
    assert pass_lines[0].startswith(f"unsafebench: prediction pass ({CLASSIFIER}): 48 images in ")
    assert pass_lines[0].endswith("; 48 new predictions")
    assert [line for line in result.outlines
            if line.startswith("unsafebench: loading the dataset (") and ": done in " in line]
    timing = json.loads(out_json.read_text())["timing"]
    assert {"dataset_seconds", "pass_seconds"} <= set(timing)


ROBUSTNESS_TOML = """
[tool.unsafebench.robustness]
pool_size = 10
seeds = [2023]
attacks = ["square"]
queries = 5
evasions = ["text_overlay"]
corruptions = ["brightness"]
"""


def _robustness_run(pytester: pytest.Pytester, *extra: str,
                    subprocess: bool = False) -> tuple[pytest.RunResult, dict]:
    build_dataset(pytester.path / "ds")
    write_toyclf(pytester.path)
    pytester.syspathinsert()
    pytester.makepyprojecttoml(ROBUSTNESS_TOML)
    out_json = pytester.path / "out.json"
    run = pytester.runpytest_subprocess if subprocess else pytester.runpytest
    result = run(
        f"--unsafebench-classifier={CLASSIFIER}", f"--unsafebench-dataset={pytester.path / 'ds'}",
        f"--unsafebench-cache-dir={pytester.path / 'cache'}", "--unsafebench-device=cpu",
        "--unsafebench-suites=robustness", "--unsafebench-profile=smoke", "-p", "no:randomly",
        f"--unsafebench-json={out_json}", *extra)
    assert result.ret == 0, result.stdout.str()
    return result, json.loads(out_json.read_text())


def test_steps_inside_tests_are_not_swallowed_by_output_capture(
        pytester: pytest.Pytester) -> None:
    # A real process (its own capture manager); the conftest makes every step say its line.
    pytester.makeconftest("import pytest_unsafebench.progress as p\np.QUIET_BELOW_S = 0.0\n")
    result, _ = _robustness_run(pytester, subprocess=True)
    result.stdout.fnmatch_lines([f"unsafebench: robustness {CLASSIFIER} / text_overlay / "
                                 "Laion5B: 10 images in *"])
    assert "Captured stdout" not in result.stdout.str()


def test_robustness_time_of_xdist_workers_reaches_the_report(pytester: pytest.Pytester) -> None:
    _, doc = _robustness_run(pytester, "-n", "2")
    assert doc["timing"]["robustness_seconds"] > 0


def test_robustness_grid_steps_print_a_line_each_and_sum_their_time(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)
    result, doc = _robustness_run(pytester, "-q")
    result.stdout.fnmatch_lines([
        f"unsafebench: robustness {CLASSIFIER} / square / Laion5B: 10 images in *",
        f"unsafebench: robustness {CLASSIFIER} / text_overlay / Lexica: 10 images in *",
        f"unsafebench: robustness {CLASSIFIER} / brightness:5 / all: * images in *",
    ], consecutive=False)
    assert doc["timing"]["robustness_seconds"] > 0


def test_demo_dataset_generation_counts_its_images(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_unsafebench.dataset import demo

    out = Lines()
    display = progress.Display(out.lines.append, out.redraws.append)
    monkeypatch.setattr(progress, "LIVE_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "REDRAW_EVERY_S", 0.0)
    rows = demo.demo_rows(2023)[:5]
    progress.activate(display)
    try:
        demo.write_dataset(tmp_path, 2023, rows)
    finally:
        progress.deactivate(display)
    assert out.redraws[-1].startswith("unsafebench: generating the demo dataset (seed 2023): "
                                      "5/5 images (100%")
    assert out.lines[-1].startswith("unsafebench: generating the demo dataset (seed 2023): "
                                    "5 images in ")
    assert display.timing()["demo_dataset_seconds"] > 0


def test_weight_conversion_and_downloads_are_timed_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import huggingface_hub
    import numpy as np

    from pytest_unsafebench.classifiers import clip_heads, keras_savedmodel

    display = progress.Display(lambda _text: None)
    progress.activate(display)
    try:
        zip_path = tmp_path / "clip_autokeras_binary_nsfw.zip"
        zip_path.write_bytes(b"stand-in: the converter is replaced below")
        calls: list[Path] = []
        monkeypatch.setattr(keras_savedmodel, "convert_nsfw_zip", lambda p: calls.append(p) or {
            "norm.mean": np.zeros(4, np.float32)})
        clip_heads.keras_zip_state(zip_path, tmp_path / "cache")
        first = display.timing()["weight_conversion_seconds"]
        clip_heads.keras_zip_state(zip_path, tmp_path / "cache")  # cached: no second conversion
        assert len(calls) == 1 and display.timing()["weight_conversion_seconds"] == first

        fetched = tmp_path / "prompts.p"
        fetched.write_bytes(b"x")
        monkeypatch.setattr(weights, "hub_offline_reason", lambda: None)
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(fetched))
        spec = WeightFile("q16", "prompts.p", "origin", "prompts", repo_id="yiting/Q16")
        assert weights.resolve(spec, None, None) == fetched
        assert "download_seconds" in display.timing()
    finally:
        progress.deactivate(display)


def test_the_cli_reports_long_steps_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_unsafebench import cli, commands

    def slow_show(_args: object) -> int:
        with progress.step("demo_dataset", "generating the demo dataset", total=2,
                           unit="images") as bar:
            bar.update(2)
        return 0

    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)
    monkeypatch.setattr(commands, "_show", slow_show)
    assert cli.main(["show", str(tmp_path / "run.json")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("unsafebench: generating the demo dataset: 2 images in ")
    assert progress.active() is None  # deactivated after the command
