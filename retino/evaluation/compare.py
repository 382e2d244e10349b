"""`retino compare`: which variant wins, and how sure — the lab report's results table with 95 %
intervals, a paired comparison of every two variants, and the figures, from the runs in MLflow.

The lab report compared ResNet18/50 with and without ImageNet weights in a 2x2 table of test
accuracy, one train/test accuracy plot per architecture and a confusion matrix per run. Here the
table holds the selected checkpoint's test accuracy and QWK (chosen on validation), each with its
95 % interval, beside the lab report's "highest per-epoch test accuracy", which peeks at test and
is only for comparison. Runs with another recipe (the regression head, balanced sampling, flip
TTA, both eyes) get rows of their own, named after what they changed
(`retino.tracking.names.recipe`).

A variant is a cell of that table; runs of a cell that differ only in `seed` are its seed
repeats, pooled as mean ± SD (`retino.evaluation.variants`). Every interval and difference comes
from each run's per-image test predictions (the evaluate stage's eval/predictions.csv artifact),
resampled by patient with one set of resamples for all runs, so the comparisons are paired. That
needs the same test images: runs on another test set (another data version or test table) are
refused when named with --runs, and left out with a note otherwise (the newest run's test set is
compared). The results go to MLflow too, as a run of the experiment `<experiment>-compare`, which
keeps them out of the training runs' table and ranking.
"""

import io
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retino.errors import RetinoError
from retino.evaluation.bootstrap import Bootstrap
from retino.evaluation.plots import plot_accuracy_comparison, plot_confusion_grid, plot_forest
from retino.evaluation.reliability import referable_output
from retino.evaluation.variants import Estimate, Runs, difference, estimate, mcnemar, verdict
from retino.tracking.names import (
    BEST_TEST_ACCURACY,
    BEST_TEST_MAJORITY,
    BEST_TEST_QWK,
    recipe,
    variant,
)
from retino.tracking.queries import RunRecord, list_runs, metric_history, read_artifact
from retino.tracking.runs import open_run
from retino.tracking.store import Store, existing_store

NOT_VARIANT = ("seed", "eval.bootstrap")  # params whose runs are still one variant
SEED = 0  # compare's own resamples: the same runs give the same intervals
PREDICTIONS = "eval/predictions.csv"
QWK_RANGE, ACCURACY_RANGE = (-1.0, 1.0), (0.0, 1.0)
PAIR_COLUMNS = ["better", "worse", "qwk_diff", "qwk_lo", "qwk_hi", "qwk_p", "accuracy_diff",
                "accuracy_lo", "accuracy_hi", "accuracy_p", "mcnemar_p", "seeds", "separated",
                "verdict"]  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One variant, a (arch, pretrained, recipe) cell of the table: its runs, one per seed."""

    runs: tuple[RunRecord, ...]  # by seed
    arch: str
    kind: str  # "pretrained" or "scratch"
    recipe: str  # "" for the lab report's, else what the run changed
    newest: RunRecord  # whose curves and confusion matrix the figures show

    @property
    def label(self) -> str:
        """pretrained, or scratch, regression, flips TTA: a row's name in figures."""
        return ", ".join(filter(None, (self.kind, self.recipe)))

    @property
    def variant(self) -> str:
        """resnet18-scratch, regression: as the runs' `variant` tag names it."""
        return ", ".join(filter(None, (variant(self.arch, self.kind != "scratch"), self.recipe)))

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(r.params.get("seed", "") for r in self.runs)


def _seed_order(seed: str) -> tuple[int, int | str]:
    return (0, int(seed)) if seed.isdigit() else (1, seed)


def _variant_params(run: RunRecord) -> tuple:
    return tuple(sorted((k, v) for k, v in run.params.items() if k not in NOT_VARIANT))


def _differing(a: dict[str, str], b: dict[str, str]) -> str:
    """'train.lr 0.01 vs 0.002': the first params in which two runs differ."""
    keys = sorted(k for k in set(a) | set(b) if k not in NOT_VARIANT and a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k, '—')} vs {b.get(k, '—')}" for k in keys[:2])


