"""PNG plots of what people would rather look at than read: training curves, confusion matrices."""

from __future__ import annotations

import functools
import os

import matplotlib

from mobilenet.files import atomic_output

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402

class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels where matplotlib's default would put them, written 0.02 rather than
    typeset as mathtext's 2x10^-2 (a fifth of a curves plot's drawing time)."""

    def __call__(self, value, pos=None) -> str:
        return f"{value:g}" if super().__call__(value, pos) else ""


PNG = {"compress_level": 1}  # zlib's fastest: a fifth of a curves plot's time at level 6, files ~10% larger


def readable(name: str) -> str:
    """A name as it can be shown anywhere: a folder name that is not valid UTF-8 (decoded by Python
    with surrogate escapes) shows its odd bytes as \\xNN instead of breaking a print or a font."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _save(fig, path: str | os.PathLike, tight: bool = True) -> None:
    """Write the figure atomically: a reader never sees half a PNG. `tight` crops it to what is drawn,
    which draws it twice; a figure with fixed margins of its own can skip that."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight" if tight else None, format="png", pil_kwargs=PNG)
    plt.close(fig)


class CurvesFigure:
    """The figure of `plot_curves`, built once per process and given new data for each epoch: a run
    draws it after every epoch, and a figure whose artists (and text measurements) are kept draws in
    about two thirds of the time of a new one. Drawn cheaply besides: fixed margins, not a tight crop
    (which draws twice); titles at a fixed height (else placed by measuring every tick label); plain
    log-axis labels; whole epochs on the x axes."""

    SERIES = (("loss", "train", "train_loss"), ("loss", "test", "test_loss"),
              ("accuracy", "train (augmented)", "train_acc"), ("accuracy", "test top-1", "test_top1"))

    def __init__(self) -> None:
        self.figure = Figure(figsize=(10, 3.8))
        ax_loss, ax_acc = self.figure.subplots(1, 2)
        self.axes = {"loss": ax_loss, "accuracy": ax_acc}
        self.lines = [self.axes[panel].plot([], [], "o-", label=label)[0] for panel, label, _ in self.SERIES]
        ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log")
        ax_loss.yaxis.set_major_formatter(PlainLogFormatter())
        ax_loss.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
        for name, ax in self.axes.items():
            ax.grid(alpha=0.3)
            ax.legend()
            ax.set_title(name, y=1.0, pad=6)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.title = self.figure.suptitle("")
        self.figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.84, wspace=0.24)

    def draw(self, metrics: list[dict], path: str | os.PathLike, title: str) -> None:
        for line, (panel, _, key) in zip(self.lines, self.SERIES):
            shown = [m for m in metrics if key in m]  # the test series only where evaluated (--eval-every)
            line.set_data([m["epoch"] for m in shown], [(100 if panel == "accuracy" else 1) * m[key] for m in shown])
        for ax in self.axes.values():
            ax.relim()
            ax.autoscale_view()
        self.title.set_text(title)
        with atomic_output(path) as tmp:
            self.figure.savefig(tmp, dpi=110, format="png", pil_kwargs=PNG)


@functools.cache
def _curves_figure() -> CurvesFigure:
    return CurvesFigure()


def plot_curves(metrics: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy per epoch, train against test."""
    _curves_figure().draw(metrics, path, title)


