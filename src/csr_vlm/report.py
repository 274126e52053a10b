"""`csr report RUN_DIR`: one readable report.md with plots, and report.html, for a CSR run directory.

    csr report RUN_DIR [--instances F] [--gt-captions F] [--synonyms F] [--no-thumbnails]

Reads RUN_DIR/manifest.json (if present) and round_<k>/{generate,train,eval}/ (round_0 holds only
the base model's eval) and writes RUN_DIR/report.md plus report_*.png (matplotlib, Agg backend):
hallucination metrics per round, the CLIP image-relevance R_I of chosen vs rejected answers (the
paper's Figure 1 right), reward margins, DPO loss and reward accuracy, a table of every number, and,
with --instances, how the pairs compare with the ground truth. Missing pieces of a run are noted,
never fatal; a folder that is no run at all is an error. Then report_html.py writes RUN_DIR/report.html:
the same numbers plus every test caption with its objects marked, and the pairs (docs/report.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
from pathlib import Path
from typing import Any

from . import layout
from .benchmarks.registry import metrics as registered_metrics
from .data import read_json, read_jsonl
from .errors import InputError
from .tables import markdown_table

log = logging.getLogger(__name__)


def metric_doc(name: str) -> str:
    """The registry's line for a metric, with its direction."""
    metric = registered_metrics()[name]
    return f"{metric.doc} ({'lower' if metric.lower_is_better else 'higher'} is better)"


def cli(argv: list[str]) -> int:
    """`csr report RUN_DIR [...]`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="csr report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a csr loop output directory")
    parser.add_argument("--instances", help="COCO instances JSON of the training images: adds pair quality vs GT")
    parser.add_argument("--gt-captions", help="COCO captions JSON (objects named there count as present)")
    parser.add_argument("--synonyms", help="synonym table for --instances (default: the COCO table) and report.html's "
                        "object marks (default: the run's eval.synonyms)")
    parser.add_argument("--no-thumbnails", action="store_true", help="report.html without the test images")
    args = parser.parse_args(argv)
    path = write_report(args.run_dir, args.instances, args.gt_captions, args.synonyms)
    print(f"wrote {path}")
    from .report_html import write_html

    print(f"wrote {write_html(args.run_dir, args.synonyms, thumbs=not args.no_thumbnails)}")
    return 0


# ---------------------------------------------------------------------------- reading


def _json(path: Path) -> Any:
    """The JSON in path, or None when it is missing or unreadable (a report notes what is missing)."""
    try:
        return read_json(path)
    except InputError:
        return None


def collect(run_dir: Path) -> dict[int, dict]:
    """Per round: eval metrics, dev metrics, pairs' R_I and margins, train metrics (whatever exists)."""
    rounds: dict[int, dict] = {}
    for k, d in layout.rounds(run_dir):
        r: dict[str, Any] = {}
        for stage in ("eval", "dev_eval"):  # a metrics file that is no JSON object counts as missing
            metrics = _json(d / stage / "metrics.json")
            r[stage] = metrics if isinstance(metrics, dict) else None
        pairs_path = layout.pairs_file(d / "generate")
        if pairs_path.is_file():
            pairs = [p for p in read_jsonl(pairs_path) if not p.get("anchor")]  # an anchor replays, compares nothing
            for key in ("chosen_r_i", "rejected_r_i", "margin"):
                r[key] = [p[key] for p in pairs if isinstance(p.get(key), (int, float))]
            r["n_pairs"] = len(pairs)
        train_path = d / "train" / "train_metrics.jsonl"
        if train_path.is_file():
            r["train"] = [t for t in read_jsonl(train_path) if "loss" in t or "rewards/accuracies" in t]
        expected = {"eval": r["eval"] is not None}
        if k > 0:
            expected.update({"generate": "n_pairs" in r, "train": "train" in r})
        r["missing"] = [name for name, ok in expected.items() if not ok]
        rounds[k] = r
    return dict(sorted(rounds.items()))


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _flat(r: dict) -> dict:
    return (r.get("eval") or {}).get("flat") or {}


