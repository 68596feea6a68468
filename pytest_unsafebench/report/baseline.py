"""Release gating against a saved run: ``--unsafebench-baseline`` / ``-save-baseline`` and
``unsafebench compare``.

Rows are matched by their logical key (classifier, suite, metric, category, source, condition),
never by pytest node id, so renaming or reordering tests changes nothing; a classifier saved
under another name is mapped explicitly (``--unsafebench-baseline-classifier=OLD=NEW``). Every
gated value of the baseline must find its partner in this run: a comparison that pairs fewer
fails and says which values did not pair and why, since a gate that compared nothing would
otherwise pass.

The decision (:class:`~pytest_unsafebench.thresholds.GateRule`, set by the profile): a value
regresses when it is worse than the baseline by more than the tolerance AND a paired bootstrap
on the images both runs scored finds the change significant (p < alpha), or when it is worse
by more than the hard limit whatever the test says. Where no paired test can run (a metric
without one, a baseline without per-image decisions, a saved report), a drop beyond the
tolerance regresses, and the reason says that no test backed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..stats import format_p
from ..thresholds import GateRule

if TYPE_CHECKING:
    from ..cells import Bootstrap
    from ..results import PredictionTable

KEY_FIELDS = ("classifier", "suite", "metric", "category", "source", "condition")
# Metrics a baseline gates, and which way is better. Gap rows compare their absolute value.
HIGHER_IS_BETTER = ("f1", "precision", "recall", "auroc", "average_precision", "ra",
                    "ra_corruption_mean")
LOWER_IS_BETTER = ("fpr",)
ABSOLUTE_LOWER_IS_BETTER = ("gap_f1", "gap_fpr", "gap_ra")
# Metrics the paired bootstrap recomputes from per-image decisions (effectiveness, gap).
PAIRED_METRICS = ("f1", "precision", "recall", "fpr", "gap_f1", "gap_fpr")
DECISION_CODES = {"unsafe": "u", "safe": "s", "unsure": "?"}
# Run settings whose difference is named when values do not pair (config keys of the report).
CONTEXT_KEYS = ("split", "categories", "sources", "suites", "alignment", "limit", "profile")
# The reasons listed in the terminal; the JSON keeps them all.
SHOWN_UNMATCHED = 10

Key = tuple[Any, ...]


@dataclass
class Regression:
    classifier: str
    suite: str
    metric: str
    category: str | None
    source: str | None
    condition: str | None
    baseline: float
    current: float
    diff: float              # how much better this run is (negative: worse), in the metric's units
    tolerance: float
    p_value: float | None    # paired bootstrap, when both runs have per-image decisions
    reason: str
    ci_low: float | None = None    # interval of ``diff`` from the paired bootstrap
    ci_high: float | None = None


def key_of(row: Mapping[str, Any]) -> Key:
    return tuple(row.get(k) for k in KEY_FIELDS)


def decisions_block(tables: Mapping[str, PredictionTable]) -> dict[str, dict[str, Any]]:
    """Per classifier, the image ids and their decisions (one character each): what a later
    run needs for paired tests against this one."""
    return {name: {"ids": [r["id"] for r in t.rows],
                   "decisions": "".join(DECISION_CODES[r["decision"]] for r in t.rows)}
            for name, t in sorted(tables.items())}


def load(path: Path) -> dict[str, Any]:
    """A saved JSON report, checked enough that comparing it cannot fail halfway."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"baseline {path}: cannot read it ({exc})") from None
    except (ValueError, RecursionError) as exc:  # also nesting too deep, numbers too long
        raise ConfigError(f"baseline {path}: not JSON ({exc}); expected a report written by "
                          "--unsafebench-save-baseline or --unsafebench-json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ConfigError(f"baseline {path}: no 'rows' list; expected a report written by "
                          "--unsafebench-save-baseline or --unsafebench-json")
    for i, row in enumerate(doc["rows"]):
        if not isinstance(row, dict) or any(k not in row for k in (*KEY_FIELDS, "value")):
            raise ConfigError(f"baseline {path}: row {i} lacks one of "
                              f"{', '.join((*KEY_FIELDS, 'value'))}")
        bad = [k for k in KEY_FIELDS if row[k] is not None and not isinstance(row[k], str)]
        if bad:
            raise ConfigError(f"baseline {path}: row {i}: {bad[0]} is {row[bad[0]]!r}; expected "
                              "a string or null")
    decisions = doc.get("decisions", {})
    if not isinstance(decisions, dict) or not all(
            isinstance(b, dict) and isinstance(b.get("ids"), list)
            and all(isinstance(x, str) for x in b["ids"])
            and isinstance(b.get("decisions"), str) and len(b["ids"]) == len(b["decisions"])
            and set(b["decisions"]) <= set(DECISION_CODES.values())
            for b in decisions.values()):
        raise ConfigError(f"baseline {path}: 'decisions' is not one block of ids and as many "
                          "decision codes per classifier; save the baseline again with "
                          "--unsafebench-save-baseline")
    for section in ("config", "dataset"):
        if not isinstance(doc.get(section, {}), dict):
            raise ConfigError(f"baseline {path}: '{section}' is not an object; expected a report "
                              "written by --unsafebench-save-baseline or --unsafebench-json")
    return doc


