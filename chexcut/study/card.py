"""A model card filled from a run or a study: everything chexcut knows about the data, the model, its training,
selection and evaluation, with the CLAIM and TRIPOD+AI checklists saying where each item is answered.

The only hand-written input is a short YAML (``--about``): intended use and users, limitations, and the items no
tool can know (reference standard, annotators, ethics, funding, registration, ...). An item neither the run nor
the YAML answers says "needs the authors", never a guess. Numbers are copied from the run's files (config.json,
state.json, eval.json, external/*.json, a study's report), never recomputed; :func:`build_card` returns the card
as data (``--json``), :func:`render` writes Markdown and HTML from it with the package's Jinja2 templates (one
structure, two formats; the HTML embeds its images).
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path

from chexcut.errors import ChexcutError
from chexcut.rundir import RunDir
from chexcut.study.table import md_text

NEEDS = "needs the authors"
CHECKLISTS = {"claim": ("CLAIM 2024 (Checklist for AI in Medical Imaging; Tejani et al., Radiology: AI 2024)",
                        "claim.csv"),
              "tripod_ai": ("TRIPOD+AI (Collins et al., BMJ 2024)", "tripod_ai.csv")}
def _section(key: str, title: str, paragraphs=(), tables=(), images=()) -> dict:
    return {"key": key, "title": title, "paragraphs": [p for p in paragraphs if p], "tables": list(tables),
            "images": list(images)}


def _table(columns: list[str], rows: list[list]) -> dict:
    return {"columns": columns, "rows": [[_cell(c) for c in r] for r in rows]}


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _auroc(m) -> str:
    """An AUROC with its CI: a label's (:class:`~chexcut.evaluation.result.LabelResult`), a mean's
    (:class:`~chexcut.evaluation.result.Mean`), or a JSON object's (a subgroup's mean)."""
    if m is None or isinstance(m, dict):
        m = m or {}
        return _ci(m.get("auroc"), m.get("ci_low"), m.get("ci_high"))
    return _ci(m.auroc, m.ci_low, m.ci_high)


def _ci(v, lo, hi) -> str:
    """An estimate with its interval, 4 decimals (as the evaluation's tables print them)."""
    return ("n/a" if v is None else f"{v:.4f}") + ("" if lo is None or hi is None else f" [{lo:.4f}, {hi:.4f}]")


# ----------------------------------------------------------------------------- what the run knows

def _run_facts(run: Path) -> dict:
    rd = RunDir(run)
    cfg, ev = rd.read_config(), rd.read_eval()
    if cfg is None:
        raise ChexcutError(f"{run} is not a finetune run (no readable config.json)")
    if ev is None:
        raise ChexcutError(f"{run} has no eval.json: evaluate it first (chexcut evaluate {run} --json {run}/eval.json)")
    from chexcut.fileio import sha256_file
    from chexcut.study.collect import checked

    ev, why = checked(cfg, ev, "eval.json")
    if why:
        raise ChexcutError(f"{run}: {why}")
    external, unusable = {}, []
    for name in rd.external_names():  # a damaged external/NAME.json is named in the card, never a crash
        e = rd.read_eval(name)
        e, problem = (None, "unreadable") if e is None else checked(cfg, e, f"external/{name}.json")
        if problem:
            unusable.append(f"external/{name}.json: {problem}")
        else:
            external[name] = e
    return {"run": run, "config": cfg, "eval": ev, "state": rd.read_state(), "external": external,
            "unusable": unusable, "model_sha256": sha256_file(rd.best) if rd.best.is_file() else None}


def _model_section(f: dict, study: dict | None) -> dict:
    m = f["config"]["model"]
    w = m.get("weights") or {}
    init = {"none": "random initialisation (no pretrained weights)", "imagenet": "ImageNet-pretrained weights",
            "source": f"the pretraining source {w.get('name')} ({w.get('layout')} layout, from "
                      f"{w.get('path') or w.get('id') or 'its library'})"}.get(
        w.get("kind"), f"weights from {w.get('path') or w.get('kind')}")
    if w.get("id"):
        init += f" ({w['id']})"
    if w.get("sha256"):
        init += f" (sha256 {w['sha256']})"
    from chexcut.models.weights import licence_note

    licence = w.get("license") or ("none (random initialisation)" if w.get("kind") == "none" else "not recorded")
    if licence_note(w):
        licence += ": NON-COMMERCIAL; the model inherits these terms"
    rows = [["architecture", m["arch"]], ["blocks kept", f"{m['keep']} of {m['num_blocks']} (drop {m['drop']})"],
            ["parameters", f"{m['params']:,}"], ["input channels", m["in_chans"]],
            ["outputs", f"{len(m['labels'])} sigmoid outputs: {', '.join(m['labels'])}"], ["initialisation", init],
            ["weights licence", licence], ["pooling", m.get("pool", "avg")],
            ["model file", f"{f['run']}/best.safetensors (sha256 {f['model_sha256']})"]]
    paras = []
    if study:
        paras.append(f"Chosen from a study of {study['runs']} runs (architectures {', '.join(study['archs'])}; weights "
                     f"{', '.join(study['weights'])}; drops {', '.join(map(str, study['drops']))}): the configuration "
                     f"with the highest 5-task mean AUROC on the internal validation rows.")
    return _section("model", "Model", paras, [_table(["", ""], rows)])


def _data_sections(f: dict) -> list[dict]:
    d, ev = f["config"]["data"], f["eval"]
    src = ev.evaluation_set
    data_rows = [["data set", d.get("dataset") or "chexpert (CheXpert layout)"], ["folder", d["dir"]],
                 ["label files' fingerprint (sha256)", d.get("fingerprint")],
                 ["labels", ", ".join(d.get("labels") or [])], ["views", d.get("views")],
                 ["uncertain (-1) labels", d.get("uncertain")], ["blank labels", d.get("blank")]]
    if d.get("csv"):
        data_rows.insert(2, ["label CSV", d["csv"]])
    partitions = [["train", d.get("train_images"), "; ".join(n for n in d.get("notes") or [] if n.startswith("train"))],
                  ["valid (model selection and internal evaluation)", d.get("valid_images"),
                   "; ".join(n for n in d.get("notes") or [] if not n.startswith("train"))]]
    overlap = src.get("overlap") or {}
    level = ("patient level: the validation rows share no image and no patient with the training rows (checked by "
             "chexcut evaluate)" if overlap.get("checked") and not overlap.get("images") and not overlap.get("patients")
             else "see the evaluation's overlap record")
    return [
        _section("data", "Data", ["Every selected row and image is listed by the data set's files; an image missing "
                                  "from disk is an error unless the run was started with --skip-missing."
                                  + (" The run skipped missing images." if f["config"].get("skip_missing") else ""),
                                  "Uncertain and blank labels follow the policies in the table; a label the data set "
                                  "never annotates is not counted anywhere."], [_table(["", ""], data_rows)]),
        _section("partitions", "Partitions", [f"Disjoint at the {level}."],
                 [_table(["partition", "images", "how"], partitions)]),
        _demographics(f["config"]),
    ]


def _demographics(cfg: dict) -> dict:
    """Sex and age of each partition's rows, read from the data set's files (its index or CSVs) when present."""
    import dataclasses

    import pandas as pd

    from chexcut.data.datasets import read_index, resolve
    from chexcut.data.tables import DataOptions, load_split

    d = cfg["data"]
    opts = dataclasses.replace(DataOptions.from_json(d), labels=None)
    rows, why = [], None
    try:
        name = resolve(d["dir"], opts.dataset, opts.csv)[1]
        if name and name != "chexpert":
            frame = read_index(Path(d["dir"]), name, opts.label_map)[0]
        else:
            from chexcut.data.tables import label_files
            from chexcut.reading import read_csv

            frame = pd.concat([read_csv(p, text=[opts.path_col]) for p in label_files(d["dir"], opts) if p.is_file()])
            frame = frame.rename(columns={opts.path_col: "Path"})
        if not {"Sex", "Age"} & set(frame.columns):
            why = "the data set's files have no Sex or Age column"
        frame = frame.drop_duplicates("Path").set_index("Path")
        for split in ("train", "valid"):
            paths = load_split(d["dir"], split, opts).paths
            sub = frame.reindex(paths)
            sexes = sub["Sex"].fillna("unknown").astype(str).value_counts() if "Sex" in sub else pd.Series(dtype=int)
            ages = pd.to_numeric(sub["Age"], errors="coerce") if "Age" in sub else pd.Series(dtype=float)
            rows.append([split, len(paths), ", ".join(f"{k} {v}" for k, v in sexes.items()) or "n/a",
                         "n/a" if ages.dropna().empty else f"{ages.median():.0f} ({ages.min():.0f}-{ages.max():.0f})"])
    except (ChexcutError, OSError, KeyError, ValueError) as e:
        why = f"the data could not be read ({e})"
    if why or not rows:
        return _section("demographics", "Demographics per partition", [f"{NEEDS}: {why or 'no rows'}."])
    return _section("demographics", "Demographics per partition", [],
                    [_table(["partition", "images", "sex", "age median (range)"], rows)])


def _ensemble_section(f: dict, study: Path | None) -> dict:
    """What the evaluation is of: an ensemble (``evaluate RUN --ensemble ...`` wrote it) is described as one."""
    e = f["eval"].section("ensemble")
    if isinstance(e, dict) and isinstance(e.get("members"), list):
        weights = e.get("weights")
        how = f"{e.get('average', 'probabilities')} averaged" + (
            f" with weights {', '.join(map(_cell, weights))}" if isinstance(weights, list) else ", equal weights")
        return _section("ensemble", "Ensembling", [
            f"The results below are of an ensemble of {len(e['members'])} models ({how}), not of one model: "
            f"{'; '.join(map(str, e['members']))}. Its best member alone: {e.get('best_member')}; the comparison "
            f"with it is in the paired results. The model file described above is the first member."])
    return _section("ensemble", "Ensembling", ["No ensemble: one model." if not study else
                                               "Seed ensembles per configuration and the ensemble of all "
                                               "configurations are in the study's report (chexcut report)."])


def _preprocessing_section(f: dict) -> dict:
    m, t = f["config"]["model"], f["config"]["train"]
    n = m.get("normalisation") or {}
    return _section("preprocessing", "Preprocessing", [
        f"Each image is decoded once to one grey uint8 channel (DICOM: Modality and VOI LUT applied, MONOCHROME1 "
        f"inverted), resized to {m['image_size']} x {m['image_size']} ({t.get('resize', 'squash')}), cached, and "
        f"normalised on the device with mean {n.get('mean')} and std {n.get('std')}"
        + (" (replicated to 3 channels)." if m["in_chans"] == 3 else ".")])


def _training_sections(f: dict) -> list[dict]:
    t, st = f["config"]["train"], f["state"] or {}
    best = st.get("best") or {}
    rows = [[k, v] for k, v in t.items() if v is not None]
    return [
        _section("training", "Training", [
            "Masked binary cross-entropy over the outputs (a label a row does not count is masked out); no class "
            "weighting or resampling. Model selection: best.safetensors is the step with the highest validation mean "
            f"AUROC of the 5 competition labels (every evaluable label when none is), validated every "
            f"{t.get('val_every')} steps; chosen at step {best.get('step')} with {_cell(best.get('mean_auroc'))}."],
            [_table(["setting", "value"], rows)]),
    ]


def _results_sections(f: dict, plots: list) -> list[dict]:
    ev = f["eval"]
    rows = [[r.label, r.n_pos, r.n_neg, _auroc(r), r.not_evaluable or ""] for r in ev.labels]
    names = {"mean_competition": "5-task mean", "mean_all": "mean of all evaluable"}
    for key, m in ev.means:
        rows.append([names[key], "", "", _auroc(m), m.get("interval_note", "") if m else ""])
    stats = (f"AUROC per label with {ev.ci:.0%} percentile bootstrap intervals ({ev.bootstrap} replicates, "
             f"resampling clusters by {ev.cluster}, seed {ev.seed}; evaluated at the {ev.level} level); an "
             f"interval is withheld when fewer than 90% of the replicates drew both classes. Paired comparisons use "
             f"the same resamples (or DeLong); p-values of a family are Holm-adjusted beside the raw ones. chexcut's "
             f"AUROC, CIs and DeLong tests are tested equal to R's pROC and scikit-learn.")
    out = [_section("statistics", "Statistical methods", [stats]),
           _section("results", f"Results on {ev.evaluation_set.get('description', 'the evaluation set')}",
                    [f"{ev.n} rows evaluated."], [_table(["label", "positives", "negatives", "AUROC [CI]", "note"],
                                                            rows)], plots)]
    return out


def _extra_sections(f: dict) -> list[dict]:
    ev, out = f["eval"], []
    ext = [[n, e.evaluation_set.get("dataset"), e.n, _auroc(e.mean_competition),
            ", ".join(r.label for r in e.labels if str(r.not_evaluable or "").startswith("not annotated"))]
           for n, e in sorted(f["external"].items()) if e]
    notes = [f"Not shown, damaged: {u}." for u in f["unusable"]] or ([] if ext else [
        f"{NEEDS}: no external evaluation was run (chexcut evaluate RUN --data SET:DIR, or study plan --external)."])
    out.append(_section("external", "External validation", notes,
        [_table(["set", "data set", "rows", "5-task AUROC [CI]", "not annotated there"], ext)] if ext else []))
    gaps = [[g["by"], " vs ".join(g["groups"]), g["label"], _ci(g.get("delta"), g.get("ci_low"), g.get("ci_high")),
             _cell(g.get("p")), _cell(g.get("p_holm"))]
            for g in ev.section("subgroup_gaps") or [] if g["label"] == "mean_competition"]
    groups = [[s["by"], s["group"], s["n"], _auroc(s.get("mean_competition"))] for s in ev.section("subgroups") or []]
    err = [[e["by"], e["group"], e["label"], _ci(e.get("fnr"), e.get("fnr_ci_low"), e.get("fnr_ci_high")),
            _ci(e.get("fpr"), e.get("fpr_ci_low"), e.get("fpr_ci_high"))] for e in ev.section("error_rates") or []]
    tables = [t for t, rows in ((_table(["by", "group", "rows", "5-task AUROC [CI]"], groups), groups),
                                (_table(["by", "groups", "label", "AUROC gap [CI]", "p", "p (Holm)"], gaps), gaps),
                                (_table(["by", "group", "label", "FNR [CI]", "FPR [CI]"], err), err)) if rows]
    out.append(_section("subgroups", "Subgroups and robustness", [] if tables else [
        f"{NEEDS}: no subgroup analysis was run (chexcut evaluate --by COLUMN)."], tables))
    cal = [[c["label"], _ci(c.get("brier"), c.get("brier_ci_low"), c.get("brier_ci_high")),
            _ci(c.get("ece"), c.get("ece_ci_low"), c.get("ece_ci_high")),
            _ci(c.get("slope"), c.get("slope_ci_low"), c.get("slope_ci_high"))]
           for c in (ev.section("calibration") or {}).get("labels", []) if c.get("brier") is not None]
    out.append(_section("calibration", "Calibration", [] if cal else [f"{NEEDS}: calibration was not computed."],
                        [_table(["label", "Brier [CI]", "ECE [CI]", "recalibration slope [CI]"], cal)] if cal else []))
    ops = [[p["label"], p["rule"], _cell(p.get("threshold")),
            _ci(p.get("sensitivity"), p.get("sensitivity_ci_low"), p.get("sensitivity_ci_high")),
            _ci(p.get("specificity"), p.get("specificity_ci_low"), p.get("specificity_ci_high"))]
           for p in ev.section("operating_points") or [] if p.get("sensitivity") is not None]
    out.append(_section("operating", "Model output and operating points", [
        "The model outputs one probability per label (sigmoid)." if ops else
        f"{NEEDS}: the model outputs one probability per label (sigmoid); no operating threshold was evaluated "
        f"(chexcut evaluate --at-specificity S, or --thresholds RUN)."],
        [_table(["label", "rule", "threshold", "sensitivity [CI]", "specificity [CI]"], ops)] if ops else []))
    dc = ev.section("decision_curve")
    dcr = [[x["label"], _cell(x.get("prevalence")), x.get("beneficial_from"), x.get("beneficial_to")]
           for x in (dc or {}).get("labels", []) if "model" in x]
    out.append(_section("decision", "Clinical utility (decision curves)", [] if dc else [
        f"{NEEDS}: no decision curve was computed (chexcut evaluate --decision-curve)."],
        [_table(["label", "prevalence", "net benefit above treat-all and treat-none from", "to"], dcr)] if dc else []))
    fl = [[x["label"], _cell(x.get("threshold")), x.get("rule"), x.get("n_false_positives"), x.get("n_false_negatives"),
           ", ".join(c["key"] for c in x.get("false_positives", [])[:3])]
          for x in ev.section("failures") or [] if "threshold" in x]
    out.append(_section("failures", "Failure analysis", [] if fl else [
        f"{NEEDS}: no failure analysis was run (chexcut evaluate --failures N [--failure-images DIR])."],
        [_table(["label", "threshold", "rule", "false positives", "false negatives", "most confident FPs"], fl)]
        if fl else []))
    return out


def _software_section(f: dict) -> dict:
    v = f["config"].get("versions") or {}
    return _section("software", "Software", ["Trained with " + ", ".join(f"{k} {x}" for k, x in v.items()) + "."])


def _reproduce_section(f: dict, study: Path | None) -> dict:
    from chexcut.training.reproduce import finetune_command

    cfg, run = f["config"], f["run"]
    cmds = ([f"chexcut study run {study}", f"chexcut report {study} -o report"] if study else [
        finetune_command(cfg, run),
        f"chexcut evaluate {run} --bootstrap {f['eval'].bootstrap} --json {run}/eval.json"])
    return _section("reproduce", "How to reproduce", ["The exact commands (the run's config.json holds every "
                                                      "setting; predictions come from chexcut evaluate):"],
                    [_table(["command"], [[c] for c in cmds])])


def _checklists(sections: list[dict], about: dict) -> dict:
    answered = {s["key"] for s in sections if s["tables"] or not any(p.startswith(NEEDS) for p in s["paragraphs"])}
    out = {}
    for key, (title, fname) in CHECKLISTS.items():
        rows = []
        with open(Path(__file__).parent / "checklists" / fname, newline="", encoding="utf-8") as fh:
            for item in csv.DictReader(fh):
                how, _, name = item["answered_by"].partition(":")
                where = (f"card: {next(s['title'] for s in sections if s['key'] == name)}"
                         if how == "card" and name in answered else
                         f"the authors (about: {name})" if how == "yaml" and name in about else NEEDS)
                rows.append({"item": item["item"], "section": item["section"], "topic": item["topic"], "where": where})
        out[key] = {"title": title, "items": rows}
    return out


def build_card(target: Path, about: dict | None = None, plots: list | None = None) -> dict:
    """The card of a run (its eval.json) or a study (its best configuration's run, and the study's grid)."""
    return _build(target, about, plots)[0]


def _build(target: Path, about: dict | None = None, plots: list | None = None) -> tuple[dict, dict | None]:
    """(the card, the study's report or None). A run file damaged deeper than :func:`collect.damaged` checks (a
    key missing, text where a number belongs) is one line naming the run's files, never an internal error."""
    try:
        return _assemble(Path(target), about or {}, plots)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ChexcutError(f"{target}: the run's config.json or eval.json is damaged ({type(e).__name__}: "
                           f"{str(e)[:80]}); evaluate the run again") from None


def _assemble(target: Path, about: dict, plots: list | None) -> tuple[dict, dict | None]:
    from chexcut.study.plan import PLAN, load_plan

    study, study_info, report = None, None, None
    if (target / PLAN).is_file():
        from chexcut.study.findings import build_report

        plan = load_plan(target)
        report = build_report([target], bootstrap=0)
        best = max((r for r in report["results"] if r["auroc"] is not None), key=lambda r: r["auroc"], default=None)
        if best is None:
            raise ChexcutError(f"{target}: no evaluated run to describe")
        study, run = target, Path(best["run_dirs"][0])
        study_info = {"runs": report["runs"], "archs": plan["archs"], "weights": plan["weights"], "drops": plan["drops"]}
    else:
        run = target
    f = _run_facts(run)
    intended = [about.get(k, NEEDS) for k in ("intended_use", "intended_users", "out_of_scope", "limitations")]
    sections = [
        _section("intended", "Intended use and limitations", [], [_table(["", ""], [
            ["intended use", intended[0]], ["intended users", intended[1]], ["out of scope", intended[2]],
            ["limitations", intended[3]]])]),
        _model_section(f, study_info), *_data_sections(f), _preprocessing_section(f), *_training_sections(f),
        _ensemble_section(f, study),
        *_results_sections(f, plots or []), *_extra_sections(f), _software_section(f), _reproduce_section(f, study)]
    card = {"title": about.get("title") or f"Model card: {f['config']['model']['arch']} "
                                            f"(drop {f['config']['model']['drop']})",
            "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "target": str(target), "run": str(run), "sections": sections, "checklists": _checklists(sections, about),
            "eval": {"n": f["eval"].n, "mean_competition": f["eval"].section("mean_competition"),
                     "labels": {r.label: r.auroc for r in f["eval"].labels}}}
    return card, report


# ----------------------------------------------------------------------------- rendering

def auroc_plot(card: dict, run: Path, path: Path) -> Path:
    """Per-label AUROC with its CI (the card's figure of the results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chexcut.evaluation.result import Evaluation
    from chexcut.fileio import atomic_path

    ev = Evaluation.from_json(RunDir(run).read_eval(), where=f"{run}/eval.json")
    rows = [r for r in ev.labels if r.auroc is not None]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(rows), 3) + 1))
    for k, r in enumerate(rows):
        if r.ci_low is not None:
            ax.plot([r.ci_low, r.ci_high], [k, k], color="tab:blue", lw=2, alpha=0.5)
        ax.plot([r.auroc], [k], "o", color="tab:blue")
    ax.set_yticks(range(len(rows)), [r.label for r in rows])
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="AUROC (95% CI)", xlim=(0, 1), title="AUROC per label")
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def render(card: dict, fmt: str, assets_prefix: str = "") -> str:
    """The card as Markdown (``md``: images linked under ``assets_prefix``, every string through :func:`md_text`)
    or HTML (``html``: images embedded, every string autoescaped by Jinja2)."""
    import base64

    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("chexcut.study", "templates"), autoescape=fmt == "html",
                             keep_trailing_newline=True)

    def image_src(path: str) -> str:
        if fmt == "html":
            return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
        from urllib.parse import quote

        return quote(f"{assets_prefix}{Path(path).name}")  # the folder is named after the user's -o

    env.filters["image_src"] = image_src
    env.filters["md"] = md_text
    return env.get_template(f"card.{fmt}.j2").render(card=card, needs=NEEDS)


def write_card(target: Path, out: Path, about: dict | None = None, html: Path | None = None,
               extra_images=None) -> dict:
    """Build the card of ``target`` and write ``out`` (Markdown, its figures under ``OUT_STEM_files/``) and, with
    ``html``, a self-contained HTML file. ``extra_images``: figures to show too (paths), or for a study a function
    ``(report, folder) -> paths`` drawing them (the report's plots). Returns the card."""
    from chexcut.fileio import atomic_path, write_text

    out = Path(out)
    assets = out.parent / f"{out.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)
    target = Path(target)
    card, report = _build(target, about)
    if callable(extra_images):  # a study's plots, drawn from its report by the caller (a run has none)
        extra_images = extra_images(report, assets) if report is not None else []
    plot = auroc_plot(card, Path(card["run"]), assets / "auroc.png")
    images = [{"path": str(plot), "caption": "AUROC per label with its 95% CI (the evaluated model)"}]
    images += [{"path": str(p), "caption": f"study report: {Path(p).stem.replace('_', ' ')}"}
               for p in extra_images or []]
    next(s for s in card["sections"] if s["key"] == "results")["images"] = images
    write_text(out, render(card, "md", f"{assets.name}/"))
    for i in images:
        if Path(i["path"]).parent != assets:
            import shutil

            with atomic_path(assets / Path(i["path"]).name) as tmp:
                shutil.copyfile(i["path"], tmp)
    if html is not None:
        write_text(Path(html), render(card, "html"))
    return card
