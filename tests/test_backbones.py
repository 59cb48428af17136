"""The families timm prunes (ViT, DeiT, DINOv2, Swin, ConvNeXt): each declaration against timm's own model."""

import pytest
import timm
import torch

from chexcut.errors import ChexcutError
from chexcut.models.anatomy import anatomy, check_image_size
from chexcut.models.backbone import as_maps, block_modules, prefix_tokens
from chexcut.models.registry import REGISTRY, default_image_size, get_arch
from chexcut.models.surgery import build_architecture, truncate

TIMM_ARCHS = sorted(n for n, a in REGISTRY.items() if a.family.pruning == "timm")


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_parameters_equal_timms_own_pruning_plus_the_new_head(name):
    """For every drop: chexcut's model has the parameters of timm's ``prune_intermediate_layers`` at the same
    block index (its head pruned) plus the new 14-way Linear, and the whole model (drop 0) keeps timm's final
    norm where timm's pruning drops it with the head (ConvNeXt's head norm). Built independently, on meta."""
    arch = get_arch(name)
    size = default_image_size(arch, 224)
    kw = {"img_size": size} if arch.family.sized else {}
    anat = anatomy(name, size)
    for t in anat.truncations:
        with torch.device("meta"):
            ref = timm.create_model(name, **kw)
            whole_head = ref.get_classifier()
            norm_in_head = _params(ref.head.norm) if hasattr(ref.head, "norm") else 0
            ref.prune_intermediate_layers([t.keep - 1], prune_norm=False, prune_head=True)
            ours = truncate(name, drop=t.drop, weights="none", image_size=size)
        width = ref.num_features
        want = _params(ref) + (width + 1) * 14 + (norm_in_head if t.drop == 0 else 0)
        assert getattr(whole_head, "out_features", 0) == (0 if "dinov2" in name else 1000)  # DINOv2: no classifier
        assert _params(ours) == want == t.params, (name, t.drop)
        assert t.out_channels == width


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_declared_blocks_and_output_format_are_timms(name):
    """The declared block paths are timm's ``feature_info`` modules; each block's output has the declared format
    (tokens for a ViT with its prefix tokens, NHWC for Swin, NCHW for ConvNeXt) and its width and reduction."""
    arch = get_arch(name)
    size = default_image_size(arch, 224)
    with torch.device("meta"):
        model = build_architecture(arch, size)
    assert [f["module"] for f in model.feature_info] == [p[-1] for p in arch.family.blocks]
    outs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in block_modules(model, arch, 0)]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    prefix = prefix_tokens(model, arch.family)
    for out, info in zip(outs, model.feature_info):
        grid = size // info["reduction"]
        if arch.family.output == "NLC":
            assert out.shape == (1, prefix + grid * grid, info["num_chs"])
        elif arch.family.output == "NHWC":
            assert out.shape == (1, grid, grid, info["num_chs"])
        else:
            assert out.shape == (1, info["num_chs"], grid, grid)
        assert as_maps(out, arch.family, prefix).shape == (1, info["num_chs"], grid, grid)


def test_prefix_tokens_are_read_from_the_model():
    """The class token, and DINOv2's four register tokens besides it, are left out of the patch grid."""
    assert anatomy("vit_small_patch14_reg4_dinov2", 224).prefix_tokens == 5
    assert anatomy("vit_small_patch14_dinov2", 224).prefix_tokens == 1
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(1, 5, 6).transpose(1, 2)  # (1, 6 tokens, 5 wide)
    maps = as_maps(torch.cat([torch.full((1, 2, 5), -1.0), x[:, :4]], 1), get_arch("test_vit").family, 2)
    assert maps.shape == (1, 5, 2, 2) and (maps >= 0).all()  # the two prefix tokens are gone
    assert torch.equal(maps[0, :, 0, 1], x[0, 1])  # token 1 of the grid: row 0, column 1


def test_weights_carry_preprocessing_and_licence():
    """Normalisation belongs to the weights (timm's pretrained_cfg), not the family: a ViT augreg's is 0.5, a
    ConvNeXt's ImageNet's; the licence is recorded in the model file."""
    vit = truncate("test_vit", drop=1, weights="none", image_size=64).chexcut_spec
    assert vit.preprocess.mean == (0.5, 0.5, 0.5) and vit.pool == "token"
    cnx = truncate("convnext_tiny", drop=3, weights="none", image_size=64).chexcut_spec
    assert cnx.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert anatomy("swin_tiny_patch4_window7_224", 224).weights["license"] == "mit"