def baseline_classifiers(baseline: Mapping[str, Any]) -> list[str]:
    """The classifier names the baseline has values for."""
    return sorted({str(r["classifier"]) for r in baseline["rows"] if r.get("classifier")})


def check_renames(baseline: Mapping[str, Any], renames: Mapping[str, str],
                  classifiers: Iterable[str], where: str) -> None:
    """Each OLD=NEW names a classifier of the baseline and one of this run."""
    old_names, new_names = baseline_classifiers(baseline), list(classifiers)
    for old, new in renames.items():
        if old not in old_names:
            raise ConfigError(f"{where} {old}={new}: the baseline has no classifier {old!r}; "
                              f"it has: {', '.join(old_names) or 'none'}")
        if new not in new_names:
            raise ConfigError(f"{where} {old}={new}: this run has no classifier {new!r}; "
                              f"it runs: {', '.join(new_names) or 'none'}")


def check_dataset(baseline: Mapping[str, Any], fingerprint: str | None,
                  config: Mapping[str, Any], *, allow: bool, flag: str) -> list[str]:
    """Refuse a baseline scored on other data (another dataset fingerprint or split): its values
    are not comparable. Returns the report's notes: the allowed differences, and what could
    not be checked. ``config`` is this run's report config (split, categories, sources, limit).

    The fingerprint covers the images a run selected, so it only says "other data" when both
    runs selected the same categories, sources and limit; otherwise the values that do not
    pair fail the gate on their own, and a note says the data could not be compared."""
    old_fp = (baseline.get("dataset") or {}).get("fingerprint")
    old_cfg = baseline.get("config") or {}
    mismatched, unknown = [], []
    if old_cfg.get("split") is not None and config.get("split") is not None \
            and old_cfg["split"] != config["split"]:
        mismatched.append(f"split {old_cfg['split']} in the baseline, {config['split']} in "
                          "this run")
    selection = [k for k in ("categories", "sources", "limit")
                 if k in old_cfg and k in config and old_cfg[k] != config[k]]
    if old_fp is None or fingerprint is None:
        unknown.append(f"{'the baseline' if old_fp is None else 'this run'} records no dataset "
                       "fingerprint: whether both were scored on the same images is unknown")
    elif old_fp != fingerprint and selection:
        unknown.append(f"dataset fingerprints differ ({old_fp} in the baseline, {fingerprint} "
                       f"in this run) and so does the selection ({', '.join(selection)}): "
                       "whether the images both scored are the same is unknown")
    elif old_fp != fingerprint:
        mismatched.append(f"dataset fingerprint {old_fp} in the baseline, {fingerprint} in "
                          "this run")
    # Same images, but a transparent one decodes to other pixels: said, not refused. A
    # report from before the setting existed decoded over white.
    old_alpha, alpha = old_cfg.get("alpha", "white"), config.get("alpha", "white")
    if old_alpha != alpha:
        unknown.append(f"transparent images decoded with alpha = {old_alpha!r} in the baseline, "
                       f"{alpha!r} in this run: their predictions may differ for that reason")
    if mismatched and not allow:
        raise ConfigError(f"baseline scored on other data: {'; '.join(mismatched)}. Save a "
                          f"baseline on this dataset and split, or pass {flag} to compare anyway")
    return [f"{m} (compared anyway: {flag})" for m in mismatched] + unknown


