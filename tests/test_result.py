"""The evaluation result, typed (chexcut.evaluation.result): one schema, eval.json read and written through it
unchanged, a damaged one is one line, and the published schema is the generated one."""

import copy
import json
from pathlib import Path

import pytest

from chexcut.errors import ChexcutError
from chexcut.evaluation import figures
from chexcut.evaluation.result import SCHEMA, Evaluation, LabelResult, Mean, markdown, read_evaluation, schema_text
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eval_json(trained_run, tmp_path_factory):
    """A real evaluation JSON, with most sections (calibration, operating points, decision curves)."""
    path = tmp_path_factory.mktemp("result") / "e.json"
    code, _, err = run_cli("evaluate", trained_run, "--bootstrap", "10", "--json", path, "--decision-curve",
                           "--at-specificity", "0.8", "-q")
    assert code == 0, err
    return path


def test_a_real_evaluation_round_trips_byte_for_byte(eval_json):
    text = eval_json.read_text()
    ev = read_evaluation(eval_json)
    assert json.dumps(ev.to_json(), indent=2) == json.dumps(json.loads(text), indent=2)
    assert list(ev.to_json()) == list(json.loads(text))  # the same keys in the same order
    d = json.loads(text)
    assert ev.n == d["n"] and ev.bootstrap == 10 and ev.cluster == d["cluster"] and ev.level == "study"
    assert ev.statistics.bootstrap == 10 and ev.statistics.at_specificity == (0.8,) and ev.statistics.decision_curve
    assert [r.label for r in ev.labels] == [r["label"] for r in d["labels"]]
    assert isinstance(ev.labels[0], LabelResult) and isinstance(ev.mean_all, Mean)
    assert ev.mean_competition.auroc == d["mean_competition"]["auroc"] and ev.mean_competition.labels == 5
    first = d["labels"][0]
    assert ev.labels[0].auroc == first["auroc"] and ev.labels[0].n_pos == first["n_pos"]
    for fig in figures.registry():  # every registered figure is read from its section
        if fig.section in ("labels", "calibration"):
            row = figures.by_label(d, fig).get(first["label"]) or {}
            assert ev.labels[0].figure(fig) == {k: row.get(k) for k in fig.keys}, fig.key
    assert ev.section("operating_points") == d["operating_points"] and ev.section("nothing") is None
    assert Evaluation.from_json(ev.to_json()) == ev


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("labels"), "no 'labels'"),
    (lambda d: d["labels"][1].pop("auroc"), "'labels[1]' has no 'auroc'"),
    (lambda d: d.__setitem__("n", str(d["n"])), "'n' should be integer, not string"),
    (lambda d: d["mean_all"].__setitem__("ci_low", "low"), "'mean_all.ci_low' should be number or null, not string"),
    (lambda d: d.__setitem__("statistics", {"bootstraps": 3}), "'statistics': unknown evaluation settings"),
])
def test_a_damaged_evaluation_is_one_line_naming_the_file_and_the_key(eval_json, tmp_path, damage, message):
    d = json.loads(eval_json.read_text())
    damage(d)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ChexcutError) as e:
        read_evaluation(path)
    assert str(e.value).startswith(f"damaged {path}: ") and message in str(e.value) and "\n" not in str(e.value)


def _violation(value, node, root, at="$"):
    """A test-side check of the JSON Schema subset SCHEMA uses ($ref, type, required, properties, items)."""
    if "$ref" in node:
        node = root["$defs"][node["$ref"].split("/")[-1]]
    kinds = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    ok = any((isinstance(value, int) and not isinstance(value, bool)) if t == "integer" else
             (isinstance(value, (int, float)) and not isinstance(value, bool)) if t == "number" else
             isinstance(value, kinds[t]) for t in types) if types else True
    if not ok:
        return f"{at}: {type(value).__name__} is not {types}"
    if isinstance(value, dict):
        missing = [k for k in node.get("required", []) if k not in value]
        if missing:
            return f"{at}: missing {missing}"
        for k, sub in node.get("properties", {}).items():
            if k in value and (v := _violation(value[k], sub, root, f"{at}.{k}")):
                return v
    if isinstance(value, list):
        for i, item in enumerate(value):
            if "items" in node and (v := _violation(item, node["items"], root, f"{at}[{i}]")):
                return v
    return None


def test_a_real_evaluation_conforms_to_the_schema(eval_json):
    d = json.loads(eval_json.read_text())
    assert SCHEMA["$schema"].endswith("2020-12/schema")
    assert _violation(d, SCHEMA, SCHEMA) is None
    broken = copy.deepcopy(d)
    broken["labels"][0]["n_neg"] = 1.5
    assert "n_neg" in _violation(broken, SCHEMA, SCHEMA)
    row = SCHEMA["$defs"]["label"]["properties"]  # each registered figure of the labels section, with its CI keys
    for fig in figures.in_section("labels"):
        assert set(fig.keys) <= set(row), fig.key
    assert set(figures.AUROC.keys) <= set(SCHEMA["$defs"]["label"]["required"])
    cal = SCHEMA["$defs"]["calibration"]["properties"]
    assert all(set(f.keys) <= set(cal) for f in figures.in_section("calibration"))


def test_the_published_schema_is_the_generated_one():
    hint = "python -m chexcut.evaluation.result [--markdown] > docs/reference/{eval-schema.json,evaluation-json.md}"
    assert (ROOT / "docs" / "reference" / "eval-schema.json").read_text() == schema_text(), hint
    assert (ROOT / "docs" / "reference" / "evaluation-json.md").read_text() == markdown(), hint
    assert "reference/evaluation-json.md" in (ROOT / "mkdocs.yml").read_text()