def pick_runs(runs: list[RunRecord]) -> tuple[list[Cell], list[str]]:
    """Per (arch, pretrained, recipe): the runs of its newest run's params, the newest per seed;
    notes on every run left out and why."""
    # (arch, pretrained, recipe) -> (the params that make the variant, seed) -> run
    cells: dict[tuple[str, str, str], dict[tuple, RunRecord]] = {}
    newest: dict[tuple[str, str, str], RunRecord] = {}
    notes = []
    for run in runs:  # oldest first: a later run replaces an earlier one of its seed
        if run.status != "FINISHED":
            notes.append(f"skipped {run.name} ({run.run_id[:8]}): status {run.status}")
            continue
        if math.isnan(run.metrics.get(BEST_TEST_QWK, math.nan)):  # NaN: evaluate did not run
            notes.append(f"skipped {run.name} ({run.run_id[:8]}): no test metrics (run evaluate)")
            continue
        kind = "scratch" if run.params.get("pretrained", "False") == "False" else "pretrained"
        key = (run.params.get("arch", "?"), kind, recipe(run.params))
        runs_of = cells.setdefault(key, {})
        seed = run.params.get("seed", "")
        slot = (_variant_params(run), seed)
        if slot in runs_of:
            where = f"{key[0]} {', '.join(filter(None, key[1:]))}"
            seeded = f", seed {seed}" if seed else ""
            notes.append(f"{where}{seeded}: showing {run.name}, newer than {runs_of[slot].name}")
        runs_of[slot] = run
        newest[key] = run
    chosen = []
    for key, runs_of in cells.items():
        latest = newest[key]
        same = [r for (params, _), r in runs_of.items() if params == _variant_params(latest)]
        for other in runs_of.values():
            if other not in same:
                why = _differing(other.params, latest.params)
                notes.append(f"left out {other.name}: other params than the newest run of its "
                             f"cell, {latest.name} ({why})")  # fmt: skip
        same.sort(key=lambda r: _seed_order(r.params.get("seed", "")))
        chosen.append(Cell(tuple(same), *key, latest))
    order = lambda c: (c.arch, c.kind != "pretrained", c.recipe)  # noqa: E731
    return sorted(chosen, key=order), notes


def read_predictions(store: Store, run: RunRecord) -> pd.DataFrame | None:
    """The run's per-image test predictions, by image; None where it has none to read."""
    text = read_artifact(store, run.run_id, PREDICTIONS)
    if text is None:
        return None
    table = pd.read_csv(io.StringIO(text))
    try:
        referable_output(table)
    except ValueError:
        return None
    if not {"image", "label", "predicted"} <= set(table.columns):
        return None
    return table.sort_values("image", kind="stable").reset_index(drop=True)


def test_set_difference(
    a: RunRecord, ta: pd.DataFrame | None, b: RunRecord, tb: pd.DataFrame | None
) -> str:
    """How the test sets of two runs differ ('' where they are the same, as far as known)."""
    if a.data_md5 != b.data_md5:
        short = lambda md5: md5.removesuffix(".dir")[:8] or "unversioned"  # noqa: E731
        return f"data.dvc {short(a.data_md5)} vs {short(b.data_md5)}"
    if ta is None or tb is None:
        return ""
    images_a, images_b = set(ta.image), set(tb.image)
    if images_a != images_b:
        only, whose = sorted(images_a - images_b), a.name
        if not only:
            only, whose = sorted(images_b - images_a), b.name
        return f"{len(ta)} vs {len(tb)} test images, e.g. {only[0]} only in {whose}'s"
    differs = np.flatnonzero(ta.label.to_numpy() != tb.label.to_numpy())
    if len(differs):
        i = differs[0]
        return (f"the same images, other labels: {ta.image[i]} is grade {ta.label[i]} in "
                f"{a.name}'s, {tb.label[i]} in {b.name}'s")  # fmt: skip
    return ""