def compare(baseline: Mapping[str, Any], rows: Iterable[Mapping[str, Any]],
            tolerance_for: Callable[[str], float], *, rule: GateRule | None = None,
            path: str = "", current: Mapping[str, Any] | None = None,
            renames: Mapping[str, str] | None = None, notes: Iterable[str] = (),
            tables: Mapping[str, PredictionTable] | None = None,
            covered: Mapping[str, Iterable[str]] | None = None,
            bootstrap: Bootstrap | None = None) -> dict[str, Any]:
    """The baseline section of the report: what was compared, what did not pair, what regressed.

    ``current`` is this run's ``{"config", "dataset"}`` (to say why a value did not pair);
    ``renames`` maps baseline classifier names to this run's; ``notes`` are the allowed dataset
    differences (:func:`check_dataset`); ``tables``, ``covered`` and ``bootstrap`` enable the
    paired tests (``covered``: each classifier's categories, for the Overall cell).
    """
    rule = rule or GateRule()
    renames = dict(renames or {})
    base: dict[Key, Mapping[str, Any]] = {}
    for r in baseline["rows"]:
        if _gated_value(r) is not None:
            base[key_of({**r, "classifier": renames.get(r["classifier"], r["classifier"])})] = r
    now = {key_of(r): r for r in rows}
    paired_keys = [k for k in base if k in now and _gated_value(now[k]) is not None]
    paired = (_paired(baseline, tables, bootstrap, rule.alpha, renames, covered or {},
                      [k for k in paired_keys if k[2] in PAIRED_METRICS])
              if tables is not None and bootstrap is not None else {})
    regressions: list[Regression] = []
    within_noise: list[dict[str, Any]] = []
    for key in paired_keys:
        old, value = _gated_value(base[key]), _gated_value(now[key])
        assert old is not None and value is not None
        metric = key[2]
        better = _improvement(metric, old, value)
        tol = tolerance_for(metric)
        hard = max(rule.hard_limit, tol)   # a tolerance above the hard limit raises it
        test = paired.get(key)
        if -better <= tol + 1e-12:
            continue
        change = f"{_worse_word(metric)} {-better:.3f}"
        if -better > hard + 1e-12:
            reason = f"{change} > hard limit {hard:g}"
        elif test is None or test["p_value"] is None:   # untested is never "noise"
            why = _untested_reason(metric, key[0], baseline, renames, tables, bootstrap)
            reason = f"{change} > tolerance {tol:g}; no paired test ({why})"
        elif test["p_value"] < rule.alpha and test["worse"]:
            reason = (f"{change} > tolerance {tol:g}, significant paired change "
                      f"({format_p(test['p_value'], test['resamples'])} < {rule.alpha:g})")
        else:
            within_noise.append({**dict(zip(KEY_FIELDS, key)), "diff": round(better, 6),
                                 "p_value": test["p_value"],
                                 "ci_low": test["better_low"], "ci_high": test["better_high"]})
            continue
        regressions.append(Regression(
            **dict(zip(KEY_FIELDS, key)), baseline=old, current=value, diff=round(better, 6),
            tolerance=tol,
            p_value=test["p_value"] if test else None, reason=reason,
            ci_low=test["better_low"] if test else None,
            ci_high=test["better_high"] if test else None))
    done = set(paired_keys)
    unmatched = [{**dict(zip(KEY_FIELDS, k)), "why": _why_unpaired(k, now, current, renames,
                                                                     baseline)}
                 for k in base if k not in done]
    env = baseline.get("environment", {})
    return {"path": path, "git_commit": env.get("git_commit") if isinstance(env, dict) else None,
            "rule": rule.public(), "paired_tests": tables is not None and bootstrap is not None,
            "baseline_values": len(base), "compared": len(paired_keys),
            "unmatched": unmatched, "renamed": renames,
            "context": _context_differences(baseline, current, renames),
            "mismatch": list(notes),
            "regressions": [asdict(r) for r in regressions], "within_noise": within_noise,
            "paired": [{**dict(zip(KEY_FIELDS, k)), **{f: v for f, v in t.items()
                                                        if f not in ("worse", "resamples")}}
                       for k, t in paired.items()],
            "passed": not regressions and not unmatched and bool(base)}


