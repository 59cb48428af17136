"""`chexcut export --format hub`: a Hugging Face model folder that plain timm loads (or that says it needs chexcut),
a model card huggingface_hub parses, `--push` through huggingface_hub, and the folder (or its hf-hub: id) as any
command's MODEL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

#: Runs in a process that cannot import chexcut: plain timm loads the folder (through the Hub's cache, offline, as
#: hf-hub:ORG/NAME, and as a local folder) and writes its probabilities on the given preprocessed images.
PLAIN_TIMM = """
import sys
sys.modules["chexcut"] = None  # any import of chexcut fails
import numpy as np, timm, torch
repo, folder, images, out = sys.argv[1:5]
x = torch.from_numpy(np.load(images))
probs = []
for name in ("hf-hub:" + repo, "local-dir:" + folder):
    model = timm.create_model(name, pretrained=True).eval()
    with torch.no_grad():
        probs.append(torch.sigmoid(model(x).double()).numpy())
np.save(out, np.stack(probs))
assert sys.modules["chexcut"] is None and not [m for m in sys.modules if m.startswith("chexcut.")]
"""


def stage_in_hf_cache(folder: Path, cache: Path, repo: str) -> Path:
    """``folder`` as the Hugging Face cache holds a downloaded repository (what `hf download REPO` leaves)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snap)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    return snap


def chexcut_probabilities(folder: Path, images: np.ndarray) -> np.ndarray:
    import torch

    from chexcut.models.modelfile import load_model
    from chexcut.models.source import ModelSource

    model = load_model(ModelSource.parse(str(folder)).require_file("test"))
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(images)).double()).numpy()


def preprocessed(spec, n: int = 3) -> np.ndarray:
    """chexcut's preprocessing of generated grey uint8 images: the model's input."""
    import torch

    size = spec.preprocess.image_size
    grey = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return spec.preprocess.normalise(grey).numpy()


@pytest.mark.parametrize("arch,args", [("resnet18", ["--image-size", "40"]),
                                       ("test_vit", ["--drop", "3", "--image-size", "32"]),
                                       ("test_vit", ["--drop", "4", "--image-size", "32", "--pool", "avg"])])
