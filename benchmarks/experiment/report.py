"""The experiment's report: summaries over seeds, verdicts read from the numbers, the Markdown
page and the plot.

Rule for a verdict: runs with the same seed share their initialisation and their labelled
images, so two settings are compared by their per-seed differences. A difference is called
better (or worse) only when its mean exceeds twice its standard error (sd / √n, n ≥ 2);
otherwise the page says there is no clear difference. Accuracies are in percent.
"""
from __future__ import annotations

import io
import math
import statistics

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def summary(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value), in percent."""
    pct = [100 * v for v in values]
    return statistics.fmean(pct), statistics.stdev(pct) if len(pct) > 1 else 0.0


def pm(values: list[float]) -> str:
    mean, sd = summary(values)
    return f"{mean:.1f} ± {sd:.1f}"


def paired(a: list[float], b: list[float]) -> tuple[float, float, str]:
    """(mean of a − b, its standard error, verdict for a against b), in percentage points."""
    d = [100 * (x - y) for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return mean, math.nan, "one seed: no verdict"
    se = statistics.stdev(d) / math.sqrt(len(d))
    if mean > 2 * se:
        return mean, se, "better"
    if mean < -2 * se:
        return mean, se, "worse"
    return mean, se, "no clear difference"


def _diff(a: list[float], b: list[float]) -> str:
    mean, se, verdict = paired(a, b)
    return f"{mean:+.1f}" + (f" ± {se:.1f}" if not math.isnan(se) else "") + f" ({verdict})"


def _sentence(name: str, a: list[float], other: str, b: list[float]) -> str:
    mean, se, verdict = paired(a, b)
    size = f"{mean:+.1f} points" + (f", standard error {se:.1f}" if not math.isnan(se) else "")
    if verdict == "better":
        return f"{name} beats {other} ({size})."
    if verdict == "worse":
        return f"{name} is worse than {other} ({size}): here it does not help."
    if verdict == "no clear difference":
        return f"{name} does not clearly beat {other} ({size}): within the seeds' noise, it does not help."
    return f"{name} against {other}: {size} ({verdict})."


def _best(sweep: dict[float, list[float]]) -> float:
    return max(sweep, key=lambda lam: statistics.fmean(sweep[lam]))


def typing_section(r: dict) -> list[str]:
    base, share, sweep = r["independent"], r["shared"], {float(k): v for k, v in r["tied"].items()}
    header = ("| relation between the two classifiers | target test accuracy (%) | source test accuracy (%) | "
              "target vs independent (points) |")
    lines = [header, "|---|---|---|---|",
             f"| independent | {pm(base['target'])} | {pm(base['source'])} | |"]
    for lam, run in sorted(sweep.items()):
        lines.append(f"| `tie({lam:g})` | {pm(run['target'])} | {pm(run['source'])} | "
                     f"{_diff(run['target'], base['target'])} |")
    lines.append(f"| `share` | {pm(share['target'])} | {pm(share['source'])} | "
                 f"{_diff(share['target'], base['target'])} |")
    targets = {lam: run["target"] for lam, run in sweep.items()}
    best = _best(targets)
    return lines + ["", _sentence(f"The best tie, `tie({best:g})`,", targets[best], "independent training", base["target"]),
                    _sentence("Hard sharing", share["target"], "independent training", base["target"]),
                    _sentence(f"`tie({best:g})`", targets[best], "hard sharing", share["target"]),
                    _sentence(f"On the source task, `tie({best:g})`", sweep[best]["source"], "independent training",
                              base["source"])]


def autoencoder_section(r: dict) -> list[str]:
    alone, shared, sweep = r["alone"], r["shared"], {float(k): v for k, v in r["tied"].items()}
    lines = ["| classifier | target test accuracy (%) | vs the classifier alone (points) |", "|---|---|---|",
             f"| alone (labelled images only) | {pm(alone)} | |"]
    for lam, run in sorted(sweep.items()):
        lines.append(f"| `tie({lam:g})` to the autoencoder | {pm(run)} | {_diff(run, alone)} |")
    lines.append(f"| encoder shared with the autoencoder | {pm(shared)} | {_diff(shared, alone)} |")
    best = _best(sweep)
    return lines + ["", _sentence(f"The best tie to the autoencoder, `tie({best:g})`,", sweep[best],
                                  "the classifier alone", alone),
                    _sentence("Sharing the encoder", shared, "the classifier alone", alone)]


def memory_section(r: dict) -> list[str]:
    header = ("| model | logical params | unique params | logical / unique | unique bytes (stats) | "
              "measured parameter bytes | tensors | measured / stats |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['label']} | {row['logical_params']:,} | {row['unique_params']:,} | "
                     f"{row['logical_params'] / row['unique_params']:.2f}x | {row['unique_bytes']:,} | "
                     f"{row['measured_bytes']:,} | {row['tensors']} | {row['measured_bytes'] / row['unique_bytes']:.3f} |")
    by = {row["model"]: row for row in r["rows"]}
    lc, cnn, bert, albert = by["LocallyConnected"], by["CNN"], by["Bert"], by["Albert"]
    acc = r["accuracy"]
    positions = (f"The locally connected model stores {lc['measured_bytes'] / cnn['measured_bytes']:.2f}x the CNN's "
                 f"parameter bytes ({lc['measured_bytes']:,} against {cnn['measured_bytes']:,}); its layer alone holds "
                 f"{r['local_params']:,} values where the convolution holds {r['conv_params']:,} "
                 f"({r['local_params'] / r['conv_params']:g}x, one copy per output position), and the shared head "
                 "makes up the rest. Given the convolution's weights at every position, it computes the CNN's outputs "
                 f"on the target test images to within {r['equivalence_max_abs']:.1e} (largest absolute difference): "
                 "the CNN is this model with its positions tied into one tensor.")
    layers = (f"ALBERT stores {albert['measured_bytes'] / bert['measured_bytes']:.3f}x BERT's parameter bytes "
              f"({bert['measured_bytes'] / albert['measured_bytes']:.1f}x fewer) for the same logical parameters "
              f"per forward ({albert['logical_params']:,} against {bert['logical_params']:,}).")
    return lines + [
        "", positions, "", layers, "",
        "| model (same start) | target test accuracy (%) |", "|---|---|",
        f"| CNN | {pm(acc['CNN'])} |", f"| locally connected | {pm(acc['LocallyConnected'])} |", "",
        _sentence("Sharing across positions (the CNN)", acc["CNN"], "the locally connected model",
                  acc["LocallyConnected"]),
    ]


def plot(results: dict) -> bytes:
    """Target test accuracy against λ, one panel per part (a) target and one for part (b), with
    ±1 sd bars and the untied baselines as dashed lines and ±1 sd bands; PNG bytes."""
    typing, ae = results["typing"], results["autoencoder"]
    panels = [(f"(a) two classifiers, target: {kind}", r["tied"],
               [("independent", r["independent"]["target"], "tab:gray"), ("share", r["shared"]["target"], "tab:green")],
               lambda v: v["target"]) for kind, r in typing.items()]
    panels.append(("(b) classifier tied to an autoencoder", ae["tied"],
                   [("classifier alone", ae["alone"], "tab:gray"), ("shared encoder", ae["shared"], "tab:green")],
                   lambda v: v))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, sweep, bands, pick) in zip(axes, panels):
        lams = sorted(sweep, key=float)
        stats = [summary(pick(sweep[k])) for k in lams]
        ax.errorbar([float(k) for k in lams], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=3, color="tab:blue", label="tie(λ)")
        for name, values, colour in bands:
            mean, sd = summary(values)
            ax.axhline(mean, color=colour, linestyle="--", label=f"{name} ({mean:.1f}%)")
            ax.axhspan(mean - sd, mean + sd, color=colour, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_ylabel("target test accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
