"""A local report of finished runs, offline, from the files every run writes (no W&B needed).

A run directory holds ``.hydra/overrides.yaml`` (what was set), ``metrics.json`` (final numbers),
``csv/version_<N>/metrics.csv`` (Lightning's CSV logger; ``logger=wandb`` and ``logger=csv`` both write it) and
``weight_histograms.jsonl`` (from :class:`addernet.training.callbacks.AdderTracker`). Runs that differ only in ``seed``
form one setting: the table gives the mean and standard deviation over seeds.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from addernet.training.callbacks import HISTOGRAMS_FILE
from addernet.experiments.jobs import FAILURE_FILE, METRICS_FILE

CURVES_DIR = "csv"  # Lightning's CSVLogger writes <run>/csv/version_<N>/metrics.csv, a new N each time the run starts
VERSION_START_FILE = "start.json"  # in each version_<N>: the global step that start of the run began at
IGNORED_OVERRIDES = ("seed", "hydra.", "sweep=", "sweep_name=")


@dataclass
class Run:
    path: Path
    overrides: list[str]
    metrics: dict | None  # None: the run failed or has not finished
    error: str | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(epoch, value)]

    @property
    def seed_free_overrides(self) -> list[str]:
        return [o for o in self.overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDES)]


def read_run(path: Path) -> Run:
    overrides = [str(o) for o in OmegaConf.load(path / ".hydra" / "overrides.yaml")]
    metrics_file = path / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    failure = path / FAILURE_FILE
    error = json.loads(failure.read_text())["error"] if failure.is_file() else None
    return Run(path, overrides, metrics, error=error, curves=read_curves(path))


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's logged metrics: metric -> [(epoch, value)], in the order they were logged."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in curve_rows(run_dir):
        epoch = int(float(row.get("epoch") or 0))
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in ("", None):
                curves.setdefault(key, []).append((epoch, float(value)))
    return curves


def curve_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` files, one history. Each start of the run (a resume, or a new run in the
    same directory) writes a new ``version_<N>`` and records the step it started from (``start.json``: the
    checkpoint's step, 0 for a new run); its rows replace the earlier versions' rows from that step on. A
    ``csv/metrics.csv`` of older versions of this code comes first. The files stay as they were written."""
    csv_dir = run_dir / CURVES_DIR
    versions = sorted((p for p in csv_dir.glob("version_*") if p.name.removeprefix("version_").isdigit()),
                      key=lambda p: int(p.name.removeprefix("version_")))
    rows = _read_rows(csv_dir / "metrics.csv")
    for version in versions:
        logged = _read_rows(version / "metrics.csv")
        start_file = version / VERSION_START_FILE
        if start_file.is_file():
            start = int(json.loads(start_file.read_text())["step"])
        else:  # written by hand, or the run died before it logged its start: its first step
            start = min((_step(r) for r in logged if r.get("step")), default=None)
        if start is not None:
            rows = [r for r in rows if r.get("step") and _step(r) < start]
        rows += logged
    return rows


def mark_version_start(version_dir: Path, step: int) -> None:
    """Record that the run logging to ``version_dir`` started at global step ``step`` (see :func:`curve_rows`)."""
    if rank_zero_only.rank == 0:
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / VERSION_START_FILE).write_text(json.dumps({"step": step}))


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _step(row: dict[str, str]) -> int:
    return int(float(row["step"]))