def one_test_set(
    store: Store, cells: list[Cell], age: dict[str, int], named: bool
) -> tuple[list[Cell], dict[str, pd.DataFrame], list[str]]:
    """The cells restricted to runs on the test set of the newest run with predictions (`age`:
    run id -> position, oldest first), and each run's predictions. Runs named on the command
    line (`named`) must all share it: otherwise a RetinoError."""
    tables = {r.run_id: read_predictions(store, r) for c in cells for r in c.runs}
    runs = sorted((r for c in cells for r in c.runs), key=lambda r: age[r.run_id])
    with_tables = [r for r in runs if tables[r.run_id] is not None]
    reference = (with_tables or runs)[-1]
    notes, kept = [], []
    for cell in cells:
        same = []
        for run in cell.runs:
            why = test_set_difference(reference, tables[reference.run_id], run, tables[run.run_id])
            if why and named:
                raise RetinoError(
                    f"runs {reference.name} and {run.name} were evaluated on different test sets "
                    f"({why}); paired comparisons need the same test images: name runs of one "
                    f"test set with --runs"
                )
            if why:
                notes.append(f"left out {run.name}: another test set than {reference.name}'s "
                             f"({why})")  # fmt: skip
            else:
                same.append(run)
        if same:
            newest = cell.newest if cell.newest in same else same[-1]
            kept.append(Cell(tuple(same), cell.arch, cell.kind, cell.recipe, newest))
    return kept, {k: v for k, v in tables.items() if v is not None}, notes


@dataclass(frozen=True)
class Measured:
    """What `measure` found: per variant its Runs of QWK and accuracy, and their estimates."""

    qwk: Runs
    accuracy: Runs
    qwk_estimate: Estimate
    accuracy_estimate: Estimate


def measure(
    cells: list[Cell], tables: dict[str, pd.DataFrame], resamples: int
) -> tuple[dict[str, Measured], Bootstrap | None, list[str]]:
    """Intervals of each variant whose runs all have predictions (one set of resamples for
    all), keyed by variant; the bootstrap; notes on the variants without."""
    notes, measured = [], {}
    ready = [c for c in cells if all(r.run_id in tables for r in c.runs)]
    for cell in cells:
        if cell not in ready:
            notes.append(f"{cell.variant}: no {PREDICTIONS} artifact (evaluated by an older "
                         "retino?): no interval, left out of the paired comparisons")  # fmt: skip
    if not ready:
        return {}, None, notes
    boot = Bootstrap(tables[ready[0].runs[0].run_id].image.tolist(), resamples, SEED)
    for cell in ready:
        resampled = {"qwk": [], "accuracy": []}
        for run in cell.runs:
            table = tables[run.run_id]
            score, _ = referable_output(table)
            values = boot.metrics(table.label, table.predicted, score)
            for key in resampled:
                resampled[key].append(values[key])
        qwk, accuracy = (
            Runs(cell.seeds, _points(cell, metric), np.column_stack(resampled[key]))
            for key, metric in (("qwk", BEST_TEST_QWK), ("accuracy", BEST_TEST_ACCURACY))
        )
        measured[cell.variant] = Measured(
            qwk, accuracy, estimate(qwk, QWK_RANGE), estimate(accuracy, ACCURACY_RANGE)
        )
    return measured, boot, notes


def _points(cell: Cell, metric: str) -> np.ndarray:
    return np.array([r.metrics[metric] for r in cell.runs])