def _gated_value(row: Mapping[str, Any]) -> float | None:
    metric, value = row.get("metric"), row.get("value")
    if metric not in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER, *ABSOLUTE_LOWER_IS_BETTER):
        return None
    if row.get("outcome") not in ("passed", "failed", "info") or isinstance(value, bool) \
            or not isinstance(value, (int, float)):
        return None
    return float(value)


def _improvement(metric: str, old: float, new: float) -> float:
    """How much better ``new`` is than ``old`` (negative: worse)."""
    if metric in HIGHER_IS_BETTER:
        return new - old
    if metric in LOWER_IS_BETTER:
        return old - new
    return abs(old) - abs(new)


def _worse_word(metric: str) -> str:
    if metric in LOWER_IS_BETTER:
        return "rose"
    if metric in ABSOLUTE_LOWER_IS_BETTER:
        return "|gap| grew"
    return "dropped"


def _untested_reason(metric: str, classifier: str, baseline: Mapping[str, Any],
                     renames: Mapping[str, str], tables: Mapping[str, Any] | None,
                     bootstrap: Bootstrap | None) -> str:
    if tables is None:
        return "a saved report has no per-image decisions"
    if metric not in PAIRED_METRICS:
        return f"none for {metric}"
    old = {v: k for k, v in renames.items()}.get(classifier, classifier)
    if old not in (baseline.get("decisions") or {}):
        return (f"the baseline has no per-image decisions for {old}; save baselines with "
                "--unsafebench-save-baseline")
    if bootstrap is not None and bootstrap.resamples == 0:
        return "--unsafebench-bootstrap=0"
    return "undefined on this cell's resamples"


def _why_unpaired(key: Key, now: Mapping[Key, Mapping[str, Any]],
                  current: Mapping[str, Any] | None, renames: Mapping[str, str],
                  baseline: Mapping[str, Any]) -> str:
    """Why a gated value of the baseline has no partner in this run."""
    from ..taxonomy import CATEGORIES, SOURCES

    classifier, suite, _, category, source, _ = key
    row = now.get(key)
    if row is not None:
        reason = f": {row['reason']}" if row.get("reason") else ""
        return f"no value in this run (test {row.get('outcome') or 'not run'}{reason})"
    cfg = (current or {}).get("config") or {}
    names = cfg.get("classifiers")
    if names is not None and classifier not in names:
        unmapped = [n for n in names if n not in renames.values()
                    and n not in baseline_classifiers(baseline)]
        hint = (f"; if it is {unmapped[0]}, pass --unsafebench-baseline-classifier="
                f"{classifier}={unmapped[0]}" if len(unmapped) == 1 else "")
        return (f"classifier {classifier} is not in this run (this run: "
                f"{', '.join(names) or 'none'}){hint}")
    if cfg.get("suites") is not None and suite not in cfg["suites"]:
        return f"suite {suite} was not selected in this run (--unsafebench-suites)"
    if category in CATEGORIES and cfg.get("categories") is not None \
            and category not in cfg["categories"]:
        return f"category {category} was not selected in this run"
    if source in SOURCES and cfg.get("sources") is not None and source not in cfg["sources"]:
        return f"source {source} was not selected in this run"
    return "not measured in this run (deselected, or not covered under its alignment)"


