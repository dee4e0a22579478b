"""Notes, tables and the plot of the ``binary_estimators`` suite, with the seed's numbers beside ours.

Reference: seed 002's quick check (lr = 0.1), parsed from the author's ``NES_log_old.log`` as quoted
in shared/specs/binary.md §3.2 (mean over 10 batches x 3 inits of 160,000 samples). Pure torch/matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evoens_benchmarks.binary_handover import handover_notes

if TYPE_CHECKING:  # pragma: no cover
    from evoens_benchmarks.binary_estimators import ToyConfig

# Seed-002 log labels -> our names: STE-0 vanilla = clipped, STE-2 steep, STE-3 swishsign, STE-4 poly.
SEED_NAMES = ("cdg", "nes-500", "nes-5000", "nes-50000", "ste:clipped", "ste:steep", "ste:swishsign", "ste:approxsign")
SEED_DEC: dict[int, tuple[float, ...]] = {
    2: (0.02045, 0.01905, 0.02112, 0.02134, 0.01717, 0.01659, 0.00664, 0.01688),
    4: (0.02136, 0.01797, 0.01864, 0.01889, 0.01791, 0.01816, 0.01770, 0.01820),
    8: (0.03874, 0.02844, 0.03639, 0.03615, 0.03460, 0.03456, 0.04291, 0.04343),
    16: (0.03588, 0.00010, 0.03006, 0.03295, 0.03289, 0.03461, 0.03581, 0.03518),
    32: (0.03181, -0.00050, 0.01720, 0.02496, 0.03031, 0.03100, 0.03202, 0.03171),
}
SEED_COS: dict[int, tuple[str, ...]] = {  # [W1 W2 W3] for SEED_NAMES[1:]
    2: (".28 .30 .88", ".64 .29 .88", ".73 .18 .88", ".53 .33 .29", ".20 .24 .34", "-.34 -.38 .58", ".01 .05 .37"),
    4: (".37 .28 .66", ".55 .47 .74", ".64 .46 .74", ".40 .18 .76", ".43 .13 .75", ".22 -.06 .49", ".29 .18 .72"),
    8: (".37 .45 .72", ".74 .78 .92", ".83 .84 .94", ".64 .63 .93", ".69 .69 .96", ".66 .58 .87", ".72 .74 .96"),
    16: (".00 -.01 -.01", ".49 .66 .86", ".79 .89 .95", ".78 .85 .94", ".85 .90 .96", ".92 .93 .94", ".91 .93 .96"),
    32: (".00 -.01 .01", ".09 .13 .35", ".39 .51 .84", ".88 .90 .96", ".92 .94 .98", ".97 .98 .97", ".97 .97 .98"),
}

Rows = list[dict[str, Any]]


def pivot(rows: Rows, key: str, fmt: str = "{:.4f}") -> list[str]:
    """A markdown table: one line per dim, one column per estimator, cells ``fmt(row[key])``."""
    est = list(dict.fromkeys(r["estimator"] for r in rows))
    lines = ["| d | " + " | ".join(est) + " |", "|---|" + "---|" * len(est)]
    for dim in dict.fromkeys(r["dim"] for r in rows):
        cells = {r["estimator"]: r for r in rows if r["dim"] == dim}
        vals = [fmt.format(cells[e][key]) if e in cells else "–" for e in est]
        lines.append(f"| {dim} | " + " | ".join(vals) + " |")
    return lines


def _cos(r: dict[str, Any]) -> str:
    return " ".join(f"{r[f'cos_W{k}']:.2f}" for k in (1, 2, 3))


def seed_comparison(rows: Rows) -> list[str]:
    """Ours vs the seed's log, for the dims and estimators both have."""
    ours = {(r["dim"], r["estimator"]): r for r in rows}
    lines = [
        "## Comparison with the seed's quick check (spec §3.2): ours / seed",
        "",
        "| d | estimator | dec@0.1 normalised | raw@0.1 (unnormalised) | seed dec@0.1 | cos [W1 W2 W3] | seed cos |",
        "|---|---|---|---|---|---|---|",
    ]
    for dim, decs in SEED_DEC.items():
        for i, name in enumerate(SEED_NAMES):
            r = ours.get((dim, name))
            if r is None:
                continue
            seed_cos = "1 1 1 (reference)" if i == 0 else SEED_COS[dim][i - 1]
            lines.append(f"| {dim} | {name} | {r['dec@0.1']:.4f} | {r['raw@0.1']:.4f} | {decs[i]:.4f} | "
                         f"{_cos(r)} | {seed_cos} |")  # fmt: skip
    return lines


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def open_ideas_summary(rows: Rows, guided_popsize: int) -> list[str]:
    # Each idea against plain NES at the same number of loss evaluations, and against the clipped STE.
    """Computed one-liners: does STE guidance help NES at equal cost, and against the STE itself?"""
    by = {(r["dim"], r["estimator"]): r for r in rows}
    dims = sorted({r["dim"] for r in rows})
    ideas = [(f"nes_guided-{guided_popsize}", guided_popsize), (f"nes_guided4-{guided_popsize}", guided_popsize)]
    cv = [name for name in dict.fromkeys(r["estimator"] for r in rows) if name.startswith("nes_cv-")]
    ideas += [(name, int(name.removeprefix("nes_cv-"))) for name in cv]
    out = ["## Do the open ideas help? (computed from the rows above)", ""]
    for g, popsize in ideas:
        plain = f"nes-{popsize}"
        have = [d for d in dims if (d, g) in by and (d, plain) in by]
        pairs = [(by[(d, g)], by[(d, plain)], by[(d, "ste:clipped")]) for d in have]
        if not pairs:
            continue
        cos_g, cos_p, cos_s = (_mean([sum(r[f"cos_W{k}"] for k in (1, 2)) / 2 for r in col]) for col in zip(*pairs))
        wins_p = sum(a["best_dec"] > b["best_dec"] for a, b, _ in pairs)
        wins_s = sum(a["best_dec"] > c["best_dec"] for a, _, c in pairs)
        out.append(
            f"- {g} ({popsize} evaluations + 1 STE backward): mean hidden-layer cosine to CDG {cos_g:.2f} vs "
            f"{cos_p:.2f} for {plain} and {cos_s:.2f} for ste:clipped; larger best-lr loss decrease than {plain} "
            f"at {wins_p}/{len(pairs)} dims and than ste:clipped at {wins_s}/{len(pairs)} dims."
        )
    return out


