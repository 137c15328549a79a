"""The study's figures, mirroring Kilian et al. (2024): quality and prompt following vs training FLOPs (Fig. 3),
loss vs FLOPs with fitted power laws (Fig. 4), quality vs inference FLOPs across sampling steps (Fig. 5), the
autoencoder ablation (Fig. 2) and EMA vs raw weights. Each function returns a `Plot` whose PNG is None, with a
note saying why, when the study has no data for it.

matplotlib's object API (Figure + Agg canvas) is used rather than pyplot: no global figure state, no display.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study import instruments as ins
from synthscale.study.scaling import PowerLawFit

# axis labels name the quantity; how it is counted is in the report's "How measured" table
TRAIN_FLOPS = "training FLOPs"
SAMPLE_FLOPS = "generator sampling FLOPs per image"
METRIC_LABELS = {"loss": "validation loss (each objective's own) ↓"}  # the rest: named by their instrument
COLOURS = {"flow": "#d62728", "masked": "#2ca02c", "autoregressive": "#1f77b4"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
LINESTYLES = ["-", "--", ":", "-."]


@dataclass
class Plot:
    key: str  # file stem, e.g. "fig3-quality-vs-training-flops"
    title: str
    caption: str  # what it shows and the instruments behind its numbers
    png: bytes | None  # None: skipped
    note: str = ""  # why it was skipped


def _colour(objective: str) -> str:
    return COLOURS.get(objective, "#7f7f7f")


def _figure(ncols: int, width: float = 5.2, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric) or ins.axis_label(metric)


def _deciding(data: cmp.StudyData) -> tuple[str, str]:
    """(quality metric, prompt-following metric) of the instruments that decide this study's findings."""
    q, f = (ins.decider(data.records, role) for role in ("quality", "following"))
    return (q.metric if q else "fd_probe"), (f.metric if f else "prompt_acc")


def _ceiling_line(ax, data: cmp.StudyData, metric: str) -> None:
    """The real-data reference of `metric`'s instrument as a dashed line: real test images' prompt following, or
    the Fréchet distance / KID between real val and real test images (a generator cannot beat real data)."""
    for card in ins.instrument_cards(data.records).values():
        ceiling = card.get("ceiling") or {}
        value = {**ceiling.get("real_test", {}), **ceiling.get("real_val", {})}.get(metric)
        if value is not None and metric in (card.get("quality"), card.get("following")):
            what = "real test images" if metric == card.get("following") else "real val vs test"
            ax.axhline(value, color="k", ls="--", lw=0.9, label=f"{what} (n={ceiling.get('n')})")
            return


def _series(records: list[dict[str, Any]], key) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[key(r)].append(r)
    return {k: sorted(v, key=lambda r: r["train_flops"]) for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))}


def _errbars(rs: list[dict[str, Any]], metric: str) -> np.ndarray | None:
    ivs = [cmp.shown_interval(r, metric) for r in rs]
    if any(iv is None for iv in ivs):
        return None
    vals = [cmp.value(r, metric) for r in rs]
    return np.array([[v - iv[0] for v, iv in zip(vals, ivs)], [iv[1] - v for v, iv in zip(vals, ivs)]])


def _draw_metric_vs(ax, series: dict, metric: str, xkey: str, style) -> int:
    drawn = 0
    for key, rs in series.items():
        rs = [r for r in rs if cmp.value(r, metric) is not None]
        if not rs:
            continue
        x = [r[xkey] for r in rs]
        y = [cmp.value(r, metric) for r in rs]
        colour, ls, marker, label = style(key)
        err = _errbars(rs, metric)
        if err is not None:
            ax.errorbar(x, y, yerr=err, color=colour, ls=ls, marker=marker, ms=4, capsize=2, label=label)
        else:
            ax.plot(x, y, color=colour, ls=ls, marker=marker, ms=4, label=label)
        _draw_seeds(ax, rs, metric, xkey, colour)
        drawn += 1
    return drawn


