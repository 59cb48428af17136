"""Where does the model look? Grad-CAM heatmaps, and two checks that they mean something.

Attribution is Captum's ``LayerGradCam`` (a maintained implementation of Selvaraju et al. 2017) at the last
kept block by default: the natural target of a truncated model, whose last feature map is finer the more
blocks are cut. ``layer`` picks another block by its index from ``chexcut inspect``. Maps are upsampled to
the image (Captum's ``LayerAttribution.interpolate``), ReLU'd and scaled to [0, 1]; the peak is the
location of the maximum.

Checks (:func:`check`):

- *pointing game* on phantom data drawn with ``--masks``: the share of positive images whose heatmap peak
  lies inside the finding's drawn region, beside chance (the region's mean share of the image);
- *randomisation* (Adebayo et al., "Sanity Checks for Saliency Maps", 2018): the mean Spearman rank
  correlation between the trained model's maps and the maps after re-initialising its weights from the top
  block down; near 1 would mean the maps show the image, not what the model learned.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chexcut.errors import ChexcutError
from chexcut.labels import COMPETITION_LABELS
from chexcut.models.spec import ModelSpec, Preprocess

MIN_POSITIVES = 20  # fewer positives than this and the pointing game cannot judge a label
CHECK_LIMIT = 2000  # the pointing game's default cap on images (every masked frontal image of the split below it)
ALPHA = 0.05
MAX_RANDOMISED_CORRELATION = 0.5  # maps of a re-initialised model must differ: rank correlation below this


def block_modules(model: nn.Module, spec: ModelSpec) -> list[nn.Module]:
    """The kept blocks of a chexcut model, in order (index 1 = block 1 of ``inspect``)."""
    from chexcut.models.backbone import block_modules as kept_blocks
    from chexcut.models.registry import get_arch

    return kept_blocks(model, get_arch(spec.arch), spec.drop)


def target_layer(model: nn.Module, spec: ModelSpec, layer: int | None) -> tuple[nn.Module, int]:
    """The module Grad-CAM reads for block ``layer`` (default: the last kept): the block, or the part of it its
    family declares (a ViT layer's ``norm1``, see ``Family.cam_module``)."""
    from chexcut.models.registry import get_arch

    blocks = block_modules(model, spec)
    index = len(blocks) if layer is None else layer
    if not 1 <= index <= len(blocks):
        raise ChexcutError(f"--layer {layer} is out of range: this model keeps blocks 1..{len(blocks)} "
                           f"(see `chexcut inspect`)")
    inner = get_arch(spec.arch).family.cam_module
    return (blocks[index - 1].get_submodule(inner) if inner else blocks[index - 1]), index


def _to_maps(model: nn.Module, spec: ModelSpec):
    """The block output -> NCHW map function of this model's family (a ViT's tokens laid on their patch grid, its
    class and register tokens left out; a Swin's NHWC permuted; maps as they are)."""
    from chexcut.models.backbone import as_maps, prefix_tokens
    from chexcut.models.registry import get_arch

    family = get_arch(spec.arch).family
    prefix = prefix_tokens(model, family)
    return lambda x: as_maps(x, family, prefix)


def gradcam(model: nn.Module, spec: ModelSpec, images: torch.Tensor, targets, layer: int | None = None,
            batch: int = 16) -> np.ndarray:
    """Grad-CAM maps (N, T, H, W) in [0, 1] for uint8 images (N, 1, H, W).

    ``targets``: head indices, the same T for every image (a list), or one row of T per image ((N, T): each
    image's own labels, e.g. its top K). One forward pass per batch of ``batch`` images serves every target:
    the layer's activations are kept and each target's gradient with respect to them is taken from the same
    graph (the backward runs only from the head down to the layer). The arithmetic is Captum's
    ``LayerGradCam`` (channel weights = spatially averaged gradients, ReLU of the weighted sum) and
    ``LayerAttribution.interpolate`` (bilinear); ``tests/test_explain.py`` checks the maps against Captum. A
    transformer layer's tokens are laid on their patch grid first (class and register tokens left out), and a
    Swin stage's NHWC output permuted, by the family's description (:mod:`chexcut.models.backbone`).
    The model is in eval mode, so a map does not depend on its batch-mates."""
    import torch.nn.functional as F

    module, _ = target_layer(model, spec, layer)
    to_maps = _to_maps(model, spec)
    per_image = np.asarray(targets, dtype=np.int64)
    if per_image.ndim == 1:
        per_image = np.broadcast_to(per_image, (len(images), len(per_image)))
    size = tuple(images.shape[-2:])
    out = np.zeros((len(images), per_image.shape[1], *size), dtype=np.float32)
    kept = {}
    hook = module.register_forward_hook(lambda _m, _i, o: kept.__setitem__("a", o))
    try:
        for lo in range(0, len(images), batch):
            x = spec.preprocess.normalise(images[lo:lo + batch])
            with torch.enable_grad():
                logits = model(x)
                acts = kept.pop("a")
                rows = torch.arange(len(x))
                for t in range(per_image.shape[1]):
                    picked = logits[rows, torch.tensor(per_image[lo:lo + batch, t].tolist())]
                    grads, = torch.autograd.grad(picked.sum(), acts, retain_graph=t + 1 < per_image.shape[1])
                    maps, grads = to_maps(acts), to_maps(grads)  # (N, C, h, w) for maps and tokens alike
                    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * maps).sum(dim=1, keepdim=True))
                    cam = F.interpolate(cam.detach(), size, mode="bilinear").float().reshape(len(x), -1)
                    top = cam.max(dim=1, keepdim=True).values.clamp_min(1e-12)
                    out[lo:lo + len(x), t] = (cam / top).reshape(len(x), *size).numpy()
    finally:
        hook.remove()
    return out


