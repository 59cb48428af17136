"""`chexcut card` on a single run: what it needs, what it refuses in one line, and what it writes."""

from __future__ import annotations

import json
from pathlib import Path

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


HOSTILE = ('<script>alert(1)</script><img src=x onerror=alert(2)> [click](javascript:alert(3)) '
           '<a href="javascript:alert(4)">a</a> | `x` & &lt;b&gt;\n# heading\n<svg onload=alert(5)>')


class _Live:
    """What an HTML page would run or follow: script elements, event-handler attributes, javascript: URLs."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.found = []
        found = self.found

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                if tag in ("script", "svg", "iframe", "object", "embed"):
                    found.append(tag)
                for name, value in attrs:
                    if name.startswith("on") and value != "this.dataset.broken = '1'":  # the card's own img handler
                        found.append(f"{tag} {name}")
                    if name in ("href", "src") and str(value).strip().lower().startswith("javascript:"):
                        found.append(f"{tag} {name}={value}")

        Parser().feed(text)


def test_every_card_field_with_hostile_strings_is_inert(run_copy, tmp_path):
    """The about YAML, the run folder's name and the data folder's name full of HTML, scripts and javascript: links:
    the HTML card is autoescaped (nothing live), the Markdown card carries no raw HTML and no link from them."""
    import shutil

    import yaml

    from chexcut.study.about import ABOUT_KEYS

    run = Path(shutil.move(str(run_copy), str(tmp_path / "<img src=x onerror=alert(9)>")))
    code, _, err = run_cli("evaluate", run, "--bootstrap", "20", "--json", run / "eval.json", "-q")
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    config["data"]["dir"] = "/data/<script>alert(7)</script>"  # the card reads it, never the folder
    (run / "config.json").write_text(json.dumps(config))
    about = tmp_path / "about.yaml"
    about.write_text(yaml.safe_dump({k: f"{k}: {HOSTILE}" for k in ABOUT_KEYS}))
    out = tmp_path / "out" / "card.md"
    out.parent.mkdir()
    code, _, err = run_cli("card", run, "-o", out, "--html", tmp_path / "out" / "card.html", "--about", about)
    assert code == 0, err
    html = (tmp_path / "out" / "card.html").read_text()
    assert _Live(html).found == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "limitations: " in html  # shown, as text
    md = out.read_text()
    import re

    for live in ("<script", "<img", "<a ", "<svg", "\n# heading"):
        assert live not in md, live
    assert not re.search(r"(?<!\\)\]\(javascript:", md)  # a link only where a bracket is not escaped
    assert "\\[click\\](javascript:alert(3))" in md and "&lt;script&gt;" in md  # shown as text
    assert _Live(md).found == []


def test_the_about_yaml_is_read_with_bounded_work(tmp_path):
    """A "billion laughs" file (nested aliases), a 10,000-deep list and a huge file: each one line, at once."""
    import pytest

    from chexcut.errors import ChexcutError
    from chexcut.study.about import read_about

    laughs = tmp_path / "laughs.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    laughs.write_text("\n".join(lines + ["limitations: *i"]) + "\n")
    with pytest.raises(ChexcutError, match=r"YAML aliases \(\*a\) are not read"):
        read_about(laughs)
    deep = tmp_path / "deep.yaml"
    deep.write_text("limitations: " + "[" * 10_000 + "]" * 10_000 + "\n")
    with pytest.raises(ChexcutError, match="nests more than 20 levels deep"):
        read_about(deep)
    big = tmp_path / "big.yaml"
    big.write_text("limitations: " + "x" * 1_100_000 + "\n")
    with pytest.raises(ChexcutError, match="holds at most 1,000,000"):
        read_about(big)
    fine = tmp_path / "fine.yaml"
    fine.write_text("limitations: |\n  Phantom data only.\n  Not for clinical use.\nfunding: none\n")
    assert read_about(fine) == {"limitations": "Phantom data only. Not for clinical use.", "funding": "none"}


def test_the_cards_command_reproduces_the_runs_config(phantom, tmp_path):
    """A run trained with settings off every default: the card's printed finetune command, run as printed into
    another folder, writes the same config.json (its output folder aside)."""
    import shlex

    first = tmp_path / "first"
    settings = ["--views", "all", "--uncertain", "ones", "--blank", "ignore", "--lr", "0.0003", "--batch-size", "8",
                "--epochs", "1", "--image-size", "40", "--workers", "0", "--max-steps", "2", "--val-every", "2",
                "--precision", "fp32", "--no-channels-last", "--log-every", "7", "--labels", "Edema,Cardiomegaly"]
    code, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--drop", "2", "--data", phantom, "--out",
                           first, "--seed", "3", "-q", *settings)
    assert code == 0, err
    code, _, err = run_cli("evaluate", first, "--bootstrap", "10", "--json", first / "eval.json", "-q")
    assert code == 0, err
    code, _, err = run_cli("card", first, "-o", tmp_path / "card.md", "--json", tmp_path / "card.json")
    assert code == 0, err
    card = json.loads((tmp_path / "card.json").read_text())
    rows = next(s for s in card["sections"] if s["key"] == "reproduce")["tables"][0]["rows"]
    argv = shlex.split(rows[0][0])
    assert argv[:2] == ["chexcut", "finetune"] and "--views" in argv and "--blank" in argv
    again = tmp_path / "again"
    argv[argv.index("--out") + 1] = str(again)
    code, _, err = run_cli(*argv[1:], "-q")
    assert code == 0, err

    def config(run):
        c = json.loads((run / "config.json").read_text())
        c["model"].pop("training", None)  # the best model's run folder and step
        return c

    assert config(again) == config(first)
