"""Figures: memory access over one sequence, and training curves (PNG, matplotlib).

matplotlib is imported when a function is called (``pip install "dmem[plot]"``),
and only through its object-oriented API with the Agg canvas: no display is
needed, no pyplot state is touched, and every figure is released after saving.

* :func:`plot_access` — the NTM paper's figures of inputs, outputs and head
  weightings over time (time on the x axis);
* :func:`plot_curve` — cost per sequence against sequences seen, from the
  ``log.csv`` of a training run.
"""

import csv
import math
import os

import numpy as np

__all__ = ["plot_access", "plot_curve", "MAX_HEAD_PANELS"]

MAX_HEAD_PANELS = 4
"""With more heads than this, their weightings are summed into one panel."""


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("dmem's plots need matplotlib: pip install 'dmem[plot]' "
                          "(or pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_class, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    canvas_class(fig)
    fig.savefig(path, format="png", dpi=110)
    fig.clear()
    return path


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _head_panels(weights, kind):
    """``[(title, (N, T) array)]`` for weightings `(T, H, N)`: one per head, or their sum."""
    T, H, N = weights.shape
    if H == 1:
        return [(f"{kind} weighting", weights[:, 0].T)]
    if H <= MAX_HEAD_PANELS:
        return [(f"{kind} weighting, head {h}", weights[:, h].T) for h in range(H)]
    return [(f"{kind} weightings, sum of {H} heads", weights.sum(axis=1).T)]


def plot_access(model, task, length, path, seed=0):
    """Plot one sequence of ``task`` run through ``model``; save a PNG at ``path``.

    Panels, top to bottom, time on the x axis: inputs, targets (steps with
    mask 0 shaded), outputs (sigmoid of the logits), then write and read
    weightings (memory slots on the y axis; one panel per head, or their sum
    beyond :data:`MAX_HEAD_PANELS` heads) and, for a DNC, the memory usage.
    ``length`` is as in :func:`dmem.training.sample_batch` (``None``: drawn
    from the task's range); the sequence is drawn with ``seed``.  The figure
    title gives the sequence's cost and bit errors.  Returns ``path``.
    """
    from .tasks import bit_errors, cost_bits
    from .training import _check_compatible, sample_batch

    _check_compatible(model, task)
    Figure, Canvas = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    batch = sample_batch(task, 1, np.random.default_rng(seed), length)
    logits, trace = model.forward(batch.inputs, return_trace=True)
    logits = np.asarray(logits, dtype=np.float64)
    x, y, m = batch.inputs[:, 0], batch.targets[:, 0], batch.mask[:, 0]
    out = _sigmoid(logits[:, 0])
    T = x.shape[0]

    panels = [("inputs", x.T, "channel", "gray_r", (None, None)),
              ("targets", y.T, "bit", "gray_r", (0, 1)),
              ("outputs (sigmoid of logits)", out.T, "bit", "gray_r", (0, 1))]
    write = np.asarray(trace["write_weights"])[:, 0]
    if write.ndim == 2:  # DNC: one write head, (T, N)
        write = write[:, None, :]
    read = np.asarray(trace["read_weights"])[:, 0]
    for title, image in _head_panels(write, "write") + _head_panels(read, "read"):
        panels.append((title, image, "memory slot", "magma", (0, None)))
    if "usage" in trace:
        panels.append(("usage", np.asarray(trace["usage"])[:, 0].T, "memory slot", "viridis", (0, 1)))

    fig = Figure(figsize=(max(6.0, 2.0 + 0.12 * T), 1.6 * len(panels) + 0.8), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, image, ylabel, cmap, (vmin, vmax)) in zip(axes, panels):
        im = ax.imshow(image, aspect="auto", interpolation="nearest", cmap=cmap, origin="upper",
                       vmin=vmin, vmax=vmax, extent=(-0.5, T - 0.5, image.shape[0] - 0.5, -0.5))
        if title in ("targets", "outputs (sigmoid of logits)"):
            for t in np.flatnonzero(m == 0):
                ax.axvspan(t - 0.5, t + 0.5, color="tab:blue", alpha=0.08, lw=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03)
    axes[-1].set_xlabel("time step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    cost = cost_bits(logits, batch.targets, batch.mask)
    errors = bit_errors(logits, batch.targets, batch.mask)
    cfg = model.config
    fig.suptitle(f"{model.kind.upper()} ({cfg.memory_slots}×{cfg.word_size} memory) on {task.name}, "
                 f"{T} steps: cost {cost:.3g} bits, {errors:g} bit errors", fontsize=10)
    return _save(fig, Canvas, path)


def _read_log(log_csv):
    log_csv = os.fspath(log_csv)
    if not os.path.exists(log_csv):
        raise FileNotFoundError(f"no training log at {log_csv!r}")
    with open(log_csv, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"sequences", "loss", "eval_cost_bits", "eval_bit_errors"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise ValueError(f"{log_csv!r} is not a dmem training log (needs columns {sorted(needed)})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{log_csv!r} has no rows yet")

    def column(name):
        return np.array([float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows])

    return {name: column(name) for name in ("sequences", "loss", "eval_cost_bits", "eval_bit_errors",
                                            "curriculum_length")}


def plot_curve(log_csv, path):
    """Plot the training curve of ``log_csv`` (a run's ``log.csv``); save a PNG at ``path``.

    Top: training loss and evaluation cost in bits per sequence against
    sequences seen (log y axis when the values span more than a factor 20).  Bottom:
    evaluation bit errors per sequence and, if it changes, the curriculum's
    maximum length.  Returns ``path``.
    """
    Figure, Canvas = _matplotlib()
    log = _read_log(log_csv)
    seqs = log["sequences"]
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    train = np.isfinite(log["loss"])
    top.plot(seqs[train], log["loss"][train], label="training loss", color="tab:gray", lw=1)
    top.plot(seqs, log["eval_cost_bits"], label="evaluation cost", color="tab:blue", marker=".", lw=1.5)
    values = np.concatenate([log["loss"][train], log["eval_cost_bits"]])
    values = values[np.isfinite(values)]
    if values.size and np.all(values > 0) and values.max() > 20 * values.min():
        from matplotlib.ticker import FuncFormatter

        top.set_yscale("log")
        top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    top.set_ylabel("cost (bits per sequence)")
    top.legend(fontsize=8)
    top.grid(True, alpha=0.3)
    top.set_title(f"training curve: {os.path.basename(os.path.dirname(os.path.abspath(log_csv)))}",
                  fontsize=10, loc="left")
    bottom.plot(seqs, log["eval_bit_errors"], color="tab:red", marker=".", lw=1.5,
                label="evaluation bit errors")
    bottom.set_ylabel("bit errors per sequence")
    bottom.set_xlabel("sequences seen")
    bottom.grid(True, alpha=0.3)
    lengths = log["curriculum_length"]
    if np.any(np.isfinite(lengths)) and np.nanmin(lengths) != np.nanmax(lengths):
        twin = bottom.twinx()
        twin.step(seqs, lengths, where="post", color="tab:green", lw=1, label="max length")
        twin.set_ylabel("curriculum max length", color="tab:green")
    bottom.legend(fontsize=8, loc="upper right")
    return _save(fig, Canvas, path)