def round_table(rounds: dict[int, dict]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the all-numbers table (one row per round): every registered metric the run measured,
    then the pairs' and the training's numbers."""
    measured = [m for m in registered_metrics() if any(m in _flat(r) for r in rounds.values())]
    measured += sorted({m for r in rounds.values() for m in _flat(r) if m.startswith("lmms_")})  # lmms-eval's
    cols = ["round", *measured, "n_pairs", "chosen_r_i", "rejected_r_i", "margin", "dpo_loss", "reward_acc",
            "reward_margin"]
    rows = []
    for k, r in rounds.items():
        flat = _flat(r)
        train = r.get("train") or []
        last = train[-1] if train else {}
        rows.append([k] + [flat.get(c) for c in measured] + [
            r.get("n_pairs"), _mean(r.get("chosen_r_i", [])), _mean(r.get("rejected_r_i", [])),
            _mean(r.get("margin", [])), last.get("loss"), last.get("rewards/accuracies"),
            last.get("rewards/margins")])
    return cols, rows


# ---------------------------------------------------------------------------- plots


def _save(fig, out: Path) -> None:
    """Save a figure atomically: a hidden .png next to it (the suffix picks the format), then rename."""
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plotted() -> list[str]:
    """The registered metrics drawn in the per-round plot."""
    return [name for name, m in registered_metrics().items() if m.plot]


def plot_metrics(rounds: dict[int, dict], out: Path) -> Path | None:
    """One panel per plotted metric of the registry, across rounds; None when no round was evaluated."""
    series = {m: [(k, _flat(r).get(m)) for k, r in rounds.items()] for m in plotted()}
    series = {m: [(k, v) for k, v in s if v is not None] for m, s in series.items()}
    if not any(series.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(3.5 * len(series), 3.4), squeeze=False)
    for ax, (m, pts) in zip(axes[0], series.items()):
        better = "lower" if registered_metrics()[m].lower_is_better else "higher"
        ax.set_title(f"{registered_metrics()[m].doc.split(':')[0]} ({better} is better)")
        ax.set_xlabel("round (0 = base model)")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            ax.set_xticks([p[0] for p in pts])
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def plot_r_i(rounds: dict[int, dict], out: Path) -> Path | None:
    """Box plots of R_I of chosen (green) and rejected (red) answers, side by side per round."""
    ks = [k for k, r in rounds.items() if r.get("chosen_r_i") and r.get("rejected_r_i")]
    if not ks:
        return None
    plt = _plt()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ks) + 3), 4))
    for i, k in enumerate(ks):
        for j, (key, color) in enumerate((("chosen_r_i", "tab:green"), ("rejected_r_i", "tab:red"))):
            values = rounds[k][key]
            bp = ax.boxplot([values], positions=[3 * i + j], widths=0.8, patch_artist=True, showfliers=False)
            bp["boxes"][0].set_facecolor(color)
            bp["boxes"][0].set_alpha(0.5)
            ax.scatter([3 * i + j + 0.25 * ((n % 5) / 4 - 0.5) for n in range(len(values))], values, s=8,
                       color=color, zorder=3)
    ax.set_xticks([3 * i + 0.5 for i in range(len(ks))], [f"round {k}" for k in ks])
    ax.set_ylabel("R_I = 100 x CLIP cosine\n(mean over the answer's sentences)")
    ax.set_title("Image relevance (R_I) of chosen vs rejected answers")
    ax.legend(handles=[Patch(color="tab:green", alpha=0.5, label="chosen"),
                       Patch(color="tab:red", alpha=0.5, label="rejected")], loc="best")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def plot_margin(rounds: dict[int, dict], out: Path) -> Path | None:
    """Box plots of the pairs' reward margins per round; None without pairs."""
    ks = [k for k, r in rounds.items() if r.get("margin")]
    if not ks:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(ks) + 2), 3.6))
    ax.boxplot([rounds[k]["margin"] for k in ks])
    ax.set_xticks(range(1, len(ks) + 1), [f"round {k}" for k in ks])
    ax.set_ylabel("reward(chosen) - reward(rejected)")
    ax.set_title("Calibrated reward margin of the preference pairs")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


