"""The report schema: report/schema.py's types, the JSON Schema file generated from them, and
the validation tests/conftest.py runs on every report the suite writes."""

from __future__ import annotations

import copy
import json
from typing import Any, get_type_hints, is_typeddict

import pytest

from pytest_unsafebench.report import schema
from report_doc_helpers import real_run
from report_schema_check import problems


def _typed_dicts() -> list[Any]:
    return [v for v in vars(schema).values() if is_typeddict(v)]


def test_the_schema_file_is_generated_from_schema_py() -> None:
    """Regenerate with ``python -m pytest_unsafebench.report.schema`` after changing a type."""
    assert json.loads(schema.SCHEMA_FILE.read_text()) == schema.json_schema()
    assert schema.SCHEMA_FILE.read_text() == schema.schema_text()


@pytest.mark.parametrize("td", _typed_dicts(), ids=lambda td: td.__name__)
def test_the_schema_file_and_schema_py_agree_on_keys(td: Any) -> None:
    on_file = json.loads(schema.SCHEMA_FILE.read_text())
    section = on_file if td is schema.Document else on_file["$defs"][td.__name__]
    assert list(section["properties"]) == list(get_type_hints(td))
    assert set(section["required"]) == set(td.__required_keys__)
    # Every key says what it holds (the description is the key's comment in schema.py).
    assert all(p.get("description") for p in section["properties"].values())


def test_the_schema_is_valid_json_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(json.loads(schema.SCHEMA_FILE.read_text()))


def test_make_row_has_every_row_key_in_order() -> None:
    row = schema.make_row(classifier="c", suite="effectiveness", metric="f1", value=0.5)
    assert list(row) == list(schema.ROW_KEYS)
    assert list(schema.make_row(classifier="c", suite="fuzz", metric="flips", image_id="x",
                                artifact_image=None)) == [*schema.ROW_KEYS, "image_id",
                                                          "artifact_image"]
    with pytest.raises(TypeError, match="unknown row key"):
        schema.make_row(classifier="c", suite="s", metric="m", colour="red")


@pytest.fixture(scope="module")
def real_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real run's report (two toy classifiers on the folder dataset: rows with intervals,
    gap rows, curves, comparisons)."""
    doc, _, _ = real_run(tmp_path_factory.mktemp("schema"))
    return doc


def test_a_real_report_is_valid(real_doc: dict[str, Any]) -> None:
    assert problems(real_doc) == []
    assert real_doc["schema_version"] == schema.SCHEMA_VERSION


@pytest.mark.parametrize("breakage, where", [
    (lambda d: d.pop("summary"), "'summary' is a required property"),
    (lambda d: d["rows"][0].pop("ci_low"), "'ci_low' is a required property"),
    (lambda d: d["rows"][0].update(value="0.9"), "$.rows[0].value"),
    (lambda d: d["rows"][0].update(outcome="ok"), "$.rows[0].outcome"),
    (lambda d: d["rows"][0].update(colour="red"), "Additional properties"),
    (lambda d: d["rows"][0].update(warned=1), "$.rows[0].warned"),
    (lambda d: d["dataset"]["integrity"].update(findings=None), "findings"),
    (lambda d: d["config"].update(classifiers="a,b"), "$.config.classifiers"),
    (lambda d: d.update(schema_version="1"), "$.schema_version"),
])
def test_a_broken_report_is_caught(real_doc: dict[str, Any], breakage: Any, where: str) -> None:
    doc = copy.deepcopy(real_doc)
    breakage(doc)
    found = problems(doc)
    assert any(where in line for line in found), found


def test_a_hook_may_add_top_level_keys(real_doc: dict[str, Any]) -> None:
    assert problems({**real_doc, "my_team": {"owner": "x"}}) == []


def test_the_conftest_check_finds_broken_reports(tmp_path: Any,
                                                 real_doc: dict[str, Any]) -> None:
    from report_schema_check import check_reports

    broken = {**real_doc, "rows": [{**real_doc["rows"][0], "n": "ten"}]}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.json").write_text(json.dumps(broken))
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))  # no report: not checked
    assert [line.split(": ", 1)[1] for line in check_reports(tmp_path)] == [
        "$.rows[0].n: 'ten' is not of type 'integer', 'null'"]
    (tmp_path / "sub" / "r.json").unlink()  # so that this test's own check passes
