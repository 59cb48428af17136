"""The model card's one hand-written input: the ``--about`` YAML (intended use, limitations and the items no tool
can know), read with bounded work whatever the file holds."""

from __future__ import annotations

from pathlib import Path

from chexcut.errors import ChexcutError

ABOUT_KEYS = ("title", "intended_use", "intended_users", "out_of_scope", "limitations", "study_design", "study_goal",
              "eligibility", "deidentification", "acquisition", "reference_standard", "reference_standard_rationale",
              "annotators", "annotation_tools", "test_set_annotation", "rater_variability", "explainability", "sample_size", "health_inequalities", "dates", "setting",
              "treatments", "ethics", "funding", "conflicts", "protocol", "registration", "data_availability",
              "public_involvement", "next_steps")


#: Bounds of the ``--about`` YAML: a few paragraphs of text per key, read with bounded work whatever the file holds.
ABOUT_MAX_BYTES, ABOUT_MAX_DEPTH = 1_000_000, 20


def read_about(path) -> dict:
    """The ``--about`` YAML: a mapping of the keys in :data:`ABOUT_KEYS` to text (one line per wrong thing).

    Read with bounded work: at most :data:`ABOUT_MAX_BYTES`, nesting at most :data:`ABOUT_MAX_DEPTH` deep, and no
    aliases (``*name``: a "billion laughs" file expands a few lines of aliases into gigabytes)."""
    import yaml

    from chexcut.reading import parse_yaml

    if path is None:
        return {}
    try:
        if Path(path).stat().st_size > ABOUT_MAX_BYTES:
            raise ChexcutError(f"{path}: {Path(path).stat().st_size:,} bytes; the --about YAML holds at most "
                               f"{ABOUT_MAX_BYTES:,}")
        data = parse_yaml(Path(path).read_text(encoding="utf-8"), path, ABOUT_MAX_DEPTH, "write each text out",
                          "; it is a mapping of keys to text")
    except FileNotFoundError:
        raise ChexcutError(f"--about file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ChexcutError(f"{path} is not readable YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ChexcutError(f"{path}: the YAML must be a mapping of keys to text (e.g. intended_use: ...)")
    unknown = sorted(set(map(str, data)) - set(ABOUT_KEYS))
    if unknown:
        raise ChexcutError(f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join(ABOUT_KEYS)})")
    return {k: " ".join(str(v).split()) for k, v in data.items() if v is not None and str(v).strip()}