SEED_LOSS0 = {2: 0.67, 4: 0.43, 8: 0.90, 16: 0.76, 32: 0.67}


def seed_differences(rows: Rows) -> list[str]:
    """Where our numbers and the seed's differ, one computed line each."""
    by = {(r["dim"], r["estimator"]): r for r in rows}
    common = [d for d in SEED_DEC if (d, "cdg") in by and d >= 8]
    ratio = _mean([by[(d, "cdg")]["dec@0.1"] / SEED_DEC[d][0] for d in common])
    raw = _mean([by[(d, "cdg")]["raw@0.1"] / SEED_DEC[d][0] for d in common])
    ste_w3 = [r["cos_W3"] for r in rows if r["estimator"].startswith("ste:")]
    seen = [(d, v) for d, v in SEED_LOSS0.items() if (d, "cdg") in by]
    loss0 = ", ".join(f"{d}: {by[(d, 'cdg')]['loss0']:.2f} ({v:.2f})" for d, v in seen)
    nes = [(d, by[(d, "nes-50000")]) for d in (16, 32) if (d, "nes-50000") in by]
    nes_txt = "; ".join(f"d={d} {_cos(r)} vs seed {SEED_COS[d][2]}" for d, r in nes) or "n/a"
    zero_cdg = ", ".join(
        f"d={r['dim']} W{k}" for r in rows if r["estimator"] == "cdg" for k in (1, 2, 3) if r[f"cos_W{k}"] < 0.999
    )
    nes_vs_cdg = "; ".join(
        f"d={d} {name} {by[(d, name)]['best_dec']:.3f} at lr {by[(d, name)]['best_lr']:g} vs cdg "
        f"{by[(d, 'cdg')]['best_dec']:.3f} at {by[(d, 'cdg')]['best_lr']:g}"
        for d in sorted({r["dim"] for r in rows})
        for name in [
            max(
                (r["estimator"] for r in rows if r["dim"] == d and r["estimator"][4:].isdigit()),
                key=lambda n: int(n[4:]),
                default="",
            )
        ]  # fmt: skip
        if name and (d, "cdg") in by
    )
    return [
        "## Differences from the seed (computed)",
        "",
        f"- initial loss per d, ours (seed): {loss0}",
        f"- CDG loss decrease at lr 0.1, d >= 8: ~{ratio:.0f}x the seed's (normalised steps), ~{raw:.0f}x (raw steps)",
        f"- smallest cos_W3 of an STE to CDG: {min(ste_w3):.6f} (seed: 0.29-0.98)" if ste_w3 else "- no STE rows",
        f"- NES-50k cosines [W1 W2 W3]: {nes_txt}",
        f"- CDG cos < 1 (its gradient of a tensor exactly zero at some point): {zero_cdg or 'nowhere'}",
        f"- best lr, largest NES vs CDG: {nes_vs_cdg or 'n/a'}",
    ]