def captum_gradcam(model: nn.Module, spec: ModelSpec, images: torch.Tensor, targets: list[int],
                   layer: int | None = None) -> np.ndarray:
    """The same maps through Captum's ``LayerGradCam``, one attribute call per target: the reference
    :func:`gradcam` is tested against."""
    from captum.attr import LayerAttribution, LayerGradCam

    module, _ = target_layer(model, spec, layer)
    x = spec.preprocess.normalise(images)
    cam = LayerGradCam(model, module)
    out = np.zeros((len(images), len(targets), *images.shape[-2:]), dtype=np.float32)
    for t, j in enumerate(targets):
        a = cam.attribute(x, target=j, relu_attributions=True)
        a = LayerAttribution.interpolate(a, tuple(images.shape[-2:]), interpolate_mode="bilinear")
        a = a.detach().float().reshape(len(images), -1)
        top = a.max(dim=1, keepdim=True).values.clamp_min(1e-12)
        out[:, t] = (a / top).reshape(len(images), *images.shape[-2:]).numpy()
    return out


def peak(heat: np.ndarray) -> tuple[int, int]:
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(r), int(c)


def overlay(gray: np.ndarray, heat: np.ndarray, caption: str):
    """An RGB PIL image: the X-ray in grey, the heatmap in colour on top, the caption in a bar below."""
    import matplotlib
    from PIL import Image, ImageDraw

    rgb = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    colour = matplotlib.colormaps["jet"](heat)[..., :3]
    alpha = 0.45 * heat[..., None]
    mixed = (rgb * (1 - alpha) + colour * alpha) * 255
    img = Image.fromarray(mixed.clip(0, 255).astype(np.uint8), mode="RGB")
    scale = max(1, 256 // img.width)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 16), "black")
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((3, img.height + 2), caption, fill="white")
    return canvas


def contact_sheet(tiles: list):
    from PIL import Image

    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "black")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width
    return sheet


@dataclass
class Inputs:
    paths: list[str]  # as the user named them (or as in the CSV)
    files: list[str]
    images: torch.Tensor  # uint8 (N, 1, S, S)
    skipped: list[str]