def _context_differences(baseline: Mapping[str, Any], current: Mapping[str, Any] | None,
                         renames: Mapping[str, str]) -> list[str]:
    """The run settings that differ between the baseline and this run, one line each."""
    if current is None:
        return []
    old_cfg, new_cfg = baseline.get("config") or {}, current.get("config") or {}
    out = []
    old_names = [renames.get(n, n) for n in baseline_classifiers(baseline)]
    new_names = list(new_cfg.get("classifiers") or [])
    if new_names and sorted(old_names) != sorted(new_names):
        out.append(f"classifiers: baseline {', '.join(baseline_classifiers(baseline))}"
                   + (f" (mapped: {', '.join(f'{a}={b}' for a, b in renames.items())})"
                      if renames else "") + f"; this run {', '.join(new_names)}")
    old_fp = (baseline.get("dataset") or {}).get("fingerprint")
    new_fp = (current.get("dataset") or {}).get("fingerprint")
    if old_fp != new_fp and old_fp is not None and new_fp is not None:
        out.append(f"dataset fingerprint: baseline {old_fp}; this run {new_fp}")
    for key in CONTEXT_KEYS:
        if key in old_cfg and key in new_cfg and old_cfg[key] != new_cfg[key]:
            out.append(f"{key}: baseline {_setting(old_cfg[key])}; this run "
                       f"{_setting(new_cfg[key])}")
    return out