def notes_for(cfg: ToyConfig, rows: Rows, train_rows: Rows, t_est: float, t_train: float) -> list[str]:
    too_big = [(p, d) for d in cfg.dims for p in cfg.nes_popsizes if p * (2 * d * d + d) > cfg.nes_max_cost]
    skipped = ", ".join(f"nes-{p} at d={d}" for p, d in too_big) or "none"
    return [
        "## What was run",
        "",
        f"- dims {list(cfg.dims)}; {cfg.num_init} inits x {cfg.num_batch} batch(es) of {cfg.batch} samples per dim "
        "(seed: 3 inits x 10 batches of 160,000); x ~ N(0, I); loss = MSE to an independent teacher of the same kind.",
        "- model d->d->d->1, bias-free, sign (+-1) hidden units (0 -> +1), linear output, PyTorch default init; "
        f"CDG eps={cfg.eps}; NES antithetic, sigma={cfg.sigma}, no fitness shaping, popsizes "
        f"{list(cfg.nes_popsizes)} as prefixes of one stream of draws (nes-500 = the first 250 mirrored pairs of "
        f"nes-5000, ...); popsizes with popsize x D > {cfg.nes_max_cost:.3g} skipped for time: {skipped}.",
        f"- guided NES (Guided ES covariance, alpha=0.5, {cfg.guided_popsize} evaluations): nes_guided spans the "
        "clipped-STE gradient, nes_guided4 the span of the four STE gradients at the same point; nes_cv-P: "
        "antithetic NES with the clipped-STE gradient as a least-squares-fitted linear control variate.",
        "- every gradient normalised per tensor (g_l / (||g_l|| + 1e-8)); loss decrease in-sample on the "
        f"estimation batch; lr grid {list(cfg.lrs)}; means over all points; evals = loss evaluations per "
        "estimate; raw@0.1 = decrease of the UNnormalised step w - 0.1 g.",
        f"- wall time: estimates {t_est:.0f} s, handover training {t_train:.0f} s ({cfg.threads or 'default'} "
        "torch thread(s)).",
        "",
        "## Loss decrease at lr = 0.1 (mean, per-tensor normalised steps)",
        "",
        *pivot(rows, "dec@0.1"),
        "",
        "## Cosine to CDG per layer [W1 W2 W3] (mean)",
        "",
        *pivot([{**r, "cos": _cos(r)} for r in rows], "cos", "{}"),
        "",
        "## Best lr per (d, estimator) and the decrease there",
        "",
        *pivot([{**r, "best": f"{r['best_lr']:g} ({r['best_dec']:.4f})"} for r in rows], "best", "{}"),
        "",
        *seed_comparison(rows),
        "",
        *seed_differences(rows),
        "",
        *open_ideas_summary(rows, cfg.guided_popsize),
        "",
        *handover_notes(train_rows),
    ]


def plot_curves(rows: Rows, lrs: tuple[float, ...]) -> Callable[[Path], None]:
    """Loss decrease vs lr, one panel per dim, one line per estimator."""

    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        dims = list(dict.fromkeys(r["dim"] for r in rows))
        cols = min(3, len(dims))
        nrows = (len(dims) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
        for ax, dim in zip(axes.flat, dims):
            for r in (r for r in rows if r["dim"] == dim):
                name = r["estimator"]
                style = "-" if name.startswith("ste") else ("k--" if name == "cdg" else ":")
                ax.plot(lrs, r["curve"], style, marker=".", label=name)
            ax.set_xscale("log")
            ax.axhline(0.0, color="grey", lw=0.5)
            ax.set_title(f"d = {dim}")
            ax.set_xlabel("lr (per-tensor normalised step)")
            ax.set_ylabel("loss decrease (in-sample)")
        for ax in list(axes.flat)[len(dims) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return draw