def test_plain_timm_loads_the_folder_with_chexcuts_probabilities(arch, args, tmp_path):
    from chexcut.models.modelfile import read_spec

    m = tmp_path / "m.safetensors"
    assert run_cli("truncate", arch, *args, "--weights", "none", "-o", m, "-q")[0] == 0
    folder = tmp_path / "hub"
    code, out, err = run_cli("export", m, "--format", "hub", "-o", folder, "--json", "-")
    assert code == 0, err
    res = json.loads(out)
    assert res["loads_in"] == "timm" and sorted(res["files"]) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    spec = read_spec(m)
    assert cfg["architecture"] == arch and cfg["num_classes"] == 14 and cfg["label_names"] == list(spec.labels)
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["mean"] == list(spec.preprocess.mean) and pcfg["std"] == list(spec.preprocess.std)
    assert pcfg["input_size"] == [3, spec.preprocess.image_size, spec.preprocess.image_size]
    assert pcfg["interpolation"] == "bilinear" and cfg["chexcut"]["requires_chexcut"] is False
    if spec.drop:
        assert cfg["model_args"]["depth"] == spec.keep
    images = preprocessed(spec)
    np.save(tmp_path / "x.npy", images)
    cache = tmp_path / "hf"
    stage_in_hf_cache(folder, cache, "someone/cxr-model")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    p = subprocess.run([sys.executable, "-c", PLAIN_TIMM, "someone/cxr-model", str(folder), str(tmp_path / "x.npy"),
                        str(tmp_path / "timm.npy")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    theirs, ours = np.load(tmp_path / "timm.npy"), chexcut_probabilities(folder, images)
    assert theirs.shape == (2, 3, 14)
    assert np.abs(theirs - ours).max() <= 1e-5


def test_a_truncated_resnet_needs_chexcut_which_evaluates_it_and_its_card_parses(run_copy, phantom, tmp_path,
                                                                                    monkeypatch):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    code, _, err = run_cli("evaluate", run_copy, "--bootstrap", "20", "--json", run_copy / "eval.json", "-q")
    assert code == 0, err
    folder = tmp_path / "hub"
    code, out, err = run_cli("export", run_copy, "--format", "hub", "-o", folder, "--json", "-")
    assert code == 0, err
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["chexcut"]["requires_chexcut"] is True and "always builds all 4" in cfg["chexcut"]["why"]
    readme = (folder / "README.md").read_text()
    assert "This folder needs chexcut" in readme and str(run_copy) not in readme  # no local path published
    card = ModelCard.load(folder / "README.md")  # huggingface_hub's parser: the metadata validates offline
    meta = card.data.to_dict()
    assert meta["license"] == "unknown" and meta["pipeline_tag"] == "image-classification"
    assert meta["library_name"] == "chexcut" and "chest-x-ray" in meta["tags"] and meta["datasets"] == ["chexpert"]
    name, results = model_index_to_eval_results(meta["model-index"])
    assert eval_results_to_model_index(name, results) == meta["model-index"]  # a well-formed model-index
    ev = json.loads((run_copy / "eval.json").read_text())
    row = next(r for r in ev["labels"] if r["auroc"] is not None and r["ci_low"] is not None)
    got = next(r for r in results if r.metric_name == f"AUROC {row['label']}")
    assert got.metric_type == "roc_auc" and got.metric_value == row["auroc"]
    assert got.metric_args["ci_low"] == row["ci_low"] and got.metric_args["ci_high"] == row["ci_high"]
    assert got.dataset_split == "valid" and got.task_type == "image-classification"
    # chexcut evaluates the folder, and the same folder staged in the Hugging Face cache as hf-hub:ORG/NAME
    code, out, err = run_cli("evaluate", folder, "--data", phantom, "--bootstrap", "10", "--json", "-", "-q")
    assert code == 0, err
    first = json.loads(out)
    assert first["n"] > 0 and first["evaluation_set"]["kind"] == "unchecked"
    cache = tmp_path / "hf"
    stage_in_hf_cache(folder, cache, "someone/cxr-resnet")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    code, out, err = run_cli("evaluate", "hf-hub:someone/cxr-resnet", "--data", phantom, "--bootstrap", "10",
                             "--json", "-", "-q")
    assert code == 0, err
    assert json.loads(out)["mean_all"]["auroc"] == first["mean_all"]["auroc"]
    code, _, err = run_cli("evaluate", "hf-hub:someone/not-staged", "--data", phantom)
    assert code == 2 and "not in the Hugging Face cache" in err and len(err.strip().splitlines()) == 1


def test_the_card_names_the_upstream_licence_and_base_model():
    from dataclasses import replace

    from huggingface_hub import ModelCard

    from chexcut.deploy.hubcard import base_model, hub_licence, readme
    from chexcut.models.spec import ModelSpec, Preprocess

    timm_weights = {"kind": "imagenet", "id": "timm:test_vit.r160_in1k", "license": "apache-2.0",
                    "url": "https://huggingface.co/timm/test_vit.r160_in1k/resolve/main/model.safetensors"}
    assert base_model(timm_weights) == "timm/test_vit.r160_in1k" and hub_licence(timm_weights) == {"license": "apache-2.0"}
    tv = {"kind": "imagenet", "id": "torchvision:resnet18.IMAGENET1K_V1",
          "license": "bsd-3-clause (torchvision; ImageNet's terms apply to the weights)"}
    assert base_model(tv) == "timm/resnet18.tv_in1k" and hub_licence(tv) == {"license": "bsd-3-clause"}
    rad = {"kind": "source", "name": "rad-dino", "license": "msrla (Microsoft Research License Agreement)"}
    assert base_model(rad) == "microsoft/rad-dino"
    assert hub_licence(rad) == {"license": "other", "license_name": "msrla"}
    assert base_model({"kind": "none"}) is None and hub_licence({"kind": "none"}) == {"license": "unknown"}
    spec = ModelSpec(arch="test_vit", drop=3, labels=("Edema", "Cardiomegaly"), keep=3, num_blocks=6,
                     preprocess=Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3, image_size=32), chexcut_version="0.1.0")
    text = readme(replace(spec, weights=timm_weights), "org/name", None, [], (True, ""))
    data = ModelCard(text).data.to_dict()
    assert data["base_model"] == "timm/test_vit.r160_in1k" and data["license"] == "apache-2.0"
    assert data["library_name"] == "timm" and "model-index" not in data  # no evaluation, no model-index


class StandIn:
    """huggingface_hub.HfApi as a local stand-in: records what would be sent."""

    sent: list = []
    fail: str | None = None

    def create_repo(self, repo_id, repo_type=None, exist_ok=False, **kw):
        StandIn.sent.append(("create_repo", repo_id, repo_type))
        if StandIn.fail:
            raise RuntimeError(StandIn.fail)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, repo_type=None, **kw):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        StandIn.sent.append(("upload_folder", repo_id, sorted(files), files))

        class Commit:
            oid = "c0ffee"

        return Commit()