def compare_pairs(
    cells: list[Cell], measured: dict[str, Measured], tables: dict[str, pd.DataFrame]
) -> pd.DataFrame:
    """Every two measured variants, the better QWK first: the paired differences of QWK and
    accuracy, McNemar per seed both ran, and the verdict in words."""
    ranked = sorted((c for c in cells if c.variant in measured),
                    key=lambda c: -measured[c.variant].qwk_estimate.point)  # fmt: skip
    rows = []  # PAIR_COLUMNS
    for a, b in itertools.combinations(ranked, 2):
        ma, mb = measured[a.variant], measured[b.variant]
        qwk = difference(ma.qwk, mb.qwk)
        accuracy = difference(ma.accuracy, mb.accuracy)
        runs_a = dict(zip(a.seeds, a.runs, strict=True))
        runs_b = dict(zip(b.seeds, b.runs, strict=True))
        seeds = [s for s in a.seeds if s in runs_b]
        matched = [(runs_a[s], runs_b[s]) for s in seeds]
        if not matched and len(a.runs) == len(b.runs) == 1:
            matched = [(a.runs[0], b.runs[0])]
        mcnemar_p = [mcnemar(_right(tables[ra.run_id]), _right(tables[rb.run_id]))
                     for ra, rb in matched]  # fmt: skip
        shown_seeds = seeds if len(seeds) > 1 or (seeds and seeds[0]) else []
        e, acc = qwk.estimate, accuracy.estimate
        rows.append({
            "better": a.variant, "worse": b.variant,
            "qwk_diff": e.point, "qwk_lo": e.lo, "qwk_hi": e.hi, "qwk_p": qwk.p,
            "accuracy_diff": acc.point, "accuracy_lo": acc.lo, "accuracy_hi": acc.hi,
            "accuracy_p": accuracy.p,
            "mcnemar_p": " ".join(f"{p:.4g}" for p in mcnemar_p),
            "seeds": qwk.training, "separated": not e.crosses_zero,
            "verdict": verdict(a.variant, b.variant, qwk, accuracy, mcnemar_p, shown_seeds),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def _right(table: pd.DataFrame) -> np.ndarray:
    return (table.predicted == table.label).to_numpy()


def results_table(store: Store, cells: list[Cell], measured: dict[str, Measured]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        per_epoch = metric_history(store, cell.newest.run_id, "test/acc")
        row = {
            "arch": cell.arch,
            "weights": cell.kind,
            "recipe": cell.recipe,
            "variant": cell.variant,
            "run_name": cell.newest.name,
            "run_id": cell.newest.run_id,
            "seeds": " ".join(cell.seeds),
            "runs": len(cell.runs),
            "test_accuracy": float(_points(cell, BEST_TEST_ACCURACY).mean()),
            "test_qwk": float(_points(cell, BEST_TEST_QWK).mean()),
            "majority_accuracy": cell.newest.metrics.get(BEST_TEST_MAJORITY, np.nan),
            "highest_epoch_test_acc": max(per_epoch.values()) if per_epoch else np.nan,
        }
        found = measured.get(cell.variant)
        for name, key in (("test_accuracy", "accuracy_estimate"), ("test_qwk", "qwk_estimate")):
            e = getattr(found, key) if found else None
            row[f"{name}_lo"] = e.lo if e else np.nan
            row[f"{name}_hi"] = e.hi if e else np.nan
            row[f"{name}_sd"] = e.sd if e and e.sd is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _cell_text(r: pd.Series) -> str:
    """'84.50% [79.0, 89.5] / 0.770 [0.690, 0.840]'; with seeds '± SD' and their count."""
    acc, qwk = f"{r.test_accuracy:.2%}", f"{r.test_qwk:.3f}"
    if not np.isnan(r.test_accuracy_sd):
        acc += f" ± {r.test_accuracy_sd * 100:.1f}"
        qwk += f" ± {r.test_qwk_sd:.3f}"
    if not np.isnan(r.test_qwk_lo):
        acc += f" [{r.test_accuracy_lo * 100:.1f}, {r.test_accuracy_hi * 100:.1f}]"
        qwk += f" [{r.test_qwk_lo:.3f}, {r.test_qwk_hi:.3f}]"
    seeds = f" ({r.runs} seeds)" if r.runs > 1 else ""
    return f"{acc} / {qwk}{seeds}"


def markdown(table: pd.DataFrame, pairs: pd.DataFrame, summary: list[str]) -> str:
    """The lab report's layout: rows pretrained / scratch, a column per architecture; each
    other recipe a row of its own below its weights' row. Then the verdicts."""
    archs = sorted(table.arch.unique())
    recipes = ["", *sorted(set(table.recipe) - {""})]

    def grid(title: str, cell) -> list[str]:
        lines = [
            f"### {title}",
            "",
            "| | " + " | ".join(archs) + " |",
            "|---" * (len(archs) + 1) + "|",
        ]
        for kind in ("pretrained", "scratch"):
            for rec in recipes:
                same = (table.weights == kind) & (table.recipe == rec)
                if rec and not same.any():
                    continue  # the lab's two rows always show; other recipes where they ran
                values = []
                for arch in archs:
                    row = table[same & (table.arch == arch)]
                    values.append(cell(row.iloc[0]) if len(row) else "—")
                label = "with pretrained" if kind == "pretrained" else "w/o pretrained"
                label += f", {rec}" if rec else ""
                lines.append(f"| {label} | " + " | ".join(values) + " |")
        return [*lines, ""]

    lines = ["# Results", ""]
    lines += grid("Test accuracy / QWK of the checkpoint selected on validation", _cell_text)
    lines += grid(
        "Highest per-epoch test accuracy (the lab report's number; peeks at test)",
        lambda r: "—" if np.isnan(r.highest_epoch_test_acc) else f"{r.highest_epoch_test_acc:.2%}",
    )
    majority = table.majority_accuracy.dropna()
    if len(majority):
        lines += [
            f"Always predicting grade 0 scores {majority.iloc[0]:.2%} on this test split.",
            "",
        ]
    lines += ["## Which variant wins, and how sure", ""]
    if len(pairs):
        lines += [*(f"- {v}" for v in pairs.verdict), ""]
    lines += summary
    return "\n".join(lines) + "\n"


def summarise(
    table: pd.DataFrame, pairs: pd.DataFrame, boot: Bootstrap | None, resamples: int
) -> list[str]:
    """What the intervals are, and whether this test set separates the variants at all."""
    if boot is None:
        return ["No run has per-image test predictions: no intervals, no paired comparisons."]
    n = len(boot.units.of_image)
    lines = [f"[...]: 95 % intervals from {resamples} resamples of the {n} test images' "
             f"{boot.units.describe()}, the same resamples for every run (paired); ± the SD "
             "over seeds, whose noise the intervals of several seeds include."]  # fmt: skip
    if pairs.empty:
        row = table.dropna(subset="test_qwk_lo").iloc[0]
        half = (row.test_qwk_hi - row.test_qwk_lo) / 2
        lines.append(
            f"One variant, nothing to compare it with: {row.variant}'s test QWK {row.test_qwk:.3f} "
            f"[{row.test_qwk_lo:.3f}, {row.test_qwk_hi:.3f}] is known to about ±{half:.3f} on "
            f"these {n} test images, and another variant within about that of it may not be told "
            "apart here (the paired comparison decides, once there is one: e.g. "
            "`dvc exp run -S arch=resnet50`)."
        )
        return lines
    unseparated = int((~pairs.separated).sum())
    if unseparated == len(pairs):
        lines.append(f"These {n} test images cannot separate any two of these variants: every "
                     "difference's interval crosses 0. More test patients (or more seeds, "
                     "where training noise dominates) narrow the intervals.")  # fmt: skip
    elif unseparated:
        lines.append(f"{unseparated} of {len(pairs)} pairs: no difference shown on these {n} "
                     "test images.")  # fmt: skip
    if len(pairs) > 1:
        lines.append(f"{len(pairs)} pairs at 95 % each: about one in 20 pairs that do not "
                     "differ still shows a difference by chance.")  # fmt: skip
    return lines


def accuracy_curves(store: Store, run_id: str) -> pd.DataFrame:
    train, test = (metric_history(store, run_id, k) for k in ("train/acc", "test/acc"))
    epochs = sorted(set(train) | set(test))
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_acc": [train.get(e, np.nan) for e in epochs],
            "test_acc": [test.get(e, np.nan) for e in epochs],
        }
    )


@dataclass(frozen=True)
class Comparison:
    lines: list[str]  # the verdicts and the summary, for the terminal
    notes: list[str]
    logged: str  # the MLflow run holding the results


def compare(
    root: Path, out: Path, experiment: str, run_ids: list[str] | None, resamples: int = 1000
) -> Comparison:
    """Write results.md, results.csv, pairs.csv, forest.png, accuracy_<arch>.png and
    confusion_grid.png, log them to MLflow; return the verdicts and notes."""
    store = existing_store(root)
    runs = list_runs(store, experiment, run_ids)
    cells, notes = pick_runs(runs)
    if not cells:
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise RetinoError(
            f"no complete runs in MLflow experiment {experiment!r}{detail}; run `dvc repro` first"
        )
    age = {r.run_id: i for i, r in enumerate(runs)}
    cells, tables, more = one_test_set(store, cells, age, named=bool(run_ids))
    notes += more
    measured, boot, more = measure(cells, tables, resamples)
    notes += more
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(store, cells, measured)
    pairs = compare_pairs(cells, measured, tables)
    summary = summarise(table, pairs, boot, resamples)
    table.to_csv(out / "results.csv", index=False)
    pairs.to_csv(out / "pairs.csv", index=False)
    (out / "results.md").write_text(markdown(table, pairs, summary))
    figures = []
    if measured:
        images = (
            f"{len(boot.units.of_image)} test images: {boot.units.describe()} resampled. "
            "Overlapping intervals may still differ: results.md's paired verdicts decide"
        )
        rows = [(v, m.qwk_estimate) for v, m in measured.items()]
        plot_forest(rows, out / "forest.png", "Test QWK with 95 % intervals", images)
        figures.append(out / "forest.png")

    for arch in sorted({c.arch for c in cells}):
        series = {c.label: accuracy_curves(store, c.newest.run_id) for c in cells if c.arch == arch}
        title = f"{arch}: train and test accuracy, with vs without pretraining"
        plot_accuracy_comparison(series, out / f"accuracy_{arch}.png", title)
        figures.append(out / f"accuracy_{arch}.png")

    matrices = {}
    for cell in cells:
        text = read_artifact(store, cell.newest.run_id, "eval/confusion.json")
        if text is None:
            notes.append(
                f"{cell.newest.name}: no eval/confusion.json artifact; left out of the grid"
            )
        else:
            matrices[f"{cell.arch} {cell.label}"] = np.array(json.loads(text)["counts"])
    if matrices:
        plot_confusion_grid(matrices, out / "confusion_grid.png", "Test confusion (row-normalised)")
        figures.append(out / "confusion_grid.png")
    logged = log_comparison(root, experiment, cells, out, figures)
    return Comparison([*pairs.verdict, *summary], notes, logged)


def log_comparison(
    root: Path, experiment: str, cells: list[Cell], out: Path, figures: list[Path]
) -> str:
    """The results as a run of `<experiment>-compare`: artifacts and the forest plot as an image.
    An experiment of its own keeps it out of the training runs' table, which ranks by
    best/test_qwk; its tags name the runs compared. Returns 'experiment / run id'."""
    name = f"{experiment}-compare"
    runs = [r.run_id for c in cells for r in c.runs]
    tags = {"compared_experiment": experiment, "compared_runs": " ".join(runs),
            "mlflow.note.content": f"retino compare over {len(runs)} runs of {len(cells)} "
                                   f"variants of experiment {experiment}"}  # fmt: skip
    with open_run(root, name=f"compare-{len(cells)}-variants", tags=tags, experiment=name) as run:
        for path in (out / "results.md", out / "results.csv", out / "pairs.csv", *figures):
            run.log_artifact(path)
        if (out / "forest.png").exists():
            run.log_image(out / "forest.png", "forest")
        return f"{name} / {run.run_id}"
