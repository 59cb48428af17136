"""Tables of ``list``, ``inspect``, ``truncate`` and ``weights list``: architectures, their anatomy, weights."""

from __future__ import annotations

from rich.table import Table

from chexcut.cli.ui import human
from chexcut.models.registry import get_arch


def arch_list_table(rows: list[dict]) -> Table:
    t = Table(title="Supported architectures", title_justify="left",
              caption="`chexcut inspect ARCH`: its blocks and what each truncation costs", caption_justify="left")
    for col, just in (("arch", "left"), ("library", "left"), ("params", "right"), ("top-1", "right"),
                      ("blocks", "right"), ("output", "left"), ("licence", "left"), ("paper", "center")):
        t.add_column(col, justify=just, no_wrap=col in ("arch", "blocks", "params"))
    for r in rows:
        t.add_row(r["arch"], r["source"], f"{r['params']:,}", f"{r['top1']:.2f}" if r["top1"] else "-",
                  f"{r['num_blocks']} {r['unit']}s", r["output"], r["license"].split(" (")[0],
                  "yes" if r["paper"] else "test" if r["test"] else "")
    return t


def weights_table(rows: list[dict]) -> Table:
    t = Table(title="ImageNet weights", title_justify="left")
    for col in ("arch", "file", "licence", "MB", "cached", "verified", "path (or where to place it)"):
        t.add_column(col, justify="right" if col == "MB" else "left", overflow="fold")
    for r in rows:
        ver = {True: "[green]yes[/]", False: "[bold red]NO[/]", None: "unverified"}[r["verified"]]
        t.add_row(r["arch"], r["file"], r["license"].split(" (")[0], "-" if r["size_mb"] is None else f"{r['size_mb']:.1f}",
                  "[green]yes[/]" if r["cached"] else "no", ver, r["path"] or f"[dim]{r['place_at']}[/]")
    return t


def sources_table(rows: list[dict]) -> Table:
    t = Table(title="Pretraining sources (--weights NAME, or NAME:PATH to a local copy as published)",
              title_justify="left", caption="`chexcut weights path NAME`: where a staged copy goes",
              caption_justify="left")
    for col in ("name", "fits", "channels", "licence", "staged"):
        t.add_column(col, overflow="fold")
    for r in rows:
        fits = ", ".join(r["archs"]) if len(r["archs"]) <= 2 else f"{r['archs'][0]} and {len(r['archs']) - 1} more"
        t.add_row(r["name"], fits, str(r["in_chans"]), r["license"].split(" (")[0],
                  "[green]yes[/]" if r["staged"] == "yes" else r["staged"])
    return t


def anatomy_tables(a: dict, highlight_drop: int | None = None) -> list[Table]:
    """The blocks (a CNN's maps, a transformer's tokens on their patch grid) and what each truncation costs."""
    size, tokens, unit, w = a["image_size"], a.get("output") == "tokens", a.get("unit", "block"), a.get("weights")
    caption = w and (f"weights {w['id']}, licence {w['license']}; a truncated model pools by "
                     f"{' or '.join(a['pools'])}" + (f"; tokens: the patch grid + {a['prefix_tokens']} prefix "
                                                     f"(class, registers)" if tokens else ""))
    blocks = Table(title=f"{a['arch']} ({a['source']}) {unit}s at {size}px", title_justify="left", caption=caption,
                   caption_justify="left")
    for col in ("#", unit, "params", "cum. params", *(("width", "tokens", "patch grid") if tokens else
                                                      ("channels", "reduction", "output"))):
        blocks.add_column(col, justify="left" if col == unit else "right")
    blocks.add_row("", "stem", f"{a['stem_params']:,}", f"{a['stem_params']:,}", "", "", "", style="dim")
    for b in a["blocks"]:
        h, w = b["spatial"]
        shape = (f"{h * w}+{b['tokens'] - h * w}", f"{h}x{w} (/{b['reduction']})") if tokens else \
            (f"/{b['reduction']}", f"{h}x{w}")
        blocks.add_row(str(b["index"]), b["name"], f"{b['params']:,}", f"{b['cum_params']:,}",
                       str(b["out_channels"]), *shape)
    trunc = Table(title=f"Truncation levels ({a['n_labels']}-way head)", title_justify="left")
    for col in ("drop", "keep", "params", "% of full", "compression", "MACs", "features"):
        trunc.add_column(col, justify="right")
    for t in a["truncations"]:
        style = "bold green" if highlight_drop == t["drop"] else None
        trunc.add_row(str(t["drop"]), str(t["keep"]), f"{t['params']:,}", f"{100 * t['fraction']:.1f}%",
                      f"{t['compression']:.2f}x", human(t["macs"]), str(t["out_channels"]), style=style)
    return [blocks, trunc]


