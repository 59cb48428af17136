"""The command line: exit codes, one-line errors, exact JSON, no torch for --help, fresh completions."""

import json
import subprocess
import sys

from conftest import REPO, run_cli

from chexcut.models.registry import REGISTRY


def test_help_and_completion_do_not_import_torch():
    code = ("import sys; from chexcut.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.stdout.strip() == "ok", p.stderr


def test_inspect_json_schema():
    rc, out, err = run_cli("inspect", "resnet50", "--json", "-")
    assert rc == 0, err
    a = json.loads(out)
    assert a["arch"] == "resnet50" and a["source"] == "torchvision" and a["image_size"] == 320
    assert a["num_blocks"] == 4
    assert [b["index"] for b in a["blocks"]] == [1, 2, 3, 4]
    assert [b["out_channels"] for b in a["blocks"]] == [256, 512, 1024, 2048]
    assert [b["reduction"] for b in a["blocks"]] == [4, 8, 16, 32]
    assert [t["params"] for t in a["truncations"]][:2] == [23_536_718, 8_557_646]
    assert all(isinstance(t["macs"], int) and t["macs"] > 0 for t in a["truncations"])


def test_inspect_table_and_errors():
    rc, out, err = run_cli("inspect", "densenet121", "--image-size", "224")
    assert rc == 0 and "denseblock1" in out and "4,283,790" in out
    rc, out, err = run_cli("inspect", "resnet5")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "resnet50" in err and "Traceback" not in err
    rc, out, err = run_cli("inspect", "inception_v3", "--image-size", "60")
    assert rc == 2 and "minimum is 75" in err and err.count("\n") == 1


def test_list_json():
    rc, out, err = run_cli("list", "--json", "-")
    assert rc == 0, err
    rows = json.loads(out)
    assert len(rows) == len(REGISTRY) == 31 and sum(r["paper"] for r in rows) == 16 and sum(r["test"] for r in rows) == 2
    r50 = next(r for r in rows if r["arch"] == "resnet50")
    assert r50["params"] == 25_557_032 and r50["top1"] == 76.13


def test_truncate_then_inspect_file(tmp_path):
    out_file = tmp_path / "r50-d2.safetensors"
    rc, out, err = run_cli("truncate", "resnet50", "--drop", "2", "-o", out_file, "--weights", "none", "--json", "-")
    assert rc == 0, err
    res = json.loads(out)
    assert res["model"]["drop"] == 2 and res["truncated"]["params"] == 1_452_110
    rc, out, err = run_cli("inspect", out_file, "--json", "-")
    assert rc == 0 and json.loads(out)["model"]["keep"] == 2
    # existing output without --force: refused, file untouched
    before = out_file.read_bytes()
    rc, out, err = run_cli("truncate", "resnet50", "--drop", "1", "-o", out_file, "--weights", "none")
    assert rc == 2 and "--force" in err and out_file.read_bytes() == before
    rc, _, err = run_cli("truncate", "resnet50", "--drop", "9", "-o", tmp_path / "x.safetensors", "--weights", "none")
    assert rc == 2 and "valid 0..3" in err and not (tmp_path / "x.safetensors").exists()
    rc, _, err = run_cli("truncate", "resnet50", "-o", tmp_path / "no" / "x.safetensors", "--weights", "none")
    assert rc == 2 and "does not exist" in err
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_text("not a model")
    rc, _, err = run_cli("inspect", bogus)
    assert rc == 2 and "not a chexcut model file" in err
    assert list(tmp_path.glob(".*tmp")) == []


def test_completions_are_fresh():
    sys.path.insert(0, str(REPO / "completions"))
    try:
        from generate import FILES, scripts
    finally:
        sys.path.pop(0)
    for name, text in scripts().items():
        assert (REPO / "completions" / name).read_text() == text, f"completions/{name} is stale: run python completions/generate.py"
    assert set(FILES.values()) == set(scripts())


def test_debug_shows_the_traceback_and_keeps_the_exit_code():
    rc, out, err = run_cli("--debug", "inspect", "resnet5")
    assert rc == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("chexcut: error: unknown")


def test_the_console_script_exits_with_the_codes_main_returns():
    """The one check of the real process: ``python -m chexcut`` maps a user error to one line and exit 2, and
    prints its version with exit 0 (every other test calls ``chexcut.cli.main`` in-process)."""
    from conftest import run_process

    rc, out, err = run_process("inspect", "resnet5")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "resnet50" in err
    rc, out, _ = run_process("--version")
    assert rc == 0 and out.startswith("chexcut ")


def test_the_guide_lists_every_declared_training_option():
    """The guide's finetune section (docs/guides/reproduce-chextransfer.md) names each option of the one declaration
    (TRAIN_OPTIONS), and finetune's --help shows each with its declared bounds."""
    from chexcut.choices import BOUNDS
    from chexcut.training.config import TRAIN_OPTIONS

    guide = (REPO / "docs" / "guides" / "reproduce-chextransfer.md").read_text()
    section = guide[guide.index("## finetune"):guide.index("## study and report")]
    assert [o.flag for o in TRAIN_OPTIONS if f"`{o.flag}" not in section and f" {o.flag}" not in section] == []
    rc, out, _ = run_cli("finetune", "--help")
    assert rc == 0
    for o in TRAIN_OPTIONS:
        assert o.flag.split("/")[0] in out, o.flag
        if o.bound and BOUNDS[o.name][1] is not None:
            assert f"<={BOUNDS[o.name][1]}" in out, o.name