def _draw_seeds(ax, rs: list[dict[str, Any]], metric: str, xkey: str, colour: str) -> None:
    """The single seeds behind each averaged point, faintly (study/replicates.py)."""
    xs, ys = [], []
    for r in rs:
        values = (r.get("seed_values") or {}).get(metric) or []
        if len(values) >= 2:
            xs += [r[xkey]] * len(values)
            ys += values
    if xs:
        ax.scatter(xs, ys, color=colour, alpha=0.25, s=9, linewidths=0, zorder=1)


def _tick_text(v: float, _pos=None) -> str:
    """Short tick labels ('20', '0.5', '3e9'): matplotlib's default '3×10⁹' labels on minor ticks run into each
    other when an axis spans less than a decade or two (Fig. 5's sampling FLOPs)."""
    if v <= 0:
        return ""
    if 1e-3 <= v < 1e4:
        return f"{v:.3g}"
    exp = int(np.floor(np.log10(v) + 1e-9))
    return f"{v / 10**exp:.2g}e{exp}"


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Labelled ticks at 1-2-5 (finer within a short span), short labels, unlabelled minor ticks."""
    span = np.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    # about a decade: 1-2-3-5 (with 1.5, 4, 6 and 8 too, "5e11" and "6e11" ran together on narrow panels); the
    # finer set only where the axis spans under half a decade and would otherwise show one label
    subs = (
        (1.0,)
        if span > 6
        else (1.0, 2.0, 5.0)
        if span > 1.2
        else (1.0, 2.0, 3.0, 5.0)
        if span > 0.5
        else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    )
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
    axis.set_major_formatter(FuncFormatter(_tick_text))
    axis.set_minor_formatter(NullFormatter())


def _draw_ceilings(ax, data: cmp.StudyData, pairs, metric: str) -> list[str]:
    """For each (objective, autoencoder) pair, the autoencoder's ceiling on `metric` (its reconstructions scored
    alike; None: the objective's main autoencoder): a dotted line, once per autoencoder, in the colour of its first
    objective, its 95 % interval shaded where measured. Returns caption phrases for the lines drawn."""
    users: dict[str, list[str]] = {}
    ceilings: dict[str, dict] = {}
    for obj, ae in sorted(set(pairs), key=str):
        ceil = cmp.ceiling(data, obj, ae)
        if ceil is None or cmp.value(ceil, metric) is None:
            continue
        users.setdefault(ceil["autoencoder"], []).append(obj)
        ceilings[ceil["autoencoder"]] = ceil
    notes = []
    for name, objs in users.items():
        ceil, v = ceilings[name], cmp.value(ceilings[name], metric)
        ax.axhline(v, color=_colour(objs[0]), ls=":", lw=1.2, label=f"ceiling of {name} ({', '.join(objs)})")
        iv = cmp.shown_interval(ceil, metric)
        if iv is not None:
            ax.axhspan(iv[0], iv[1], color=_colour(objs[0]), alpha=0.08, lw=0)
        notes.append(f"{name} {cmp.fmt(v)}")
    return notes


def _ceiling_caption(notes: list[str]) -> str:
    if not notes:
        return ""
    return (
        " Dotted lines: each objective's autoencoder ceiling, its reconstructions of the evaluation images scored by "
        f"the same instruments (what a generator on those latents can at best reach; {'; '.join(notes)})."
    )


def _finish(ax, xlabel: str, metric: str, log_y: bool = True) -> None:
    ax.set_xscale("log")
    ax.autoscale_view()
    _log_ticks(ax.xaxis, *ax.get_xlim())
    if log_y:
        ax.set_yscale("log")
        ax.autoscale_view()
        _log_ticks(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(metric))
    ax.grid(True, which="both", alpha=0.25)
    # below the panel: inside it, even the least-crowded corner hid a point or a step label on some studies
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _skip(key: str, title: str, note: str) -> Plot:
    return Plot(key, title, "", None, note)


# ---------------------------------------------------------------------------------------------- figures


def quality_vs_training_flops(data: cmp.StudyData) -> Plot:
    """Fig. 3: image quality and prompt following vs training FLOPs, a line per objective and model size."""
    key, title = "fig3-quality-vs-training-flops", "Fig. 3 — quality and prompt following vs training compute"
    main = data.main_autoencoders
    recs = [r for r in cmp.primary_records(data) if r["autoencoder"] == main[r["objective"]]]
    quality, following = _deciding(data)
    metrics = [m for m in (quality, following) if any(cmp.value(r, m) is not None for r in recs)]
    if not metrics:
        return _skip(key, title, f"no record measured {quality} or {following}")
    sizes = sorted({r["size"] for r in recs})
    series = _series(recs, lambda r: (r["objective"], r["size"], r["data_size"]))
    multi_d = len({r["data_size"] for r in recs}) > 1

    def style(k):
        obj, size, d = k
        label = f"{obj} {size}" + (f" D={d}" if multi_d else "")
        return _colour(obj), LINESTYLES[sizes.index(size) % 4], MARKERS[sizes.index(size) % 7], label

    fig, axes = _figure(len(metrics))
    ceilings = []
    for ax, m in zip(axes, metrics):
        _draw_metric_vs(ax, series, m, "train_flops", style)
        _ceiling_line(ax, data, m)
        ceilings += [f"{_label(m)}: {n}" for n in _draw_ceilings(ax, data, [(r["objective"], None) for r in recs], m)]
        _finish(ax, TRAIN_FLOPS, m, log_y=m != following)
    caption = (
        "Image quality and prompt following of every main-grid model as it trains, one line per objective and "
        "model size, each objective at its primary sampling setting on its main autoencoder (both in How "
        "measured). Points: the mean over a cell's seeds, its single seeds faint; error bars: 95 % intervals (over "
        "seeds and prompts/images with replicate seeds, else over prompts/images only); dashed: real images scored "
        "by the same instrument, which a generator cannot beat." + _ceiling_caption(ceilings)
    )
    return Plot(key, title, caption, _png(fig))


def loss_fits(data: cmp.StudyData, fits: dict[str, PowerLawFit]) -> Plot:
    """Fig. 4: each objective's validation loss vs training FLOPs, the fitted L(C) = E + A·C^−α and its band."""
    key, title = "fig4-loss-vs-flops", "Fig. 4 — loss vs training compute, with fitted power laws"
    main = data.main_autoencoders  # losses over other latent spaces are on other scales
    recs = [
        r
        for r in cmp.primary_records(data)
        if cmp.value(r, "loss") is not None and r["autoencoder"] == main[r["objective"]]
    ]
    objectives = [o for o in data.objectives if any(r["objective"] == o for r in recs)]
    if not objectives:
        return _skip(key, title, "no record measured the validation loss")
    fig, axes = _figure(len(objectives), width=4.6)
    for ax, obj in zip(axes, objectives):
        rs = [r for r in recs if r["objective"] == obj]
        sizes = sorted({r["size"] for r in rs})
        for i, size in enumerate(sizes):
            pts = [r for r in rs if r["size"] == size]
            ax.scatter(
                [r["train_flops"] for r in pts],
                [cmp.value(r, "loss") for r in pts],
                s=14,
                alpha=0.6,
                marker=MARKERS[i % 7],
                color=_colour(obj),
                label=f"{size} (all milestones)",
            )
        fit = fits.get(obj)
        if fit is not None:
            c = np.logspace(np.log10(fit.compute.min()), np.log10(fit.compute.max()), 100)
            a_iv = fit.intervals.get("alpha")
            a_txt = f" [{a_iv[0]:.3f}, {a_iv[1]:.3f}]" if a_iv else ""
            ax.plot(
                c,
                fit.predict(c),
                color="k",
                lw=1.2,
                label=f"fit: α {fit.alpha:.3f}{a_txt}, R² {fit.r2:.2f}",
            )
            band = fit.band(c)
            if band is not None:
                ax.fill_between(c, band[0], band[1], color="k", alpha=0.12, label="95 % band (bootstrap over runs)")
        ax.set_title(obj)
        _finish(ax, TRAIN_FLOPS, "loss")
    caption = (
        "Validation loss of each objective (its own loss: not comparable across panels) at every milestone of "
        "every main-grid run, with the power law L(C) = E + A·C^−α fitted to all of them (Chinchilla's approach "
        "3) and its 95 % band from a bootstrap that resamples whole runs. The legend gives each fit's exponent α "
        "with its interval; Scaling fits has every parameter."
    )
    missing = [o for o in objectives if o not in fits]
    if missing:
        caption += f" No fit for {', '.join(missing)} (too few points)."
    return Plot(key, title, caption, _png(fig))