def adapt_table(d: dict) -> Table:
    """``inspect --adapt``: the parameters it trains and, for lora:R, every layer LoRA adapts (and those skipped)."""
    share = d["trainable_params"] / d["total_params"]
    skipped = d["skipped_modules"]
    caption = (f"skipped (left frozen): {len(skipped)} layers, e.g. {next(iter(skipped))}: {next(iter(skipped.values()))}"
               if skipped else None)
    t = Table(title=f"--adapt {d['adapt']}: {d['trainable_params']:,} of {d['total_params']:,} parameters trained "
                    f"({share:.1%})", title_justify="left", caption=caption, caption_justify="left")
    for col in ("block", "module", "layer", "LoRA params"):
        t.add_column(col, justify="right" if col in ("block", "LoRA params") else "left", no_wrap=col == "layer")
    for r in d["adapted_modules"]:
        t.add_row(str(r["block"]), r["module"], r["layer"], f"{r['lora_params']:,}")
    return t


def truncate_table(spec: dict, full: dict, cut: dict) -> Table:
    t = Table(title=f"{spec.arch}: drop {spec.drop} (keep {spec.keep} of {spec.num_blocks} blocks)",
              title_justify="left")
    t.add_column("")
    t.add_column("full (drop 0)", justify="right")
    t.add_column(f"drop {spec.drop}", justify="right")
    t.add_row("params", f"{full['params']:,}", f"{cut['params']:,}")
    t.add_row(f"MACs at {spec.preprocess.image_size}px", human(full["macs"]), human(cut["macs"]))
    t.add_row("compression", "1.00x", f"{full['params'] / cut['params']:.2f}x")
    t.add_row("blocks kept", str(spec.num_blocks), str(spec.keep))
    t.add_row("feature width" if get_arch(spec.arch).family.tokens else "feature channels", str(full["out_channels"]),
              str(cut["out_channels"]))
    t.add_row("pooling", spec.pool, spec.pool)
    t.add_row("weights", "", spec.weights_name)
    return t


def probe_table(res: dict) -> Table:
    """``chexcut probe``'s depth curve: per block its width, C, AUROC with CI, and the paired test against the best."""
    m, stats = res["model"], res["settings"]["statistics"]
    t = Table(title=f"Linear probe at every depth: {m['arch']} ({m['weights']}, {m['image_size']} px), "
                    f"{res['data']['train_images']} training images, {res['data']['evaluation_rows']} evaluation rows",
              title_justify="left", caption_justify="left",
              caption=f"AUROC: the {res['mean'].replace('_', ' ')} with its {stats['ci']:.0%} CI (clustered bootstrap); "
                      f"vs best: paired {stats['method']} test, p Holm-adjusted across blocks; * p < {stats['alpha']:g}")
    for col, just in (("block", "right"), ("name", "left"), ("width", "right"), ("C", "right"),
                      ("valid AUROC", "right"), ("AUROC", "right"), ("CI", "right"), ("vs best", "right"),
                      ("CI of delta", "right"), ("p (Holm)", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in res["blocks"]:
        v = r["vs_best"]
        if v is None:
            vs = ("best", "", "")
        else:
            star = "*" if v.get("p_holm") is not None and v["p_holm"] < stats["alpha"] else ""
            vs = (_num(v["delta"], "{:+.4f}"), _interval(v["ci_low"], v["ci_high"], "{:+.3f}"),
                  _num(v.get("p_holm"), "{:.3g}") + star)
        t.add_row(str(r["block"]), r["name"], str(r["width"]), f"{r['C']:g}", _num(r["validation_auroc"]),
                  _num(r["auroc"]), _interval(r["ci_low"], r["ci_high"]), *vs)
    return t


def _num(x, fmt="{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


def _interval(lo, hi, fmt="{:.3f}") -> str:
    return "-" if lo is None or hi is None else f"{fmt.format(lo)} to {fmt.format(hi)}"
