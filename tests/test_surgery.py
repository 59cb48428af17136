"""truncate(): weights land in the kept blocks, files are strict, errors are one line."""

import pytest
import torch

from chexcut.errors import ChexcutError
from chexcut.labels import CHEXPERT_LABELS
from chexcut.models.registry import get_arch
from chexcut.models.surgery import build_architecture, normalise_state_dict, truncate


def test_weights_file_values_land_in_kept_blocks(tmp_path):
    src = build_architecture("resnet18")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "r18.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)  # DataParallel prefix
    model = truncate("resnet18", drop=2, weights=path)
    assert torch.equal(model.blocks[1][0][0].conv1.weight, src.layer2[0].conv1.weight)
    assert torch.equal(model.stem[0].weight, src.conv1.weight)
    assert torch.equal(model.stem[1].running_var, src.bn1.running_var)
    assert model.chexcut_spec.weights["kind"] == "file"
    assert len(model.chexcut_spec.weights["sha256"]) == 64


def test_densenet_neck_is_the_pretrained_transition_norm(tmp_path):
    src = build_architecture("densenet121")
    with torch.no_grad():
        src.features.transition2.norm.weight.uniform_(0.5, 1.5)
    path = tmp_path / "d121.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = truncate("densenet121", drop=2, weights=path)
    assert torch.equal(model.neck[0].weight, src.features.transition2.norm.weight)
    assert isinstance(model.neck[1], torch.nn.ReLU)


def test_densenet_legacy_keys_are_renamed():
    a = get_arch("densenet121")
    state = {"features.denseblock1.denselayer1.norm.1.weight": 1, "module.features.conv0.weight": 2}
    assert normalise_state_dict(state, a) == {
        "features.denseblock1.denselayer1.norm1.weight": 1, "features.conv0.weight": 2}


def test_weights_of_another_arch_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_architecture("resnet18").state_dict(), path)
    with pytest.raises(ChexcutError, match=r"does not fit resnet50: \d+ (missing keys|tensors of another shape)"):
        truncate("resnet50", drop=1, weights=path)
    with pytest.raises(ChexcutError, match="missing keys"):
        truncate("densenet121", drop=1, weights=path)


def test_pickle_with_code_is_never_executed(tmp_path):
    from conftest import write_evil_pickle

    marker = tmp_path / "pwned"
    path = write_evil_pickle(tmp_path / "evil.pth", marker, wrap=lambda evil: {"conv1.weight": evil})
    with pytest.raises(ChexcutError, match="refused"):
        truncate("resnet18", weights=path)
    assert not marker.exists()


def test_missing_imagenet_cache_fails_with_the_file_to_place(torch_home, monkeypatch):
    import chexcut.models.libraries as libs
    monkeypatch.setattr(libs, "host_resolves", lambda url: False)
    with pytest.raises(ChexcutError) as e:
        truncate("resnet18", drop=1, weights="imagenet")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(torch_home) in msg and "--weights PATH" in msg
    assert "\n" not in msg


def test_imagenet_weights_are_read_from_the_torch_cache(torch_home):
    src = build_architecture("resnet18")
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(src.state_dict(), ckpt / "resnet18-f37072fd.pth")
    model = truncate("resnet18", drop=1, weights="imagenet")
    assert torch.equal(model.blocks[2][0][0].conv1.weight, src.layer3[0].conv1.weight)
    assert model.chexcut_spec.weights["id"] == "torchvision:resnet18.IMAGENET1K_V1"


def test_inception_v4_timm_weights_missing_offline(monkeypatch):
    import chexcut.models.libraries as libs
    monkeypatch.setattr(libs, "host_resolves", lambda url: False)
    with pytest.raises(ChexcutError, match="timm/inception_v4.tf_in1k"):
        truncate("inception_v4", weights="imagenet")


@pytest.mark.parametrize("kw,msg", [
    ({"drop": 4}, r"valid 0\.\.3"), ({"keep": 0}, r"valid 1\.\.4"), ({"drop": 1, "keep": 1}, "not both"),
    ({"labels": []}, "at least one"), ({"labels": ["a", "a"]}, "duplicate"), ({"in_chans": 2}, "1 or 3"),
])
def test_bad_arguments(kw, msg):
    with pytest.raises(ChexcutError, match=msg):
        truncate("resnet18", weights="none", **kw)


def test_keep_is_drop_complement_and_labels_set_head():
    m = truncate("resnet18", keep=3, weights="none", labels=["a", "b"])
    assert m.chexcut_spec.drop == 1 and m.head.out_features == 2
    assert truncate("resnet18", weights="none").chexcut_spec.labels == tuple(CHEXPERT_LABELS)


def test_in_chans_1_preserves_grey_response(tmp_path):
    """truncate(in_chans=1) itself: a grey image through its one-channel conv, normalised with its spec,
    responds like the RGB model's conv on the replicated image, up to a constant per output channel."""
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(build_architecture("resnet18").state_dict(), weights)  # the same weights for both
    rgb = truncate("resnet18", drop=3, weights=weights)
    grey = truncate("resnet18", drop=3, weights=weights, in_chans=1)
    assert grey.stem[0].in_channels == 1 and grey.chexcut_spec.preprocess.in_chans == 1
    img = (torch.rand(1, 1, 64, 64) * 255).to(torch.uint8)
    with torch.no_grad():
        a = rgb.stem[0](rgb.chexcut_spec.preprocess.normalise(img))
        b = grey.stem[0](grey.chexcut_spec.preprocess.normalise(img))
    diff = (a - b)[..., 4:-4, 4:-4]  # away from the zero-padded border
    assert diff.abs().max() > 1e-3 or a.abs().max() < 1e-3  # not trivially equal: the constant exists
    assert torch.allclose(diff, diff.mean(dim=(2, 3), keepdim=True), atol=1e-4)
    assert grey(grey.chexcut_spec.preprocess.normalise(img)).shape == (1, 14)