def _sweeps(data: cmp.StudyData) -> tuple[float | None, dict[str, list[dict[str, Any]]]]:
    """Per objective, its best model at matched training compute — by the findings' rule (findings.best_models:
    main grid, primary setting, best over sizes on the deciding quality metric) — across sampling steps at its
    primary weights and CFG. The level is the highest one where the most objectives' best models were swept
    over ≥ 2 step counts (an objective evaluated at one step count there, as next-token at its image-token
    count, is one point). Returns (that level, {objective: records by steps})."""
    quality = _deciding(data)[0]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in data.records:
        prim = data.settings.get(r["objective"])
        if prim and (r["weights"], cmp.setting(r)[2]) == (prim[0], prim[2]):
            groups[(r["run"], r["milestone"])].append(r)
    chosen: tuple[tuple, float | None, dict] = ((0, 0, 0.0), None, {})
    for lv, best in fnd.best_models(data, quality).items():
        sweeps = {obj: sorted(groups[(r["run"], r["milestone"])], key=lambda x: x["steps"]) for obj, r in best.items()}
        swept = sum(len({x["steps"] for x in rs}) > 1 for rs in sweeps.values())
        if swept and (swept, len(sweeps), lv) > chosen[0]:
            chosen = ((swept, len(sweeps), lv), lv, sweeps)
    return chosen[1], chosen[2]