def read_images(files: list, paths: list[str], size: int, resize: str, skip_bad: bool) -> Inputs:
    from chexcut.data.images import load_image

    arrays, keep_p, keep_f, skipped = [], [], [], []
    for p, f in zip(paths, files):
        try:
            arrays.append(load_image(f, size, resize))
        except ChexcutError:
            if not skip_bad:
                raise
            skipped.append(str(p))
            continue
        keep_p.append(str(p))
        keep_f.append(str(f))
    if not arrays:
        raise ChexcutError("no readable images to explain")
    return Inputs(keep_p, keep_f, torch.from_numpy(np.stack(arrays)).unsqueeze(1), skipped)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def gather(images: list[Path] | None, data: Path | None, csv: str | None, split: str, limit: int,
           pre: Preprocess, skip_bad: bool, images_outside: bool = False) -> Inputs:
    """The images to explain: files, folders, or ``limit`` frontal rows of a dataset's split."""
    if data is not None:
        from chexcut.data.tables import DataOptions, load_split

        table = load_split(data, split, DataOptions(csv=csv, views="frontal", images_outside=images_outside))
        paths, files = table.paths[:limit], table.files[:limit]
    else:
        files = []
        for p in images or []:
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            elif p.exists():
                files.append(p)
            else:
                raise ChexcutError(f"image not found: {p}")
        files = files[:limit]
        paths = [str(f) for f in files]
        if not files:
            raise ChexcutError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the given folders")
    return read_images(files, paths, pre.image_size, pre.resize, skip_bad)


def gather_masked(data: Path, csv: str | None, split: str, pre: Preprocess, skip_bad: bool,
                  limit: int = CHECK_LIMIT) -> tuple[Inputs, dict] | None:
    """For the pointing game: every frontal image of the split with a drawn region (up to ``limit``) and
    where each finding is; None when the dataset has no masks (not a phantom made with ``--masks``)."""
    from chexcut.data.phantom import read_masks
    from chexcut.data.tables import DataOptions, find_dataset_dir, load_split

    try:
        if csv or not (find_dataset_dir(data) / "masks.csv").is_file():
            return None
    except ChexcutError:  # not the CheXpert layout: a published set has no drawn masks
        return None
    truth = read_masks(find_dataset_dir(data))
    masked = {p for p, _ in truth}
    table = load_split(data, split, DataOptions(views="frontal"))
    rows = [(p, f) for p, f in zip(table.paths, table.files) if p in masked][:limit]
    if not rows:
        return None
    return read_images([f for _, f in rows], [p for p, _ in rows], pre.image_size, pre.resize, skip_bad), truth


def choose_labels(spec: ModelSpec, labels: list[str] | None, top: int | None) -> list[str] | None:
    """Labels to explain: ``labels`` (checked against the head), or None for the per-image top K."""
    have = list(spec.labels)
    if labels:
        missing = [x for x in labels if x not in have]
        if missing:
            raise ChexcutError(f"the model has no head output for {', '.join(missing)} (it has: {', '.join(have)})")
        return labels
    if top:
        if not 1 <= top <= len(have):
            raise ChexcutError(f"--top must be 1..{len(have)}")
        return None
    return [x for x in COMPETITION_LABELS if x in have] or have[:5]


def explain(model, spec: ModelSpec, inputs: Inputs, out: Path, labels: list[str] | None, top: int | None = None,
            layer: int | None = None, batch: int = 16) -> dict:
    """Heatmaps, overlays and a contact sheet per image under ``out``; returns the JSON listing."""
    from chexcut.fileio import atomic_path

    model.eval()
    chosen = choose_labels(spec, labels, top)
    _, index = target_layer(model, spec, layer)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        probs = torch.cat([_probs(model, spec, inputs.images[i:i + batch])
                           for i in range(0, len(inputs.images), batch)]).numpy()
    if chosen:
        targets = np.broadcast_to(np.array([spec.labels.index(n) for n in chosen]), (len(probs), len(chosen)))
    else:
        targets = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    heat = gradcam(model, spec, inputs.images, targets, layer, batch=batch)
    rows = []
    for i, path in enumerate(inputs.paths):
        gray = inputs.images[i, 0].numpy()
        stem = f"{i + 1:04d}-{Path(path).stem}"
        tiles = []
        for t, j in enumerate(targets[i]):
            name, prob = spec.labels[j], float(probs[i, j])
            tile = overlay(gray, heat[i, t], f"{name} {prob:.2f}")
            f = out / f"{stem}-{name.lower().replace(' ', '_')}.png"
            with atomic_path(f) as tmp:
                tile.save(tmp, format="PNG")
            tiles.append(tile)
            rows.append({"path": path, "label": name, "probability": prob, "peak": list(peak(heat[i, t])),
                         "file": str(f), "layer": index})
        with atomic_path(out / f"{stem}-sheet.png") as tmp:
            contact_sheet(tiles).save(tmp, format="PNG")
    return {"images": rows, "skipped": inputs.skipped, "layer": index, "image_size": int(inputs.images.shape[-1])}