def test_push_offline_is_one_line_and_keeps_the_folder_and_no_token_is_written(tmp_path, monkeypatch):
    import huggingface_hub

    m = tmp_path / "m.safetensors"
    assert run_cli("truncate", "resnet18", "--weights", "none", "--image-size", "40", "-o", m, "-q")[0] == 0
    sentinel = "hf_SENTINELtoken0123456789"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    folder = tmp_path / "hub"
    code, out, err = run_cli("export", m, "--format", "hub", "-o", folder, "--push", "org/cxr")  # HF_HUB_OFFLINE=1
    assert code == 2 and "no network" in err and len(err.strip().splitlines()) == 1, err
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("chexcut.models.libraries.host_resolves", lambda url: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", StandIn)
    StandIn.sent = []
    code, out, err = run_cli("export", m, "--format", "hub", "-o", folder, "--push", "org/cxr", "--force", "--json", "-")
    assert code == 0, err
    assert json.loads(out)["push"] == {"repo": "org/cxr", "url": "https://huggingface.co/org/cxr", "commit": "c0ffee"}
    (create, upload) = StandIn.sent
    assert create == ("create_repo", "org/cxr", "model") and upload[1] == "org/cxr"
    assert upload[2] == ["README.md", "config.json", "model.safetensors"]
    assert "name: org/cxr" in upload[3]["README.md"].decode() or "# org/cxr" in upload[3]["README.md"].decode()
    for content in upload[3].values():
        assert sentinel.encode() not in content
    for p in folder.rglob("*"):
        assert sentinel.encode() not in p.read_bytes()
    assert sentinel not in out + err
    StandIn.fail = f"401 Unauthorized for token {sentinel}"  # the Hub refuses: one line, the token never shown
    try:
        code, out, err = run_cli("export", m, "--format", "hub", "-o", folder, "--push", "org/cxr", "--force")
    finally:
        StandIn.fail = None
    assert code == 2 and "failed" in err and sentinel not in err and len(err.strip().splitlines()) == 1, err
    assert (folder / "model.safetensors").is_file()


def test_export_hub_refusals(run_copy, tmp_path):
    m = tmp_path / "m.safetensors"
    assert run_cli("truncate", "resnet18", "--weights", "none", "--image-size", "40", "-o", m, "-q")[0] == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "file").write_text("x")
    for args, words in (([m, "-o", tmp_path / "a.onnx", "--push", "org/x"], "apply to --format hub"),
                        ([m, "--format", "hub", "-o", tmp_path / "h", "--push", "no-slash"], "ORG/NAME"),
                        ([m, "--format", "hub", "-o", tmp_path / "full"], "pass --force"),
                        ([m, "--format", "hub", "-o", tmp_path / "file"], "is a file"),
                        ([run_copy, "--format", "hub", "-o", run_copy, "--force"], "input"),
                        ([m, "--format", "hub", "-o", tmp_path / "h", "--onnx", "--push", "a/b/c"], "ORG/NAME")):
        code, _, err = run_cli("export", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert (tmp_path / "full" / "keep.txt").is_file() and not (tmp_path / "h").exists()
    assert (run_copy / "best.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


@pytest.mark.parametrize("arch, drop, size", [("resnet18", 2, 40), ("test_vit", 2, 32)])
def test_truncate_starts_from_a_published_uncut_model(arch, drop, size, tmp_path, monkeypatch):
    """``truncate ARCH --weights FOLDER|hf-hub:ORG/NAME``: a published chexcut model of that architecture, uncut,
    gives the kept blocks their weights (its classifier is replaced by the cut's head) and its preprocessing."""
    from safetensors.torch import load_file

    from chexcut.models.modelfile import read_spec

    full = tmp_path / "full.safetensors"
    assert run_cli("truncate", arch, "--drop", "0", "--weights", "none", "--image-size", str(size), "--seed", "3",
                   "-o", full, "-q")[0] == 0
    folder = tmp_path / "hub"
    code, _, err = run_cli("export", full, "--format", "hub", "-o", folder)
    assert code == 0, err
    cache = tmp_path / "hf"
    stage_in_hf_cache(folder, cache, "someone/cxr-full")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    published = load_file(str(folder / "model.safetensors"))
    for ref in (folder, "hf-hub:someone/cxr-full"):
        cut = tmp_path / f"cut-{len(str(ref))}.safetensors"
        code, _, err = run_cli("truncate", arch, "--drop", str(drop), "--weights", ref, "--image-size", str(size),
                               "-o", cut, "-q")
        assert code == 0, err
        mine, spec = load_file(str(cut)), read_spec(cut)
        by_shape = {}
        for v in published.values():
            by_shape.setdefault(tuple(v.shape), []).append(v)
        backbone = {k: v for k, v in mine.items() if not k.startswith(("head.", "fc."))}
        # every tensor of the cut's stem and kept blocks is one of the published model's (keys differ: a table
        # family's cut holds its blocks under blocks.N)
        assert backbone and all(any(torch.equal(v, w) for w in by_shape.get(tuple(v.shape), [])) for v in backbone.values())
        assert spec.weights["kind"] == "file" and spec.preprocess.mean == read_spec(full).preprocess.mean
    other = "resnet34" if arch == "resnet18" else "resnet18"
    code, _, err = run_cli("truncate", other, "--weights", folder, "-o", tmp_path / "x.safetensors", "-q")
    assert code == 2 and f"is a {arch} model" in err and err.count("\n") == 1
    code, _, err = run_cli("truncate", arch, "--drop", "1", "--weights", "none", "--image-size", str(size), "-o",
                           tmp_path / "d1.safetensors", "-q")
    code, _, err = run_cli("truncate", arch, "--drop", "2", "--weights", tmp_path / "d1.safetensors", "--image-size",
                           str(size), "-o", tmp_path / "y.safetensors", "-q")
    assert code == 2 and "cannot start another cut" in err and not (tmp_path / "y.safetensors").exists()
