"""The cached split as a dataset: the preprocessed pixels and labels of each row, whole batches
in one gather, workers that end with their loader."""

import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from retino.data.dataset import CachedSplit, make_loader
from retino.data.fundus import preprocess_image
from retino.errors import RetinoError


def test_rows_are_the_preprocessed_images_with_their_labels(project):
    split = CachedSplit(project / "preprocessed", project / "prepared", "train")
    table = pd.read_csv(project / "prepared" / "train.csv")
    assert len(split) == len(table) and split.labels.tolist() == table.label.tolist()
    for i in (0, len(split) - 1):
        image, label = split[i]
        expected = preprocess_image(project / "data" / table.path[i], 32, "none", 10**8)
        assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
        assert np.array_equal(image.numpy().transpose(1, 2, 0), expected)
        assert label == table.label[i]


def test_a_batch_is_gathered_in_one_pass(project):
    split = CachedSplit(project / "preprocessed", project / "prepared", "train")
    loader = make_loader(split, 5, False, 0, False)
    images, labels = next(iter(loader))
    assert images.shape == (5, 3, 32, 32) and images.is_contiguous()
    assert torch.equal(images, torch.stack([split[i][0] for i in range(5)]))
    assert torch.equal(labels, split.labels[:5])


def test_a_cache_of_other_tables_is_refused(project):
    table = project / "prepared" / "val.csv"
    table.write_text(table.read_text() + table.read_text().splitlines()[1] + "\n")
    with pytest.raises(RetinoError, match=r"do not match .*val\.csv; run `dvc repro preprocess`"):
        CachedSplit(project / "preprocessed", project / "prepared", "val")


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:  # field 4: the parent pid
                found.add(int(entry))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_workers_end_with_the_loader(project):
    split = CachedSplit(project / "preprocessed", project / "prepared", "train")
    before = _children()
    loader = make_loader(split, 8, True, 2, False)
    images, _ = next(iter(loader))
    assert images.shape == (8, 3, 32, 32)  # the workers map the cache themselves
    assert len(_children() - before) == 2  # persistent workers, alive between epochs
    del loader
    gc.collect()
    deadline = time.monotonic() + 60  # a hang guard, not a timing
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before