def plot_accuracy_over_time(runs: dict[str, list[dict]], path: str | os.PathLike, title: str = "",
                            references: dict[str, float] | None = None, x: str = "minutes") -> None:
    """Held-out top-1 against wall-clock minutes (training and evaluation; `x="minutes"`) or against
    the training compute spent (`x="pflop"`, the metrics' running `pflop`), one line per run, with
    published results as dashed horizontal lines."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, metrics in runs.items():
        where, top1, elapsed = [], [], 0.0
        for m in metrics:
            elapsed += m["epoch_time_s"] + m.get("eval_time_s", 0.0)
            if "test_top1" in m:  # evaluated epochs only (--eval-every)
                where.append(elapsed / 60 if x == "minutes" else m["pflop"])
                top1.append(100 * m["test_top1"])
        ax.plot(where, top1, "o-", markersize=3, label=label)
    for i, (name, value) in enumerate(sorted((references or {}).items(), key=lambda item: item[1])):
        ax.axhline(100 * value, linestyle="--", linewidth=1, color="grey")
        # labelled outside the right edge, staggered, since published results sit close together
        ax.annotate(name, (1.0, 100 * value), xycoords=("axes fraction", "data"), xytext=(4, 9 * i - 9),
                    textcoords="offset points", fontsize=7, color="grey", va="center")
    ax.set(xlabel="wall-clock minutes (training and evaluation)" if x == "minutes" else
           "training PFLOP (3 x forward FLOPs x images, at the side trained at)", ylabel="held-out top-1 (%)",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_confusion(confusion, classes: list[str], path: str | os.PathLike, title: str = "") -> None:
    """The confusion matrix, rows the true class, columns the predicted one, with counts."""
    n = len(classes)
    classes = [readable(name) for name in classes]
    size = max(4.0, min(16.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        peak = max(1, int(confusion.max()))
        for i in range(n):
            for j in range(n):
                value = int(confusion[i][j])
                if value:
                    ax.text(j, i, value, ha="center", va="center", fontsize=8,
                            color="white" if value > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    _save(fig, path)


def plot_sweep(result: dict, path: str | os.PathLike) -> None:
    """Measured latency against mult-adds, log-log, one series per runtime: the paper's Figure 4
    with measured time in place of accuracy's companion axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.5, 5))
    runtimes = list(dict.fromkeys(r["runtime"] for row in result["rows"] for r in row["results"]))
    for runtime in runtimes:
        points = sorted((row["macs"] / 1e6, r["median_ms"]) for row in result["rows"]
                        for r in row["results"] if r["runtime"] == runtime)
        ax.plot(*zip(*points), "o-", label=runtime, alpha=0.85)
    best = sorted((row["macs"] / 1e6, min(r["median_ms"] for r in row["results"]))
                  for row in result["rows"] if row["results"])
    if len(runtimes) > 1 and best:
        ax.plot(*zip(*best), "-", color="black", linewidth=3, alpha=0.3, label="fastest of all")
    bound = sorted((row["macs"] / 1e6, row["compute_bound"]["limit_ms"]) for row in result["rows"])
    if bound:
        ax.plot(*zip(*bound), "k--", label="fp32 compute bound", alpha=0.6)
    if runtimes:
        first = runtimes[0]
        widths = sorted({row["width"] for row in result["rows"]}, reverse=True)
        # models of about the same mult-adds (0.75-128 and 0.5-192) sit on one spot: each width's
        # labels go to their own side of the point
        offsets = [(4, 4), (4, -10), (-34, 4), (-34, -10)]
        for row in result["rows"]:
            ms = next((r["median_ms"] for r in row["results"] if r["runtime"] == first), None)
            if ms is not None:
                ax.annotate(f"{row['width']:g}-{row['resolution']}", (row["macs"] / 1e6, ms), fontsize=7,
                            xytext=offsets[widths.index(row["width"]) % len(offsets)], textcoords="offset points")
    env = result["environment"]
    ax.set(xscale="log", yscale="log", ylabel="median latency (ms)",
           xlabel="million mult-adds (analytic); points labelled width multiplier-resolution, e.g. 0.5-160",
           title=f"{result['model']}, batch {result['batch']}: latency against mult-adds\n"
                 f"{env['cpu']}, {env['threads']} threads, torch {env['versions']['torch']}")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers (10, 20, 50...) rather than 2x10^1
        axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, path)


def plot_tradeoff(rows: list[dict], key: str, xlabel: str, path: str | os.PathLike, title: str) -> None:
    """Test top-1 against a cost (`key` of each row: mult-adds, parameters, latency), log x axis,
    each point labelled as the paper labels Figure 4's ("width/resolution"), one series per model;
    a seed spread as an error bar. The V1 paper's Figures 4 and 5 on the user's data."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.5, 5))
    scale = 1e6 if key in ("macs", "params") else 1.0
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = sorted((row for row in rows if row["model"] == model and row.get(key) is not None),
                      key=lambda row: row[key])
        if not mine:
            continue
        xs, ys = [row[key] / scale for row in mine], [100 * row["top1"] for row in mine]
        ax.errorbar(xs, ys, yerr=[50 * row.get("top1_spread", 0) for row in mine], fmt="o", capsize=3, label=model)
        for row, x, y in zip(mine, xs, ys):
            ax.annotate(row["label"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", xlabel=xlabel, ylabel="test top-1 %", title=title)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    if rows:
        ax.legend()
    _save(fig, path)
