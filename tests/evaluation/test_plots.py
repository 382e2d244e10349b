import ast
import gc
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retino import metrics
from retino.evaluation import plots
from retino.evaluation.plots import (
    plot_accuracy_comparison,
    plot_confusion,
    plot_confusion_grid,
    plot_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> tuple[int, int]:
    """A real, non-trivial PNG with nothing clipped at the edges; returns (width, height)."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        pixels = np.asarray(img.convert("RGB"))
    assert 400 <= width <= 3000 and 400 <= height <= 3000, img.size
    rgb = pixels.astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 50, "image is (nearly) a single flat colour"
    # a white frame all round: no label, title or spine runs off the canvas
    inked = (pixels != 255).any(axis=2)
    edge = 4
    assert not inked[:edge].any() and not inked[-edge:].any(), "text clipped at top/bottom"
    assert not inked[:, :edge].any() and not inked[:, -edge:].any(), "text clipped at a side"
    return width, height


@pytest.fixture
def drawn(monkeypatch):
    """Records what each figure showed just before it was saved (titles, legends, lines)."""
    seen = []
    original = plots._save

    def spy(fig, path):
        seen.append(
            {
                "titles": [ax.get_title() for ax in fig.axes],
                "suptitle": fig.get_suptitle(),
                "legends": [
                    [t.get_text() for t in ax.get_legend().get_texts()]
                    for ax in fig.axes
                    if ax.get_legend() is not None
                ],
                "lines": {
                    ax.get_title(): [(line.get_label(), line.get_ydata()) for line in ax.lines]
                    for ax in fig.axes
                },
                "xticks": [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes],
                "yticks": [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes],
                "texts": [[t.get_text() for t in ax.texts] for ax in fig.axes],
            }
        )
        original(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def history(epochs: int = 6) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    return pd.DataFrame(
        {
            "epoch": e,
            "train_loss": 1.4 * np.exp(-e / 4) + 0.3,
            "val_loss": 1.2 * np.exp(-e / 5) + 0.5,
            "test_loss": 1.2 * np.exp(-e / 5) + 0.55,
            "train_acc": 0.95 - 0.3 * np.exp(-e / 3),
            "val_acc": 0.80 - 0.1 * np.exp(-e / 3),
            "test_acc": 0.78 - 0.1 * np.exp(-e / 3),
            "lr": 1e-3,
        }
    )


def counts() -> np.ndarray:
    return np.array(
        [
            [700, 20, 15, 2, 1],
            [40, 30, 25, 1, 0],
            [60, 15, 120, 20, 5],
            [3, 1, 15, 20, 6],
            [2, 0, 10, 8, 30],
        ]
    )


def test_modules_stay_light():
    """metrics and plots import neither torch, mlflow nor pyplot (checked in the source)."""
    for module in (metrics, plots):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        heavy = {m for m in imported if m.split(".")[0] in {"torch", "mlflow"}}
        heavy |= {m for m in imported if m.startswith("matplotlib.pyplot")}
        assert not heavy, f"{module.__name__} imports {heavy}"


def test_curves_full_history(tmp_path, drawn):
    path = tmp_path / "deep" / "nested" / "curves.png"  # parents are created
    plot_curves(history(), path)
    width, height = assert_png(path)
    assert width > height
    info = drawn[0]
    assert info["titles"] == ["Loss", "Accuracy"]
    assert info["legends"] == [["Train", "Validation", "Test"]] * 2
    accuracy = dict(info["lines"]["Accuracy"])
    assert 60 < accuracy["Train"].max() <= 100  # fractions are drawn as percent
    assert all(t.lstrip("−-").isdigit() for t in info["xticks"][0] if t)  # integer epochs


def test_curves_missing_columns_and_nans(tmp_path, drawn):
    h = history(8).drop(columns=["test_loss", "val_acc"])
    h.loc[::2, "test_acc"] = np.nan  # test tracked every other epoch only
    h.loc[3, "val_loss"] = np.nan
    plot_curves(h, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    lines = drawn[0]["lines"]
    assert [label for label, _ in lines["Loss"]] == ["Train", "Validation"]
    assert [label for label, _ in lines["Accuracy"]] == ["Train", "Test"]
    assert len(dict(lines["Accuracy"])["Test"]) == 4
    assert len(dict(lines["Loss"])["Validation"]) == 7
    assert not any(np.isnan(y).any() for _, y in lines["Loss"] + lines["Accuracy"])


def test_curves_single_epoch_and_no_metrics(tmp_path, drawn):
    plot_curves(history(1)[["epoch", "train_loss", "train_acc"]], tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    assert drawn[0]["xticks"][0] == ["1"]
    plot_curves(pd.DataFrame({"epoch": [1, 2], "lr": [0.1, 0.1]}), tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")
    assert drawn[1]["texts"] == [["no data"], ["no data"]]


def test_curves_accept_engine_history_rows(tmp_path):
    rows = history(3).to_dict("records")  # what engine.fit returns
    plot_curves(rows, tmp_path / "rows.png")
    assert_png(tmp_path / "rows.png")


def test_curves_need_epoch(tmp_path):
    with pytest.raises(ValueError, match="epoch"):
        plot_curves(pd.DataFrame({"train_loss": [1.0]}), tmp_path / "x.png")


def test_confusion(tmp_path, drawn):
    path = tmp_path / "cm.png"
    plot_confusion(counts(), str(path), title="resnet18 pretrained: test")
    assert_png(path)
    info = drawn[0]
    assert info["suptitle"] == "resnet18 pretrained: test"
    assert info["xticks"][0][0] == "0 No DR" and info["yticks"][0][4] == "4 Proliferative"
    assert "700" in info["texts"][0] and "0.95" in info["texts"][1]
    assert len(info["texts"][0]) == len(info["texts"][1]) == 25


def test_confusion_with_empty_rows(tmp_path):
    cm = np.zeros((5, 5), dtype=int)
    cm[0, 0] = 10
    plot_confusion(cm, tmp_path / "cm.png")
    assert_png(tmp_path / "cm.png")


def test_confusion_rejects_non_square(tmp_path):
    with pytest.raises(ValueError):
        plot_confusion(np.ones((5, 4)), tmp_path / "cm.png")


def test_accuracy_comparison(tmp_path, drawn):
    scratch = history().assign(train_acc=lambda d: d.train_acc - 0.1)
    scratch.loc[2, "test_acc"] = np.nan
    series = {"pretrained": history(), "scratch": scratch}
    plot_accuracy_comparison(series, tmp_path / "cmp.png", "ResNet-18")
    assert_png(tmp_path / "cmp.png")
    info = drawn[0]
    assert info["titles"] == ["ResNet-18"]
    assert info["legends"] == [
        ["Train (pretrained)", "Test (pretrained)", "Train (scratch)", "Test (scratch)"]
    ]
    lines = dict(info["lines"]["ResNet-18"])
    assert lines["Test (scratch)"].size == 5
    assert 50 < lines["Test (pretrained)"].max() <= 100


@pytest.mark.parametrize("n", [1, 4])
def test_confusion_grid(tmp_path, drawn, n):
    names = [f"resnet{d} {w}" for d in (18, 34, 50, 101) for w in ("pretrained", "scratch")]
    matrices = {name: counts() + i for i, name in enumerate(names[:n])}
    plot_confusion_grid(matrices, tmp_path / "grid.png", title="Test set" if n > 1 else "")
    assert_png(tmp_path / "grid.png")
    info = drawn[0]
    assert info["titles"][:n] == names[:n]
    # class names on the outer axes only: the first column carries the y labels
    assert info["yticks"][0][0] == "0 No DR"
    if n > 1:
        assert set(info["yticks"][1]) == {""}
    assert all("0." in t or "1.00" in t for t in info["texts"][0])


def test_confusion_grid_needs_matrices(tmp_path):
    with pytest.raises(ValueError):
        plot_confusion_grid({}, tmp_path / "grid.png")


def test_figures_are_freed(tmp_path, monkeypatch):
    refs = []

    class TrackedFigure(plots.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            refs.append(weakref.ref(self))

    monkeypatch.setattr(plots, "Figure", TrackedFigure)
    plot_curves(history(), tmp_path / "a.png")
    plot_confusion_grid({"x": counts()}, tmp_path / "b.png")
    gc.collect()
    assert len(refs) == 2
    assert all(ref() is None for ref in refs)
