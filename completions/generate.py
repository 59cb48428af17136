"""Regenerate the shell completion scripts: ``python completions/generate.py``.

The scripts call back into ``chexcut`` for candidates, so they only change when the
program name or Typer's completion protocol changes; tests/test_cli.py fails when stale.
"""

from pathlib import Path

from typer._completion_shared import get_completion_script

FILES = {"bash": "chexcut.bash", "zsh": "_chexcut", "fish": "chexcut.fish"}


def scripts() -> dict[str, str]:
    return {
        name: get_completion_script(prog_name="chexcut", complete_var="_CHEXCUT_COMPLETE", shell=shell).strip() + "\n"
        for shell, name in FILES.items()
    }


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, text in scripts().items():
        (here / name).write_text(text)
        print(f"wrote completions/{name}")