def _probs(model, spec: ModelSpec, images):
    return torch.sigmoid(model(spec.preprocess.normalise(images)).double())


# ----------------------------------------------------------------------------- checks

def pointing_game(model, spec: ModelSpec, inputs: Inputs, truth: dict[tuple[str, str], Path], labels: list[str],
                  layer: int | None = None, tolerance: float = 1 / 16) -> dict:
    """Per label: positives whose heatmap peak falls inside the drawn region, against chance (mean area share).

    As in the pointing game of Zhang et al. (2016), a peak within a small tolerance of the region counts
    (``tolerance`` of the image side: 4 px at 64 px, 20 px at 320 px); chance is computed on the same
    enlarged region, so the comparison stays fair. Each label gets the hit rate's 95% Wilson interval, the
    one-sided binomial p of "no better than chance" (chance = the mean area share; with areas that differ from
    image to image the true null count is Poisson-binomial, whose variance is at most the binomial's, so the
    p is if anything conservative) and a verdict: ``passed`` (p < 0.05), ``failed``, or ``not judged`` with
    fewer than :data:`MIN_POSITIVES` positives."""
    from PIL import Image
    from scipy.ndimage import binary_dilation

    out = {}
    size = inputs.images.shape[-1]
    grow = int(round(tolerance * size))
    for name in labels:
        j = spec.labels.index(name)
        rows = [i for i, p in enumerate(inputs.paths) if (p, name) in truth]
        hits, areas = 0, []
        heat = gradcam(model, spec, inputs.images[rows], [j], layer)[:, 0] if rows else []
        for h, i in zip(heat, rows):
            mask = np.asarray(Image.open(truth[(inputs.paths[i], name)]).convert("L").resize((size, size),
                                                                                           Image.NEAREST)) > 127
            if grow:
                mask = binary_dilation(mask, iterations=grow)
            r, c = peak(h)
            hits += bool(mask[r, c])
            areas.append(float(mask.mean()))
        out[name] = judge_pointing(int(hits), len(rows), float(np.mean(areas)) if areas else None) | {
            "tolerance_px": grow}
    return out


def judge_pointing(hits: int, n: int, chance: float | None) -> dict:
    """The pointing game's figures for one label: rate, its Wilson CI, p against chance, the verdict."""
    from scipy.stats import binomtest

    res = {"hits": hits, "n": n, "rate": None, "ci_low": None, "ci_high": None, "chance": chance, "p": None}
    if n == 0:
        return res | {"verdict": "not judged", "reason": "no positive image with a drawn region"}
    test = binomtest(hits, n, min(max(chance, 1e-12), 1 - 1e-12), alternative="greater")
    # the interval is two-sided (a test's proportion_ci follows its alternative: one-sided for "greater")
    ci = binomtest(hits, n).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    res |= {"rate": hits / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "p": float(test.pvalue)}
    if n < MIN_POSITIVES:
        return res | {"verdict": "not judged", "reason": f"{n} positives (at least {MIN_POSITIVES} needed)"}
    if test.pvalue < ALPHA:
        return res | {"verdict": "passed", "reason": f"peaks on the finding more often than chance (p {test.pvalue:.2g})"}
    return res | {"verdict": "failed", "reason": f"peaks on the finding no more often than chance (p {test.pvalue:.2g})"}


def randomisation(model, spec: ModelSpec, images: torch.Tensor, labels: list[str], layer: int | None = None,
                  seed: int = 0) -> dict:
    """Spearman rank correlation between the trained model's maps and the maps after re-initialising the head
    and then the kept blocks from the top down (cascading), averaged over images and labels."""
    from scipy.stats import spearmanr

    targets = [spec.labels.index(n) for n in labels]
    base = gradcam(model, spec, images, targets, layer)
    from chexcut.models.registry import get_arch
    from chexcut.models.surgery import head_of

    rand = copy.deepcopy(model)
    blocks = block_modules(rand, spec)
    steps = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k, block in enumerate([None, *reversed(blocks)]):
            # the head first (only it: a transformer's blocks hold Linear layers too), then block by block
            for m in (head_of(rand, get_arch(spec.arch), spec.drop) if block is None else block).modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            maps = gradcam(rand, spec, images, targets, layer)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a constant map has no rank correlation: dropped below
                rho = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(base.reshape(-1, *base.shape[2:]),
                                                                     maps.reshape(-1, *maps.shape[2:]))]
            rho = [r for r in rho if np.isfinite(r)]
            steps.append({"randomised": "head" if block is None else f"head + top {k} blocks",
                          "rank_correlation": float(np.mean(rho)) if rho else None})
    final = steps[-1]["rank_correlation"]
    return {"rank_correlation": final, "cascade": steps}