def test_token_pooling_is_the_class_token_or_the_patch_mean():
    """``avg`` pools the patch tokens after the final norm (not the class token); ``token`` the class token."""
    torch.manual_seed(0)
    tok = truncate("test_vit", drop=2, weights="none", image_size=64, pool="token").eval()
    avg = truncate("test_vit", drop=2, weights="none", image_size=64, pool="avg").eval()
    assert avg.chexcut_spec.pool == "avg" and tok.chexcut_spec.pool == "token"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = avg.forward_features(x)  # normed tokens
        assert torch.allclose(avg.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1), atol=1e-6)
        assert torch.allclose(tok.forward_head(feats, pre_logits=True), feats[:, 0], atol=1e-6)
    with pytest.raises(ChexcutError, match="--pool token does not apply to convnext_tiny"):
        truncate("convnext_tiny", drop=1, weights="none", pool="token")


def test_inspect_vit_base_at_320():
    """400 patch tokens and the class token, width 768, 12 layers, from the shipped store."""
    from chexcut.models.anatomy_cache import cached_anatomy

    a = cached_anatomy("vit_base_patch16_224", 320, 14)
    assert a["num_blocks"] == 12 and a["unit"] == "layer" and a["output"] == "tokens"
    assert {b["tokens"] for b in a["blocks"]} == {401} and {b["out_channels"] for b in a["blocks"]} == {768}
    assert a["blocks"][0]["spatial"] == [20, 20] and a["prefix_tokens"] == 1
    assert [t["drop"] for t in a["truncations"]] == list(range(12))


def test_sizes_a_family_cannot_take_are_one_line():
    with pytest.raises(ChexcutError, match="not a multiple of vit_small_patch14_dinov2's 14 px patches: use 308 or 322"):
        check_image_size("vit_small_patch14_dinov2", 320)
    with pytest.raises(ChexcutError, match="multiple of swin"):
        check_image_size("swin_tiny_patch4_window7_224", 100)
    check_image_size("swin_tiny_patch4_window7_224", 320)  # timm pads a window that does not divide the grid
    with pytest.raises(ChexcutError, match="not a multiple"):
        truncate("vit_small_patch14_dinov2", drop=1, weights="none", image_size=320)


def test_imagenet_weights_at_another_size_are_resampled_by_timm(tmp_path, monkeypatch):
    """A ViT's 224 px checkpoint (in the hub cache layout, as `chexcut weights fetch` leaves it) loads into a model
    built for 64 px: timm's checkpoint filter resamples the position embeddings; the licence is recorded."""
    from safetensors.torch import save_file

    from chexcut.models.libraries import TIMM

    arch = get_arch("test_vit")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("CHEXCUT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    published = timm.create_model("test_vit")  # its own 160 px size, as timm publishes it
    part = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(part))
    TIMM.install(arch, part)
    model = truncate("test_vit", drop=0, weights="imagenet", image_size=64)
    assert model.pos_embed.shape == (1, 17, 64)
    assert torch.equal(model.blocks[0].attn.qkv.weight, published.blocks[0].attn.qkv.weight)
    assert model.chexcut_spec.weights["license"] == "apache-2.0"
    assert model.chexcut_spec.weights["id"] == "timm:test_vit.r160_in1k"


@pytest.fixture(scope="module")
def masked_phantom64(tmp_path_factory):
    from chexcut.data.phantom import make_phantom

    d = tmp_path_factory.mktemp("pm64")
    make_phantom(d, n=300, image_size=64, seed=3, masks=True)
    return d