def find_runs(paths: list[Path]) -> list[Run]:
    """Run directories given directly, or found one level down (the jobs of a multirun directory)."""
    runs = []
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: pass run or multirun directories")
        candidates = [path] if (path / ".hydra" / "overrides.yaml").is_file() else sorted(
            (p for p in path.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=_job_order)
        runs += [read_run(p) for p in candidates]
    if not runs:
        raise FileNotFoundError(f"no runs (directories with .hydra/overrides.yaml) in {', '.join(map(str, paths))}")
    return runs


def _job_order(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def settings(runs: list[Run]) -> dict[str, list[Run]]:
    """Group runs by the overrides in which they differ (seeds excluded), in first-seen order."""
    common = set.intersection(*(set(r.seed_free_overrides) for r in runs))
    groups: dict[str, list[Run]] = {}
    for run in runs:
        label = " ".join(o for o in run.seed_free_overrides if o not in common) or "(all runs)"
        groups.setdefault(label, []).append(run)
    return groups


# what describes a run besides its overrides; the report lists those that all its runs share
DESCRIBING_KEYS = ("model.name", "data._target_", "data.root", "data.batch_size", "trainer.max_epochs",
                   "trainer.accelerator", "trainer.precision", "optimizer.lr", "optimizer.momentum",
                   "optimizer.weight_decay", "scheduler._target_", "adalr.mode", "adalr.eta", "model.weight_grad",
                   "recalibrate_bn", "seed")


def shared_settings(runs: list[Run]) -> str:
    values: dict[str, set] = {}
    for run in runs:
        config_file = run.path / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create()
        for key in DESCRIBING_KEYS:
            value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
            values.setdefault(key, set()).add(str(value))
    shared = [f"{key}={next(iter(v))}" for key, v in values.items() if len(v) == 1 and "None" not in v]
    return ", ".join(shared) or "none"


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _img_per_s(run: Run) -> float | None:
    values = [v for _, v in run.curves.get("perf/train_img_per_s", [])]
    return statistics.fmean(values) if values else None


COLUMNS = {  # column: (how to read it from a run, is a fraction shown as a percentage)
    "final acc": (lambda r: r.metrics.get("val/acc"), True),
    "best acc": (lambda r: r.metrics.get("val/acc_best"), True),
    "test acc": (lambda r: r.metrics.get("test/acc"), True),
    "test acc, BN as trained": (lambda r: r.metrics.get("test/acc_raw"), True),  # only with recalibrate_bn
    "epochs": (lambda r: r.metrics.get("epochs"), False),
    "training img/s": (_img_per_s, False),
}


def summary_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for label, group in settings(runs).items():
        done = [r for r in group if r.metrics is not None]
        row = {"setting": label, "runs": len(done), "failed": len(group) - len(done)}
        for column, (read, _) in COLUMNS.items():
            row[column] = _mean_std([read(r) for r in done])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(row[c] is not None for row in rows) or c in ("final acc", "best acc")]
    lines = ["| setting | runs | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["setting"], str(row["runs"]) + (f" ({row['failed']} failed)" if row["failed"] else "")]
        for column in columns:
            cells.append(_format(row[column], COLUMNS[column][1]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(stat: tuple[float, float] | None, percent: bool) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    scale, unit, digits = (100, "%", 2) if percent else (1, "", 0 if mean >= 100 or mean == int(mean) else 1)
    text = f"{mean * scale:.{digits}f}{unit}"
    return text + (f" ± {std * scale:.{digits}f}" if std else "")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_epoch(runs: list[Run], metric: str) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in run.curves.get(metric, []):
            values.setdefault(epoch, []).append(value)
    return values


def plot_curves(runs: list[Run], path: Path, metric: str = "val/acc") -> bool:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for label, group in settings(runs).items():
        by_epoch = _by_epoch(group, metric)
        if by_epoch:
            epochs = sorted(by_epoch)
            line, = ax.plot([e + 1 for e in epochs], [100 * statistics.fmean(by_epoch[e]) for e in epochs],
                            marker="o" if len(epochs) < 20 else None, label=label)
            drawn = True
            raw = _by_epoch(group, f"{metric}_raw")  # recalibrate_bn runs: the same with BatchNorm as trained
            if raw:
                ax.plot([e + 1 for e in sorted(raw)], [100 * statistics.fmean(raw[e]) for e in sorted(raw)],
                        linestyle="--", color=line.get_color(), marker="x" if len(raw) < 20 else None,
                        label=f"{label}, BatchNorm as trained")
    if drawn:
        recalibrated = any(f"{metric}_raw" in r.curves for r in runs)
        ax.set(xlabel="epoch", ylabel=f"{metric} (%)", title=f"{metric} per setting (mean over seeds)" +
               (";\nsolid: BatchNorm recalibrated, dashed: as trained" if recalibrated else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return drawn


def _short(setting: str) -> str:
    """'model.weight_grad=full adalr=on' -> 'weight_grad=full\nadalr=on' (one override a line)."""
    return "\n".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1] if "=" in o else o
                     for o in setting.split(" "))


def plot_bars(rows: list[dict], path: Path, column: str = "best acc") -> bool:
    rows = [r for r in rows if r[column] is not None]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.7 * len(rows)), 4.5))
    means = [100 * r[column][0] for r in rows]
    ax.bar(range(len(rows)), means, yerr=[100 * r[column][1] for r in rows], capsize=4, color="tab:blue")
    ax.set_xticks(range(len(rows)), [_short(r["setting"]) for r in rows], fontsize=8)
    for i, mean in enumerate(means):
        ax.text(i, mean, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=f"{column} (%)", title=f"{column} per setting")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def last_histograms(runs: list[Run]) -> dict[str, dict]:
    """The latest end-of-epoch histogram of each kind (adder, conv); conv preferably from a CNN run."""
    found: dict[str, tuple[int, dict]] = {}
    for run in runs:
        path = run.path / HISTOGRAMS_FILE
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kinds = {r["kind"] for r in records}
        for record in records:
            if record["when"] != "end":
                continue
            rank = 1 if record["kind"] == "conv" and "adder" not in kinds else 0  # the CNN twin's conv weights
            if record["kind"] not in found or rank >= found[record["kind"]][0]:
                found[record["kind"]] = (rank, record)
    return {kind: record for kind, (_, record) in found.items()}


def plot_histograms(runs: list[Run], path: Path) -> bool:
    hists = last_histograms(runs)
    if not hists:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(hists), figsize=(5 * len(hists), 4), squeeze=False)
    for ax, (kind, record) in zip(axes[0], sorted(hists.items())):
        edges = record["edges"]
        ax.stairs(record["counts"], edges, fill=True, alpha=0.7, color="tab:red" if kind == "adder" else "tab:green")
        ax.set(title=f"{kind} weights (epoch {record['epoch'] + 1})", xlabel="weight", ylabel="count")
    fig.suptitle("Weight distributions: adder layers vs convolution layers")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def write_report(paths: list[Path], out_dir: Path | None = None) -> str:
    """Write ``report.md`` and the PNG plots into ``out_dir`` (default: the first path); return the table."""
    runs = find_runs(paths)
    out_dir = out_dir or paths[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    table = markdown_table(rows)
    plots = {
        "val_acc_curves.png": plot_curves(runs, out_dir / "val_acc_curves.png"),
        "best_acc_bars.png": plot_bars(rows, out_dir / "best_acc_bars.png"),
        "weight_histograms.png": plot_histograms(runs, out_dir / "weight_histograms.png"),
    }
    lines = [f"# Report of {len(runs)} runs", "", f"Runs: {', '.join(str(p) for p in paths)}. Accuracies are "
             "mean ± standard deviation over the runs of a setting (seeds); 'final' is the last validation "
             "epoch, 'best' the best one, 'test' the best checkpoint on the test split.", "",
             "Settings all runs share: " + shared_settings(runs), "", table]
    failed = [r for r in runs if r.metrics is None]
    if failed:
        lines += ["Runs without results:", ""] + [
            f"- {r.path.name} ({' '.join(r.overrides)}): {r.error or 'no metrics.json (still running, or killed)'}"
            for r in failed] + [""]
    lines += [f"![{name}]({name})" for name, made in plots.items() if made]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return table
