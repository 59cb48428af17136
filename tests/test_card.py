"""`chexcut card` on a single run: what it needs, what it refuses in one line, and what it writes."""

from __future__ import annotations

import json

from conftest import run_cli


def test_card_of_an_evaluated_run_and_its_refusals(run_copy, tmp_path):
    out = tmp_path / "card.md"
    code, _, err = run_cli("card", run_copy, "-o", out)
    assert code == 2 and "has no eval.json" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = run_cli("evaluate", run_copy, "--bootstrap", "20", "--json", run_copy / "eval.json", "-q",
                           "--decision-curve", "--failures", "2")
    assert code == 0, err
    bad = tmp_path / "about.yaml"
    for text, words in (("intended_use: [unclosed", "is not readable YAML"), ("- a\n- b\n", "must be a mapping"),
                        ("favourite_colour: blue\n", "unknown keys favourite_colour")):
        bad.write_text(text)
        code, _, err = run_cli("card", run_copy, "-o", out, "--about", bad)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("card", run_copy, "-o", run_copy / "eval.json")
    assert code == 2 and "input" in err  # never replaces what it reads
    code, stdout, err = run_cli("card", run_copy, "-o", out, "--json", "-")
    assert code == 0, err
    card = json.loads(stdout)
    keys = [s["key"] for s in card["sections"]]
    assert {"model", "data", "partitions", "demographics", "training", "statistics", "results", "decision",
            "failures", "software", "reproduce"} <= set(keys)
    md = out.read_text()
    assert "## Clinical utility (decision curves)" in md and "needs the authors" in md
    assert (tmp_path / "card_files" / "auroc.png").stat().st_size > 0
    failures = next(s for s in card["sections"] if s["key"] == "failures")
    assert failures["tables"], "a run evaluated with --failures has its failure analysis in the card"