@pytest.mark.parametrize("arch,drop", [("test_vit", 1), ("swin_tiny_patch4_window7_224", 1), ("test_convnext", 1)])
def test_a_vit_a_swin_and_a_convnext_go_through_every_command(arch, drop, masked_phantom64, tmp_path):
    """truncate -> finetune on phantom data -> evaluate -> explain (a judged pointing game and randomisation check)
    -> export (ONNX parity) -> bench, at 64 px on a CPU; the model file evaluates identically in a fresh process."""
    import json

    from conftest import run_cli, run_process

    model, run = tmp_path / "m.safetensors", tmp_path / "run"
    rc, out, err = run_cli("truncate", arch, "--drop", str(drop), "--weights", "none", "--image-size", "64", "-o",
                           model, "--json", "-")
    assert rc == 0, err
    spec = json.loads(out)["model"]
    assert spec["image_size"] == 64 and spec["pool"] == get_arch(arch).family.pools[0]
    rc, out, err = run_cli("finetune", model, "--data", masked_phantom64, "--out", run, "--image-size", "64",
                           "--epochs", "2", "--max-steps", "6", "--batch-size", "32", "--lr", "1e-3", "--workers", "0",
                           "--precise-bn", "32", "-q")
    assert rc == 0, err
    rc, out, err = run_cli("evaluate", run, "--bootstrap", "50", "--json", "-")
    assert rc == 0, err
    first = json.loads(out)
    assert 0 <= first["mean_competition"]["auroc"] <= 1
    rc, out, err = run_cli("explain", run, "--data", masked_phantom64, "--split", "train", "--check", "--labels",
                           "Cardiomegaly,Pleural Effusion", "--limit", "2", "--out", tmp_path / "maps", "--json", "-")
    assert rc == 0, err
    res = json.loads(out)
    assert {p["verdict"] for p in res["pointing_game"].values()} <= {"passed", "failed"}  # judged, both labels
    assert res["randomisation"]["verdict"] in ("passed", "failed") and len(res["files"]) == 4
    rc, out, err = run_cli("export", run, "-o", tmp_path / "m.onnx", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["max_abs_diff"] <= 1e-4
    rc, out, err = run_cli("bench", run, "--batch", "1,2", "--max-time", "1", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["levels"][0]["params"] == json.loads((run / "config.json").read_text())["model"]["params"]
    # a fresh process: the preprocessing comes from the model file, nothing passed
    rc, out, err = run_process("evaluate", run, "--bootstrap", "50", "--json", "-")
    assert rc == 0, err
    again = json.loads(out)
    assert again["mean_competition"] == first["mean_competition"] and again["labels"] == first["labels"]


def test_a_study_mixes_a_cnn_a_vit_and_a_convnext(phantom, tmp_path):
    """plan -> run -> report with resnet18, test_vit and test_convnext; a size a ViT cannot take is refused at
    plan time in one line, before any run."""
    import json

    from conftest import run_cli

    study = tmp_path / "study"
    code, _, err = run_cli("study", "plan", "--data", phantom, "--out", study, "--archs",
                           "resnet18,test_vit,test_convnext", "--weights", "none", "--drops", "0,2", "--bootstrap", "20",
                           "--max-steps", "2", "--image-size", "40", "--batch-size", "8", "--workers", "0", "--device",
                           "cpu")
    assert code == 2 and "--archs test_vit" in err and "not a multiple of test_vit's 16 px patches: use 32 or 48" in err
    assert not (study / "plan.json").exists()
    code, _, err = run_cli("study", "plan", "--data", phantom, "--out", study, "--archs",
                           "resnet18,test_vit,test_convnext", "--weights", "none", "--drops", "0,2", "--bootstrap", "20",
                           "--max-steps", "2", "--image-size", "48", "--batch-size", "8", "--workers", "0", "--device",
                           "cpu")
    assert code == 0, err
    code, _, err = run_cli("study", "run", study, "-q")
    assert code == 0, err
    code, _, err = run_cli("report", study, "-o", tmp_path / "rep")
    assert code == 0, err
    rep = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert {(r["arch"], r["drop"]) for r in rep["results"]} == {(a, d) for a in ("resnet18", "test_vit", "test_convnext")
                                                              for d in (0, 2)}
    vit = next(r for r in rep["results"] if r["arch"] == "test_vit" and r["drop"] == 2)
    assert vit["params"] == anatomy("test_vit", 48).truncations[2].params
    assert "test_vit" in (tmp_path / "rep" / "report.md").read_text()


def test_the_run_fits_its_settings_to_the_architecture_before_writing(phantom, tmp_path):
    """The recipe's 320 px becomes 322 for a /14 DINOv2 (with a note); a size given by hand is the user's; a
    ViT model file fine-tuned at another size records the parameters of the model it holds; --layer-decay on a
    torchvision-style CNN is one line before any file is written, and at plan time."""
    from conftest import run_cli

    from chexcut.training.config import TrainConfig, fit_to_arch

    cfg = TrainConfig.from_recipe("paper")
    assert "training at 322" in fit_to_arch(cfg, get_arch("vit_small_patch14_dinov2")) and cfg.image_size == 322
    cfg = TrainConfig.from_recipe("paper", image_size=308)
    assert fit_to_arch(cfg, get_arch("vit_small_patch14_dinov2")) is None and cfg.image_size == 308
    model = tmp_path / "vit.safetensors"
    rc, _, err = run_cli("truncate", "test_vit", "--drop", "3", "--weights", "none", "--image-size", "160", "-o", model)
    assert rc == 0, err
    rc, _, err = run_cli("finetune", model, "--data", phantom, "--out", tmp_path / "v", "--image-size", "48",
                         "--max-steps", "2", "--batch-size", "8", "--workers", "0", "-q")
    assert rc == 0, err
    import json

    config = json.loads((tmp_path / "v" / "config.json").read_text())
    assert config["model"]["params"] == anatomy("test_vit", 48).truncations[3].params
    rc, _, err = run_cli("finetune", "resnet18", "--weights", "none", "--data", phantom, "--out", tmp_path / "r",
                         "--layer-decay", "0.7", "--max-steps", "1", "--workers", "0", "-q")
    assert rc == 2 and "--layer-decay needs a family timm groups into layers" in err and not (tmp_path / "r").exists()
    rc, _, err = run_cli("study", "plan", "--data", phantom, "--out", tmp_path / "s", "--archs", "test_vit,resnet18",
                         "--weights", "none", "--layer-decay", "0.7", "--image-size", "48")
    assert rc == 2 and "--archs resnet18: --layer-decay" in err and not (tmp_path / "s" / "plan.json").exists()