def _setting(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _paired(baseline: Mapping[str, Any], tables: Mapping[str, PredictionTable],
            bootstrap: Bootstrap, alpha: float, renames: Mapping[str, str],
            covered: Mapping[str, Iterable[str]], keys: list[Key]) -> dict[Key, dict[str, Any]]:
    """Per effectiveness cell and gap row, on the images both runs scored (when the baseline
    saved per-image decisions for that classifier): the paired bootstrap of the metric (diff =
    this run - baseline; for a gap, |gap now| - |gap before|; interval at 1 - alpha) and the
    exact McNemar test on correctness."""
    import numpy as np

    from ..stats import mcnemar_exact, paired_bootstrap, paired_gap_bootstrap
    from ..taxonomy import GENERATED_SOURCE, OVERALL, POOLED, REAL_SOURCE

    out: dict[Key, dict[str, Any]] = {}
    saved = baseline.get("decisions") or {}
    old_name = {new: old for old, new in renames.items()}
    codes_of: dict[str, np.ndarray] = {}   # per classifier: each table row's baseline decision
    for key in keys:
        name, suite, metric, category, source, condition = key
        table = tables.get(name)
        block = saved.get(old_name.get(name, name))
        if table is None or suite not in ("effectiveness", "gap") or condition is not None \
                or block is None:   # blocks were checked by load()
            continue
        if name not in codes_of:
            old = dict(zip(block["ids"], block["decisions"]))
            codes_of[name] = np.array([old.get(r["id"], "") for r in table.rows])
        codes = codes_of[name]
        cols = table.columns   # the same label and decision columns the effectiveness cells use
        mask = codes != ""
        if "failed" in cols:       # no verdict: left out of the cells, so out of the test too
            mask &= ~cols["failed"]
        if category == OVERALL:
            mask &= np.isin(cols["category"], list(covered.get(name, ())))
        else:
            mask &= cols["category"] == category

        def side(m: np.ndarray, cols: dict[str, np.ndarray] = cols, codes: np.ndarray = codes,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return (cols["y_true"][m], codes[m] == DECISION_CODES["unsafe"], cols["y_pred"][m])

        resamples, confidence, seed = bootstrap.resamples, 1 - alpha, bootstrap.seed
        if suite == "gap":
            res = paired_gap_bootstrap(metric.removeprefix("gap_"),
                                       side(mask & (cols["source"] == REAL_SOURCE)),
                                       side(mask & (cols["source"] == GENERATED_SOURCE)),
                                       n_resamples=resamples, confidence=confidence, seed=seed)
        else:
            if source != POOLED:
                mask &= cols["source"] == source
            res = paired_bootstrap(metric, *side(mask), n_resamples=resamples,
                                   confidence=confidence, seed=seed)
        if res.diff is None:
            continue
        y, before, after = side(mask)
        mc = mcnemar_exact(before == y, after == y)
        # the interval of the improvement (as ``diff`` in the regressions: negative is worse)
        sign = 1 if metric in HIGHER_IS_BETTER else -1
        ends = (res.ci_low, res.ci_high)[::sign]
        out[key] = {"n": res.n, "baseline_value": res.a, "value": res.b, "diff": res.diff,
                    "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value,
                    "confidence": 1 - alpha,
                    "better_low": None if ends[0] is None else sign * ends[0],
                    "better_high": None if ends[1] is None else sign * ends[1],
                    "mcnemar": {"b": mc.b, "c": mc.c, "p_value": mc.p_value},
                    "worse": sign * res.diff < 0, "resamples": bootstrap.resamples}
    return out


def verdict_line(section: Mapping[str, Any]) -> str:
    """The gate's verdict in one line: the last line of the terminal report."""
    regs, unmatched = len(section["regressions"]), len(section.get("unmatched", []))
    total = section.get("baseline_values", section["compared"])
    compared = f"{section['compared']} of {total} baseline values compared"
    if section["passed"]:
        return f"baseline gate PASSED: {compared}, none regressed"
    why = [f"{regs} regressed"] if regs else []
    if unmatched:
        why.append(f"{unmatched} did not pair with this run")
    if not total:
        why.append("the baseline has no gated values")
    return f"baseline gate FAILED: {compared}; {', '.join(why)}"


def regression_table(section: Mapping[str, Any]) -> list[str]:
    """The terminal lines that say what regressed against the baseline, and what could not be
    compared."""
    from tabulate import tabulate

    rule = section.get("rule")
    lines = [f"baseline {section['path']} (commit {section.get('git_commit') or 'unknown'}): "
             f"{section['compared']} of {section.get('baseline_values', section['compared'])} "
             "values compared"]
    if rule and section.get("paired_tests"):
        lines.append(f"  a regression is worse by more than {rule['tolerance']:g} with a "
                     f"significant paired change (p < {rule['alpha']:g}), or worse by more than "
                     f"{rule['hard_limit']:g}")
    elif rule:
        lines.append(f"  a regression is worse by more than {rule['tolerance']:g} (no paired "
                     "test: no per-image decisions here)")
    unmatched = section.get("unmatched", [])
    if unmatched:
        # one line per reason, with its first value: a renamed classifier is one line, not 75
        by_why: dict[str, list[Mapping[str, Any]]] = {}
        for u in unmatched:
            by_why.setdefault(u["why"], []).append(u)
        lines.append(f"  {len(unmatched)} baseline value(s) did not pair with this run "
                     "(all in the JSON's baseline.unmatched):")
        for why, values in list(by_why.items())[:SHOWN_UNMATCHED]:
            u = values[0]
            cell = " ".join(str(u[k]) for k in ("classifier", "suite", "metric", "category",
                                                "condition", "source") if u[k] is not None)
            more = f" and {len(values) - 1} more" if len(values) > 1 else ""
            lines.append(f"    {cell}{more}: {why}")
        if len(by_why) > SHOWN_UNMATCHED:
            lines.append(f"    and {len(by_why) - SHOWN_UNMATCHED} other reasons")
        lines += [f"  differs: {c}" for c in section.get("context", [])]
    noise = section.get("within_noise", [])
    if noise:
        lines.append(f"  {len(noise)} change(s) beyond the tolerance were not significant on "
                     "the paired test and stay within the hard limit (baseline.within_noise)")
    regs = section["regressions"]
    if not regs:
        lines.append("  no regression" if section["compared"] else "  nothing was compared")
        return lines
    table = [[r["classifier"], r["suite"], r["metric"], r["category"] or "-",
              r["source"] or "-", r["condition"] or "-", f"{r['baseline']:.3f}",
              f"{r['current']:.3f}", _change(r), r["reason"]] for r in regs]
    headers = ["classifier", "suite", "metric", "category", "source", "condition", "baseline",
               "current", "change [interval]", "why"]
    return [*lines, f"  {len(regs)} REGRESSED:",
            *("  " + line for line in tabulate(table, headers=headers,
                                               disable_numparse=True).splitlines())]


def _change(r: Mapping[str, Any]) -> str:
    """The improvement (negative: worse) and, from the paired test, its interval."""
    text = f"{r['diff']:+.3f}"
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        text += f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    return text