def plot_train(rounds: dict[int, dict], out: Path) -> Path | None:
    """DPO loss and reward accuracy per logged step, one line per round; None without training logs."""
    ks = [k for k, r in rounds.items() if r.get("train")]
    if not ks:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, title in ((axes[0], "loss", "DPO loss"), (axes[1], "rewards/accuracies", "DPO reward accuracy")):
        for k in ks:
            pts = [(t.get("step", i), t[key]) for i, t in enumerate(rounds[k]["train"]) if t.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"round {k}")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------- writing


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _manifest_lines(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return ["_No manifest.json: the run's config and stage timings are not shown._", ""]
    lines = []
    if "best_round" in manifest:
        lines.append(f"- Best round (by the loop's selection rule): **{manifest['best_round']}**")
    cfg = manifest.get("config") or {}
    if isinstance(cfg, dict) and cfg.get("model"):
        lines.append(f"- Policy: `{(cfg.get('model') or {}).get('path', '?')}`")
    stages = manifest.get("stages")
    if isinstance(stages, dict) and stages:
        lines += ["", "| stage | status | wall time (s) | peak GPU memory (MB) | peak RAM (MB) |",
                  "|---|---|---|---|---|"]
        for name, st in stages.items():
            st = st if isinstance(st, dict) else {"status": st}
            lines.append(f"| {name} | {_fmt(st.get('status'))} | {_fmt(st.get('seconds', st.get('wall_s')), 1)} | "
                         f"{_fmt(st.get('peak_cuda_mb'), 0)} | {_fmt(st.get('peak_rss_mb'), 0)} |")
    versions = manifest.get("versions")
    if isinstance(versions, dict) and versions:
        lines += ["", "Package versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return lines + [""]


def _pair_quality(run_dir: Path, instances: str, gt_captions: str | None, synonyms: str | None) -> list[str]:
    from .benchmarks.chair import load_ground_truth
    from .score import file_ids, generate_dirs, pair_quality

    vocab, inst, gt = load_ground_truth(instances, gt_captions, synonyms)
    files = file_ids(inst)
    cols = ["round", "n_pairs", "chosen_chair_i", "rejected_chair_i", "chosen_recall", "rejected_recall",
            "chosen_cleaner_rate"]
    rows = []
    for name, d in generate_dirs(run_dir):
        q = pair_quality(d, gt, vocab, files)
        rows.append([name] + [q.get(c) for c in cols[1:]])
    return ["## Pair quality against ground truth", "",
            "CHAIR of the chosen and the rejected answers against the annotated objects of the training images. "
            "A good reward picks chosen answers with a lower CHAIR_i; `chosen_cleaner_rate` is the share of pairs "
            "whose chosen answer hallucinates strictly less than its rejected one.", "", markdown_table(cols,
                                                                                                        rows), ""]


def write_report(run_dir: str | Path, instances: str | None = None, gt_captions: str | None = None,
                 synonyms: str | None = None) -> Path:
    """report.md and its plots in run_dir; returns report.md's path (missing pieces are noted, not fatal)."""
    run_dir = _check_run_dir(Path(run_dir))
    rounds = collect(run_dir)
    notes = ["No round_<k>/ directories found."] if not rounds else []
    notes += [f"round {k}: no {', '.join(r['missing'])} output (unfinished or not run); left out."
              for k, r in rounds.items() if r["missing"]]
    lines = _intro_lines(run_dir) + _figure_lines(rounds, run_dir, notes) + _table_lines(rounds)
    if instances:
        try:
            lines += _pair_quality(run_dir, instances, gt_captions, synonyms)
        except Exception as exc:  # noqa: BLE001 - the report must not crash on one section
            notes.append(f"Pair quality vs ground truth skipped: {exc}")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    out = run_dir / "report.md"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)
    return out


def _check_run_dir(run_dir: Path) -> Path:
    """run_dir, once it is a CSR run directory (an InputError says why not)."""
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    if not (run_dir / "manifest.json").is_file() and not any(d.is_dir() for _, d in layout.rounds(run_dir)):
        raise InputError(f"{run_dir}: not a CSR run directory (no manifest.json, no round_<k>/)")
    return run_dir


def _intro_lines(run_dir: Path) -> list[str]:
    """The title, what CSR does, and the manifest's summary."""
    lines = [f"# CSR run report: `{run_dir.name}`", "",
             "Calibrated Self-Rewarding (CSR) improves a vision-language model in rounds: the model writes "
             "candidate answers, a reward that mixes its own confidence with CLIP image relevance (R_I) picks a "
             "preferred (chosen) and a dispreferred (rejected) answer, and DPO training moves the model toward the "
             "chosen ones. Round 0 is the untouched base model.", ""]
    return lines + _manifest_lines(_json(run_dir / "manifest.json"))


def _figure_lines(rounds: dict[int, dict], run_dir: Path, notes: list[str]) -> list[str]:
    """Each plot (drawn into run_dir) with its heading and explanation; a plot without data becomes a note."""
    figures = [
        ("Hallucination metrics per round", plot_metrics, "report_metrics.png",
         "\n".join(f"- {metric_doc(m)}" for m in plotted())),
        ("Image relevance of chosen vs rejected answers", plot_r_i, "report_r_i.png",
         "R_I is 100 x the CLIP cosine between the image and each sentence, averaged over the answer. The reward "
         "should choose answers that CLIP finds more relevant (green above red); the paper's Figure 1 (right) "
         "shows this gap."),
        ("Reward margin", plot_margin, "report_margin.png",
         "The calibrated reward of the chosen answer minus that of the rejected one, per pair."),
        ("DPO training", plot_train, "report_train.png",
         "Loss and reward accuracy (share of pairs where the trained model prefers the chosen answer more than the "
         "reference model does) per logged step."),
    ]
    lines: list[str] = []
    for title, fn, name, text in figures:
        png = fn(rounds, run_dir / name) if rounds else None
        if png is None:
            notes.append(f"{title}: no data in this run directory; plot skipped.")
            continue
        lines += [f"## {title}", "", text, "", f"![{title}]({name})", ""]
    return lines


def _table_lines(rounds: dict[int, dict]) -> list[str]:
    """Every number per round, and the evaluation protocol."""
    cols, rows = round_table(rounds)
    lines = ["## All numbers per round", "",
             "Eval metrics come from round_<k>/eval/metrics.json; R_I and margin are means over the round's pairs; "
             "DPO columns are the last logged training step. `-` = not available.", "",
             markdown_table(cols, rows), ""]
    protocols = {k: (r.get("eval") or {}).get("protocol") for k, r in rounds.items() if (r.get("eval") or {})}
    if protocols:
        p = next(iter(protocols.values())) or {}
        lines += [f"Evaluation protocol: prompt \"{p.get('prompt')}\", max_new_tokens {p.get('max_new_tokens')}, "
                  f"{p.get('num_images')} images, seed {p.get('seed')}, POPE parser `{p.get('parser')}`.", ""]
    return lines
