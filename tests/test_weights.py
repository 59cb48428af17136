"""Staging ImageNet weights without internet: a local HTTP mirror (127.0.0.1) and a mirror folder serve
generated state dicts; good files are installed where the libraries look, bad ones refused and removed."""

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from chexcut.models.surgery import build_architecture

NAME = "resnet18-f37072fd.pth"  # torchvision's file name (its hash prefix is the real file's)


def trained_like(model):
    """A model's state dict with BatchNorm statistics (or, without BatchNorm, LayerNorm scales) moved off 0/1, as
    training moves them (a fresh model's are refused as untrained)."""
    gen = torch.Generator().manual_seed(7)
    state = model.state_dict()
    batchnorm = any(k.endswith("running_mean") for k in state)
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=gen) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(1 + torch.rand(v.shape, generator=gen))
        elif not batchnorm and "norm" in k and k.endswith(".weight") and v.ndim == 1:
            v.copy_(1 + torch.randn(v.shape, generator=gen) * 0.1)
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """good / wronghash / truncated / html versions of resnet18's file, and the good file's sha256."""
    root = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(0)
    for kind in ("good", "wronghash", "truncated", "html"):
        (root / kind).mkdir()
    torch.save(trained_like(build_architecture("resnet18")), root / "good" / NAME)
    good = (root / "good" / NAME).read_bytes()
    torch.manual_seed(1)
    torch.save(trained_like(build_architecture("resnet18")), root / "wronghash" / NAME)
    (root / "truncated" / NAME).write_bytes(good[: len(good) // 2])
    (root / "html" / NAME).write_text("<!DOCTYPE html><html><body>Proxy error: login required</body></html>")
    return root, hashlib.sha256(good).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the fixture folder; /short/ announces the full length but sends half; /page/ answers HTML."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "short":
            body = (Path(self.server.root) / "good" / parts[1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        if parts[0] == "page":
            body = b"<html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(files):
    root, _ = files

    class Server(http.server.ThreadingHTTPServer):
        pass

    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    srv = Server(("127.0.0.1", 0), handler)
    srv.root = root
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def env(tmp_path, files, monkeypatch):
    _, sha = files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("CHEXCUT_WEIGHTS_SHA256", f"resnet18={sha}")
    monkeypatch.delenv("CHEXCUT_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_fetch_from_an_http_mirror_then_truncate_offline(server, env, tmp_path):
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--mirror", f"{server}/good", "-q")
    assert rc == 0, err
    assert "overrides the expected sha256" in err  # the test-only override is never silent
    assert _left(env) == [NAME]
    rc, out, err = run_cli("weights", "list", "--json", "-")
    row = next(r for r in json.loads(out) if r["arch"] == "resnet18")
    assert row["cached"] and row["verified"] is True and row["path"] == str(env / NAME)
    other = next(r for r in json.loads(out) if r["arch"] == "resnet34")
    assert not other["cached"] and other["verified"] is None
    rc, out, err = run_cli("truncate", "resnet18", "--drop", "1", "--weights", "imagenet", "-o", tmp_path / "m.safetensors",
                           "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["model"]["weights"]["id"] == "torchvision:resnet18.IMAGENET1K_V1"


@pytest.mark.parametrize("where,why", [("wronghash", "does not match the expected"), ("short", "truncated download"),
                                       ("page", "HTML page"), ("html", "HTML page"), ("missing", "HTTP 404")])
def test_bad_files_are_refused_and_leave_nothing(server, env, where, why):
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--mirror", f"{server}/{where}", "-q")
    assert rc == 2 and why in err and f"{server}/{where}/{NAME}" in err, err
    assert _left(env) == []  # no file, no .part


def test_truncated_file_with_honest_length_fails_the_hash(server, env):
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--mirror", f"{server}/truncated", "-q")
    assert rc == 2 and "does not match" in err and _left(env) == []


def test_mirror_folder_and_staging_with_to(files, env, tmp_path, monkeypatch):
    root, _ = files
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--mirror", root / "good", "--to", tmp_path / "staged", "-q")
    assert rc == 0, err
    assert _left(tmp_path / "staged") == [NAME] and _left(env) == []
    monkeypatch.setenv("CHEXCUT_WEIGHTS_MIRROR", str(tmp_path / "staged"))  # what truncate uses when not cached
    rc, _, err = run_cli("truncate", "resnet18", "--drop", "2", "--weights", "imagenet", "-o", tmp_path / "m.safetensors")
    assert rc == 0, err
    assert _left(env) == [NAME]


def test_offline_without_weights_says_what_to_do(env, tmp_path):
    rc, _, err = run_cli("truncate", "resnet18", "--weights", "imagenet", "-o", tmp_path / "m.safetensors")
    assert rc == 2 and err.count("\n") == 1, err
    assert "chexcut weights fetch resnet18" in err and NAME in err and "--mirror" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_bad_arguments(env, tmp_path):
    rc, _, err = run_cli("weights", "fetch", "resnt18")
    assert rc == 2 and "Did you mean: resnet18" in err
    rc, _, err = run_cli("weights", "fetch")
    assert rc == 2 and "--all or --paper" in err
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--to", tmp_path / "afile")
    assert rc == 2 and "is a file" in err
    blocked = tmp_path / "torch"
    blocked.mkdir(parents=True, exist_ok=True)
    (blocked / "hub").write_text("in the way")  # the cache folder cannot be created
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--mirror", tmp_path)
    assert rc == 2 and "cannot create" in err and "hub" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the check cannot be seen as root")
def test_read_only_cache_folder(env, files):
    root, _ = files
    env.mkdir(parents=True)
    env.chmod(0o555)
    rc, _, err = run_cli("weights", "fetch", "resnet18", "--mirror", root / "good")
    assert rc == 2 and "not writable" in err and str(env) in err


@pytest.fixture
def hub_mirror(tmp_path, monkeypatch):
    """A private Hugging Face cache and chexcut cache, and an empty mirror folder (returned)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("CHEXCUT_CACHE", str(tmp_path / "cx"))
    (tmp_path / "mirror").mkdir()
    return tmp_path / "mirror"


def test_timm_weights_go_into_the_hugging_face_cache(tmp_path, hub_mirror):
    """inception_v4 from a mirror folder: installed in the HF cache layout timm's loader reads."""
    from safetensors.torch import save_file

    mirror = hub_mirror
    torch.manual_seed(0)
    fresh = {k: v.contiguous() for k, v in build_architecture("inception_v4").state_dict().items()}
    save_file(fresh, str(mirror / "inception_v4.tf_in1k.safetensors"))
    # timm publishes no hash for this file: a freshly initialised model of the right shapes is refused
    rc, _, err = run_cli("weights", "fetch", "inception_v4", "--mirror", mirror, "-q")
    assert rc == 2 and "look randomly initialised" in err, err
    state = {k: v.contiguous() for k, v in trained_like(build_architecture("inception_v4")).items()}
    save_file(state, str(mirror / "inception_v4.tf_in1k.safetensors"))
    sha = hashlib.sha256((mirror / "inception_v4.tf_in1k.safetensors").read_bytes()).hexdigest()
    rc, _, err = run_cli("weights", "fetch", "inception_v4", "--mirror", mirror, "-q")
    assert rc == 0, err
    blobs = tmp_path / "hf" / "hub" / "models--timm--inception_v4.tf_in1k" / "blobs"
    assert _left(blobs) == [sha]
    rc, out, _ = run_cli("weights", "list", "--json", "-")
    row = next(r for r in json.loads(out) if r["arch"] == "inception_v4")
    assert row["cached"] and row["verified"] is None  # its structure was checked; no published hash to verify
    rc, out, err = run_cli("truncate", "inception_v4", "--drop", "8", "--weights", "imagenet", "-o",
                           tmp_path / "m.safetensors", "--image-size", "96", "-q")
    assert rc == 0, err


def test_a_vit_from_a_mirror_into_the_hugging_face_cache_with_its_licence(tmp_path, hub_mirror):
    """test_vit (timm's tiny ViT, published at 160 px): a fresh model's file is refused (its LayerNorms never moved);
    a trained one is installed in the hub layout, listed with its licence, and a 64 px model resamples it."""
    import timm
    from safetensors.torch import save_file

    mirror = hub_mirror
    torch.manual_seed(0)
    fresh = timm.create_model("test_vit")
    save_file({k: v.contiguous() for k, v in fresh.state_dict().items()}, str(mirror / "test_vit.r160_in1k.safetensors"))
    rc, _, err = run_cli("weights", "fetch", "test_vit", "--mirror", mirror, "-q")
    assert rc == 2 and "look randomly initialised" in err, err
    save_file({k: v.contiguous() for k, v in trained_like(fresh).items()}, str(mirror / "test_vit.r160_in1k.safetensors"))
    rc, _, err = run_cli("weights", "fetch", "test_vit", "--mirror", mirror, "-q")
    assert rc == 0, err
    rc, out, _ = run_cli("weights", "list", "--json", "-")
    row = next(r for r in json.loads(out) if r["arch"] == "test_vit")
    assert row["cached"] and row["license"] == "apache-2.0"
    rc, out, err = run_cli("truncate", "test_vit", "--drop", "2", "--weights", "imagenet", "-o",
                           tmp_path / "m.safetensors", "--image-size", "64", "--json", "-")
    assert rc == 0, err
    weights = json.loads(out)["model"]["weights"]
    assert weights["kind"] == "imagenet" and weights["license"] == "apache-2.0"