def quality_vs_inference_flops(data: cmp.StudyData) -> Plot:
    """Fig. 5: quality and prompt following vs sampling FLOPs per image, across sampling steps, of each
    objective's best model at matched training compute."""
    key, title = "fig5-quality-vs-inference-flops", "Fig. 5 — quality and prompt following vs inference compute"
    level, sweeps = _sweeps(data)
    metrics = [m for m in _deciding(data) if any(cmp.value(r, m) is not None for rs in sweeps.values() for r in rs)]
    if not metrics or not sweeps:
        return _skip(key, title, "no run was evaluated at more than one sampling-step count")
    fig, axes = _figure(len(metrics))
    ceilings: list[str] = []
    for ax, m in zip(axes, metrics):
        for obj, rs in sweeps.items():
            rs = [r for r in rs if cmp.value(r, m) is not None]
            if not rs:
                continue
            x = [r["sample_flops_per_image"] for r in rs]
            y = [cmp.value(r, m) for r in rs]
            ax.plot(x, y, color=_colour(obj), marker="o", ms=4, label=f"{obj} {rs[0]['size']}")
            for xi, yi, r in zip(x, y, rs):
                ax.annotate(str(r["steps"]), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ceilings += [f"{_label(m)}: {n}" for n in _draw_ceilings(ax, data, [(o, None) for o in sweeps], m)]
        ax.margins(x=0.08)  # room for the step labels at the ends
        _finish(ax, SAMPLE_FLOPS, m, log_y=m != _deciding(data)[1])
    caption = (
        f"Each objective's best model at {level:.3g} training FLOPs (the best size on the deciding quality metric "
        "at the primary setting, the rule the findings use), sampled with more or fewer steps at its primary "
        "weights and guidance scale. Numbers beside the points: sampling steps (flow: Euler ODE steps; masked: "
        "decoding steps; next-token: image tokens, one each with a KV cache). The x axis is the generator's "
        "FLOPs; the decoder's, the same at every step count, are in the sampling-cost table."
        + _ceiling_caption(ceilings)
    )
    return Plot(key, title, caption, _png(fig))


def autoencoder_ablation(data: cmp.StudyData) -> Plot:
    """Fig. 2: the same objective, size and data with different autoencoders, vs training FLOPs."""
    key, title = "fig2-autoencoder-ablation", "Fig. 2 — autoencoder ablation"
    recs = cmp.primary_records(data)
    groups = _series(recs, lambda r: (r["objective"], r["size"], r["data_size"]))
    ablated = {k for k, rs in groups.items() if len({r["autoencoder"] for r in rs}) > 1}
    if not ablated:
        return _skip(key, title, "no objective was trained with more than one autoencoder at the same size and data")
    recs = [r for r in recs if (r["objective"], r["size"], r["data_size"]) in ablated]
    quality, following = _deciding(data)
    metrics = [m for m in (quality, following) if any(cmp.value(r, m) is not None for r in recs)]
    if not metrics:
        return _skip(key, title, f"the ablation runs measured neither {quality} nor {following}")
    ae_names = sorted({r["autoencoder"] for r in recs})
    psnr = {a["name"]: a["metrics"].get("psnr") for a in data.autoencoders}
    series = _series(recs, lambda r: (r["objective"], r["size"], r["autoencoder"]))

    def style(k):
        obj, size, ae = k
        i = ae_names.index(ae)
        ps = f", PSNR {psnr[ae]:.1f} dB" if psnr.get(ae) is not None else ""
        return _colour(obj), LINESTYLES[i % 4], MARKERS[i % 7], f"{obj} {size} · {ae}{ps}"

    fig, axes = _figure(len(metrics))
    ceilings = []
    for ax, m in zip(axes, metrics):
        _draw_metric_vs(ax, series, m, "train_flops", style)
        ceilings += [
            f"{_label(m)}: {n}" for n in _draw_ceilings(ax, data, [(r["objective"], r["autoencoder"]) for r in recs], m)
        ]
        _finish(ax, TRAIN_FLOPS, m, log_y=m != following)
    caption = (
        "Runs that differ only in their autoencoder, as they train: one line style per autoencoder, its "
        "reconstruction PSNR on held-out renders in the legend. A gap between the line styles of one objective is "
        "the autoencoder's effect." + _ceiling_caption(ceilings)
    )
    return Plot(key, title, caption, _png(fig))


def ema_vs_raw(data: cmp.StudyData) -> Plot:
    """EMA vs raw weights: quality vs training FLOPs per objective, EMA solid, raw dashed."""
    key, title = "fig-ema-vs-raw", "EMA vs raw weights"
    pairs = []
    for r in data.records:
        prim = data.settings.get(r["objective"])
        if prim and cmp.setting(r)[1:] == prim[1:]:
            pairs.append(r)
    weights = {(r["run"], r["weights"]) for r in pairs}
    runs_both = {run for run, w in weights if (run, "ema") in weights and (run, "raw") in weights}
    quality = _deciding(data)[0]
    recs = [r for r in pairs if r["run"] in runs_both and cmp.value(r, quality) is not None]
    if not recs:
        return _skip(key, title, f"no run was evaluated with both EMA and raw weights on {quality}")
    main = data.main_autoencoders
    recs = [r for r in recs if r["autoencoder"] == main[r["objective"]]]
    objectives = [o for o in data.objectives if any(r["objective"] == o for r in recs)]
    fig, axes = _figure(len(objectives), width=4.4)
    for ax, obj in zip(axes, objectives):
        rs = [r for r in recs if r["objective"] == obj]
        sizes = sorted({r["size"] for r in rs})
        series = _series(rs, lambda r: (r["size"], r["weights"]))

        def style(k, sizes=sizes, obj=obj):
            size, w = k
            return _colour(obj), "-" if w == "ema" else "--", MARKERS[sizes.index(size) % 7], f"{size} {w}"

        _draw_metric_vs(ax, series, quality, "train_flops", style)
        ax.set_title(obj)
        _finish(ax, TRAIN_FLOPS, quality)
    caption = (
        "The same runs at the same milestones, sampled with the same steps and guidance scale from their EMA "
        "weights (solid) and their raw weights (dashed): the gap between a solid and a dashed line is what EMA "
        "buys that objective."
    )
    return Plot(key, title, caption, _png(fig))


def all_plots(data: cmp.StudyData, loss_fits_by_objective: dict[str, PowerLawFit]) -> list[Plot]:
    return [
        autoencoder_ablation(data),
        quality_vs_training_flops(data),
        loss_fits(data, loss_fits_by_objective),
        quality_vs_inference_flops(data),
        ema_vs_raw(data),
    ]