def check(model, spec: ModelSpec, inputs: Inputs, labels: list[str], masked: tuple[Inputs, dict] | None = None,
          layer: int | None = None) -> dict:
    """Both checks and an overall verdict: ``passed`` only when every check could judge and passed.

    Randomisation runs on the first 16 of ``inputs``; the pointing game on ``masked`` (images, regions) from
    :func:`gather_masked`."""
    rnd = randomisation(model, spec, inputs.images[:16], labels, layer)
    rho = rnd["rank_correlation"]
    if rho is None:
        rnd |= {"verdict": "not judged", "reason": "every map was constant"}
    elif rho < MAX_RANDOMISED_CORRELATION:
        rnd |= {"verdict": "passed", "reason": f"maps change when the weights are re-initialised "
                                               f"(rank correlation {rho:.2f} < {MAX_RANDOMISED_CORRELATION})"}
    else:
        rnd |= {"verdict": "failed", "reason": f"maps survive re-initialising the weights (rank correlation "
                                               f"{rho:.2f} >= {MAX_RANDOMISED_CORRELATION}): they show the image"}
    result = {"randomisation": rnd}
    verdicts = [rnd["verdict"]]
    if masked is not None:
        result["pointing_game"] = pointing_game(model, spec, masked[0], masked[1], labels, layer)
        result["pointing_game_images"] = len(masked[0].paths)
        verdicts += [p["verdict"] for p in result["pointing_game"].values()]
    else:
        verdicts.append("not judged")
        result["pointing_game_reason"] = ("no drawn regions: the pointing game needs --data with a phantom made "
                                          "with --masks")
    result["verdict"] = ("failed" if "failed" in verdicts else "not judged" if "not judged" in verdicts
                         else "passed")
    return result


@dataclass(frozen=True)
class ExplainInputs:
    """What ``chexcut explain`` takes: a model (file or run directory) and IMAGES or a data set's rows, the labels
    (or each image's ``top`` K), the block to explain, and whether to run the checks."""

    model: str
    images: tuple[Path, ...] = ()
    data: Path | None = None
    csv: str | None = None
    split: str = "valid"
    limit: int = 16
    labels: tuple[str, ...] | None = None
    top: int | None = None
    layer: int | None = None
    check: bool = False
    check_limit: int = 2000
    skip_bad: bool = False
    images_outside: bool = False  # image paths in the label file may lead outside --data


def run_explain(i: ExplainInputs, out: Path, progress=None) -> tuple[dict, Inputs]:
    """The library entry point of ``chexcut explain``: (the listing, or with ``check`` the checks and the files;
    the images read). ``progress(done, total)`` is called before and after. Arguments are checked first."""
    from chexcut.choices import check_bounds
    from chexcut.models.modelfile import load_model
    from chexcut.models.source import ModelSource

    if (i.data is None) == (not i.images):
        raise ChexcutError("give IMAGES (files or folders) or --data DIR, not both or neither")
    check_bounds("limit", i.limit)
    check_bounds("check_limit", i.check_limit)
    progress = progress or (lambda done, total: None)
    net = load_model(ModelSource.parse(i.model).require_file("explain"))
    spec = net.chexcut_spec
    target_layer(net, spec, i.layer)
    chosen = choose_labels(spec, list(i.labels) if i.labels else None, i.top)
    inputs = gather(list(i.images) or None, i.data, i.csv, i.split, i.limit, spec.preprocess, i.skip_bad,
                    i.images_outside)
    masked = (gather_masked(i.data, i.csv, i.split, spec.preprocess, i.skip_bad, i.check_limit)
              if i.check and i.data is not None else None)
    progress(0, len(inputs.paths))
    result = explain(net, spec, inputs, out, chosen, i.top, i.layer)
    if i.check:
        result = {**check(net, spec, inputs, chosen or list(spec.labels)[:5], masked, i.layer), "files": result["images"]}
    progress(len(inputs.paths), len(inputs.paths))
    return result, inputs
