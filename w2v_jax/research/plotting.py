"""Figures of the research workflow: curve overlays, codebook usage, sweep results, representations,
CTC alignments.

Every function writes a PNG (matplotlib's Agg backend, no display needed) and returns nothing;
`representation_figure` and `ctc_alignment_figure` return the figure so notebooks can show it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")  # servers and CI have no display; notebooks show returned figures anyway
import matplotlib.pyplot as plt
import numpy as np

from w2v_jax.data.audio import RECEPTIVE_FIELD, SAMPLE_RATE
from w2v_jax.data.utterances import FRAME_HOP
from w2v_jax.training.metrics import X_AXES, check_x_axis


class PhoneProbeResults(Protocol):
    """What `plot_phone_probe` reads of a `probes.PhoneProbeReport`."""

    # Read-only (properties), as the frozen dataclass holds them.
    @property
    def num_frames(self) -> Mapping[str, int]: ...

    @property
    def majority(self) -> Mapping[str, float]: ...

    @property
    def held_out_voices(self) -> Sequence[str]: ...

    @property
    def num_classes(self) -> int: ...

    def feature_names(self) -> list[str]: ...

    def rows(self, features: str) -> list[Any]: ...

    def best(self, features: str) -> Any: ...


_TITLES = {
    "loss": "loss per masked frame",
    "contrastive_loss": "contrastive loss per masked frame",
    "diversity_loss": "diversity loss per masked frame",
    "code_perplexity": "code perplexity",
    "accuracy": "contrastive accuracy",
}


def plot_curve_overlay(
    records: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    metrics: Sequence[str],
    frameworks: Sequence[str],
    external: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """One panel per metric, one line per framework (`{metric}_{framework}` columns of `records`).

    Args:
      records: per-step dicts with a `step` key.
      path: the PNG to write.
      metrics: panels, e.g. ("loss", "accuracy").
      frameworks: lines, e.g. ("jax", "pytorch").
      external: {label: (steps, losses)} of other runs, drawn dashed on the "loss" panel.
    """
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.3), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        for framework, style in zip(frameworks, ("-", "--", ":", "-.")):
            ax.plot(steps, [r[f"{name}_{framework}"] for r in records], style, label=framework, linewidth=1.2)
        if name == "loss":
            for label, (ext_steps, values) in (external or {}).items():
                ax.plot(ext_steps, values, ":", label=label, linewidth=1.2)
        ax.set_title(_TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_codebook_usage(usage: np.ndarray, path: str | os.PathLike, title: str = "codebook usage") -> None:
    """Bar chart per group of how often each codeword was chosen, most used first.

    Args:
      usage: `[G, V]` counts (`validation.ValidationMetrics.codebook_usage`).
      path: the PNG to write.
    """
    usage = np.asarray(usage)
    if usage.ndim != 2:
        raise ValueError(f"usage must be [G, V] counts, got shape {usage.shape}")
    groups, num_vars = usage.shape
    fig, axes = plt.subplots(1, groups, figsize=(4.5 * groups, 3.0), squeeze=False)
    for g, ax in enumerate(axes[0]):
        counts = np.sort(usage[g])[::-1]
        share = counts / max(counts.sum(), 1)
        ax.bar(np.arange(num_vars), share, width=1.0)
        ax.set_title(f"group {g}: {int(np.sum(counts > 0))}/{num_vars} codewords used", fontsize=10)
        ax.set_xlabel("codeword (sorted by use)")
        ax.set_ylabel("share of frames")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_phone_probe(report: PhoneProbeResults, path: str | os.PathLike) -> None:
    """Phone probe accuracy against depth, one panel per test set (`probes.PhoneProbeReport`).

    A line per model (the checkpoint, random init) over its feature sets in depth order; log-mel
    and the majority class as horizontal lines; each model's best layer circled. A test set
    without frames (no voice held out) gets no panel.
    """
    titles = {"unseen_voice": "unseen voices", "held_out_sentences": "held-out sentences (seen voices)"}
    tests = [t for t in titles if report.num_frames.get(t)]
    models = [name for name in report.feature_names() if report.rows(name)[0].layer]
    constants = [name for name in report.feature_names() if name not in models]
    fig, axes = plt.subplots(1, len(tests), figsize=(5.2 * len(tests), 3.6), squeeze=False)
    for ax, test in zip(axes[0], tests):
        for name, color in zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            rows = report.rows(name)
            values = [getattr(r, test) for r in rows]
            ax.plot(range(len(rows)), values, marker="o", color=color, label=name)
            best = rows.index(report.best(name))
            ax.plot(best, values[best], "o", markersize=12, markerfacecolor="none", color=color)
        for name, style in zip(constants, ("--", "-.", ":")):
            ax.axhline(getattr(report.rows(name)[0], test), linestyle=style, color="gray", label=name)
        ax.axhline(report.majority[test], linestyle=":", color="black", label="majority class")
        layers = [r.layer for r in report.rows(models[0])] if models else []
        ax.set_xticks(range(len(layers)), layers, rotation=30, fontsize=8)
        voices = f" ({', '.join(report.held_out_voices)})" if test == "unseen_voice" else ""
        ax.set_title(f"{titles[test]}{voices}: {report.num_frames[test]} frames", fontsize=10)
        ax.set_ylabel("phone accuracy (frames)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"linear frame phone probe per layer ({report.num_classes} phones)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep_results(points: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """A sweep's trend against the codebook size G x V, one line per G, error bars over seeds.

    Panels: the phone probe's accuracy on unseen voices (best layer solid, last layer dashed; when
    the points have it), validation accuracy with its real chance level (dotted), accuracy minus
    chance, validation loss, code perplexity and the share of codewords used.

    Args:
      points: `sweep.summarize_seeds` entries: `codebook_size`, the grid values and `Spread`s
        (mean, min, max; the bars span min to max).
      path: the PNG to write.
    """
    # (title, [(metric, line style, label suffix)]): the first metric decides whether the panel is drawn.
    panels: list[tuple[str, list[tuple[str, str, str | None]]]] = [
        (
            "phone probe accuracy (unseen voices)",
            [("probe_best_unseen_voice", "-", "best layer"), ("probe_last_unseen_voice", "--", "last layer")],
        ),
        (
            "validation accuracy (x, dotted: chance)",
            [("valid_accuracy", "-", None), ("valid_chance_accuracy", ":", None)],
        ),
        ("validation accuracy - chance", [("valid_accuracy_above_chance", "-", None)]),
        ("validation loss per masked frame", [("valid_loss", "-", None)]),
        ("code perplexity (validation)", [("valid_code_perplexity", "-", None)]),
        ("share of the G x V codewords used", [("used_fraction", "-", None)]),
    ]
    panels = [(title, lines) for title, lines in panels if points and lines[0][0] in points[0]]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for point in points:
        label = f"G={point['model.num_codevector_groups']}" if "model.num_codevector_groups" in point else "all"
        groups.setdefault(label, []).append(point)
    columns = 3
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, lines) in zip(axes.flat, panels):
        for (label, members), color in zip(groups.items(), colors):
            members = sorted(members, key=lambda p: p["codebook_size"])
            x = np.asarray([p["codebook_size"] for p in members], np.float64)
            for name, style, kind in lines:
                mean = np.asarray([p[name].mean for p in members])
                bars = [mean - [p[name].min for p in members], [p[name].max for p in members] - mean]
                ax.errorbar(
                    x,
                    mean,
                    yerr=bars,
                    fmt=style,
                    marker={"-": "o", "--": "s", ":": "x"}[style],
                    markersize=4,
                    capsize=3,
                    color=color,
                    label=label if kind is None else f"{label}, {kind}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size G x V")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if lines[0][2] is not None or ax is axes.flat[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("mean over seeds, bars: min to max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep_curves(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | os.PathLike, x: str = "step"
) -> None:
    """Every run's training curves overlaid against `x` (`metrics.X_AXES`: the step, the hours of
    audio seen, the model FLOPs done): one colour per point (its seeds share it).

    Panels: training loss, training accuracy with its real chance level (dotted, where the records
    have `chance_accuracy`) and validation accuracy (markers, where they have `valid_accuracy`),
    code perplexity.

    Args:
      runs: (point label, the run's `metrics.jsonl` records) per run.
      path: the PNG to write.
    """
    check_x_axis(x)
    panels = [
        ("loss", "training loss per masked frame"),
        ("accuracy", "contrastive accuracy"),
        ("code_perplexity", "code perplexity (training)"),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(dict.fromkeys(label for label, _ in runs))}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    labelled = set()
    for label, records in runs:
        color = color_of[label]
        for ax, (name, _) in zip(axes[0], panels):
            series = [(name, "-", 1.0), ("valid_" + name, "none", 1.0)]
            if name == "accuracy":
                series.append(("chance_accuracy", ":", 0.8))
            for key, style, alpha in series:
                points = [(r[x], r[key]) for r in records if r.get(key) is not None and r.get(x) is not None]
                if not points:
                    continue
                steps, values = zip(*points)
                marker = "o" if style == "none" else None
                legend = label if key == name and label not in labelled and ax is axes[0][0] else None
                if legend:
                    labelled.add(label)
                ax.plot(
                    steps,
                    values,
                    linestyle=style,
                    marker=marker,
                    markersize=3,
                    color=color,
                    alpha=alpha,
                    linewidth=1.0,
                    label=legend,
                )
    for ax, (_, title) in zip(axes[0], panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(X_AXES[x])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("every run; markers: validation; dotted: chance accuracy", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def representation_figure(
    waveform: np.ndarray,
    reps: Mapping[str, np.ndarray],
    title: str = "waveform -> latent z -> quantized q",
    dims: int = 64,
) -> plt.Figure:
    """The seed notebook's four panels for a real model: waveform, z, q and |c - q|.

    The seed's toy quantizer mapped z to codewords of z's own size, so it drew |z - q|. Here z
    (the conv latents) and q (codewords projected into the contrastive space) live in different
    spaces; the comparable quantity is |c - q| in the contrastive space, what the loss pulls
    together on masked frames.

    Args:
      waveform: `[samples]`.
      reps: `probes.representations` of the waveform.
      title: the figure's title.
      dims: channels drawn from each heatmap (the first ones).
    """
    z, q, c = reps["z"], reps["q"], reps["c"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    axes[0, 0].plot(waveform, linewidth=0.4)
    axes[0, 0].set_title(f"waveform ({len(waveform)} samples)")
    axes[0, 0].set_xlabel("sample")
    panels = [
        (axes[0, 1], z, "viridis", f"latent z ({z.shape[0]} frames x {z.shape[1]} dims)"),
        (axes[1, 0], q, "viridis", f"quantized q ({q.shape[0]} frames x {q.shape[1]} dims, contrastive space)"),
        (axes[1, 1], np.abs(c - q), "hot", "|c - q| (context vs quantized, contrastive space)"),
    ]
    for ax, values, cmap, name in panels:
        image = ax.imshow(values.T[:dims], aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("frame")
        ax.set_ylabel("dimension")
        fig.colorbar(image, ax=ax)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def ctc_alignment_figure(
    waveform: np.ndarray,
    logits: np.ndarray,
    tokens: Sequence[str],
    blank_id: int,
    *,
    hop: int = FRAME_HOP,
    window: int = RECEPTIVE_FIELD,
    sample_rate: int = SAMPLE_RATE,
    title: str = "CTC alignment",
) -> plt.Figure:
    """The waveform with a fine-tuned model's frame-wise argmax: which frames emit a symbol, which a blank.

    Greedy CTC decoding reads the argmax of every frame, collapses repeats and drops blanks; this
    draws that argmax where it happens. Top: the waveform, each non-blank frame's symbol written
    at the frame's centre (a shaded band over the frame's hop). Bottom: per frame, the probability
    of the blank and of the likeliest other symbol. Early in fine-tuning nearly every frame is
    blank (CTC's first stage); the figure shows that too.

    Args:
      waveform: `[samples]`.
      logits: `[frames, vocab]`, the model's output for the waveform (unpadded frames only).
      tokens: the vocabulary's tokens, `tokens[i]` for id i.
      blank_id: the blank's id (`pad_token_id`).
      hop, window: the feature encoder's stride and receptive field in samples (frame t covers
        samples `[t * hop, t * hop + window)`; BASE's conv stack: 320 and 400).
      sample_rate: of `waveform`.
      title: the figure's title.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(tokens):
        raise ValueError(f"logits must be [frames, {len(tokens)}] (one column per token), got {logits.shape}")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ids = probs.argmax(-1)
    centres = (np.arange(len(ids)) * hop + window / 2) / sample_rate
    emitting = np.flatnonzero(ids != blank_id)
    others = np.delete(probs, blank_id, axis=1)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 5.5), sharex=True, height_ratios=(2, 1))
    top.plot(np.arange(len(waveform)) / sample_rate, waveform, linewidth=0.4, color="0.35")
    peak = float(np.max(np.abs(waveform))) or 1.0
    for frame in emitting:
        top.axvspan(
            centres[frame] - hop / sample_rate / 2,
            centres[frame] + hop / sample_rate / 2,
            color="tab:orange",
            alpha=0.25,
            linewidth=0,
        )
        top.text(centres[frame], 1.05 * peak, tokens[ids[frame]], ha="center", va="bottom", fontsize=9)
    top.set_ylim(-1.2 * peak, 1.3 * peak)
    top.set_title(f"{title}: {len(emitting)} of {len(ids)} frames emit a symbol, the others the blank", fontsize=10)
    bottom.plot(centres, probs[:, blank_id], label=f"blank ({tokens[blank_id]})", linewidth=1.0)
    bottom.plot(centres, others.max(-1), label="likeliest other symbol", linewidth=1.0)
    bottom.set_ylim(0, 1.02)
    bottom.set_ylabel("probability")
    bottom.set_xlabel("seconds")
    bottom.legend(fontsize=8, loc="center right")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_lm_sweep(grid: Sequence[Mapping[str, float]], metric: str, path: str | os.PathLike) -> None:
    """Heat map of an error rate over the LM weight (rows) and word score (columns) of beam search.

    Args:
      grid: `evaluator.sweep_lm_weights`' "grid": {"lm_weight", "word_score", metric, ...} per pair.
      metric: the error rate drawn ("wer", "cer", "per"); the best cell is outlined.
      path: the PNG to write.
    """
    alphas = sorted({g["lm_weight"] for g in grid})
    betas = sorted({g["word_score"] for g in grid})
    values = np.full((len(alphas), len(betas)), np.nan)
    for g in grid:
        values[alphas.index(g["lm_weight"]), betas.index(g["word_score"])] = g[metric]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(betas), 1.0 + 0.5 * len(alphas)))
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    middle = (np.nanmin(values) + np.nanmax(values)) / 2
    for i, j in np.ndindex(values.shape):
        color = "black" if values[i, j] < middle else "white"  # low rates are the light end of viridis_r
        ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8, color=color)
    best = np.unravel_index(np.nanargmin(values), values.shape)
    ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("word score (beta)")
    ax.set_ylabel("LM weight (alpha)")
    ax.set_title(f"beam search {metric.upper()} (best outlined)", fontsize=10)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
