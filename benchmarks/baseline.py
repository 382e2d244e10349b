"""The lab report's input pipeline and training loop, as it was: the baseline of `bench`.

Its dataset opened each image with PIL and ran RandomHorizontalFlip -> RandomVerticalFlip ->
ToTensor per image, in a `DataLoader(batch_size, shuffle=True)` without workers; its step was
plain fp32 SGD. Kept here, outside the library, only to be measured against.
"""

from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class LabReportDataset(Dataset):
    """The lab report's RetinopathyDataSet: per image PIL open, random flips, ToTensor."""

    def __init__(
        self, table: pd.DataFrame, root: Path, size: int, stored: tuple[int, int], flips=True
    ):
        self.paths = [str(root / p) for p in table["path"]]
        self.labels = table["label"].tolist()
        resize = []  # the lab report had none: only to give both paths the same shape
        if stored != (size, size):
            resize.append(transforms.Resize(size))
            if stored[0] != stored[1]:
                resize.append(transforms.CenterCrop(size))
        if flips:  # training; its test set had none
            resize += [transforms.RandomHorizontalFlip(p=0.5), transforms.RandomVerticalFlip(p=0.5)]
        self.transformations = transforms.Compose([*resize, transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transformations(Image.open(self.paths[index])), self.labels[index]


def lab_report_loader(
    table: pd.DataFrame, root: Path, size: int, batch_size: int, stored: tuple[int, int],
    train: bool = True,
) -> DataLoader:  # fmt: skip
    """The train loader (flips, shuffled), or with `train=False` the test loader (neither)."""
    dataset = LabReportDataset(table, root, size, stored, flips=train)
    return DataLoader(dataset, batch_size, shuffle=train)


def lab_report_step(model: nn.Module, device: torch.device):
    """The lab report's train step: fp32, default memory format, SGD(momentum 0.9)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def lab_report_test_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """The lab report's per-epoch look at test (it kept the epoch that scored best there)."""
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            seen += len(y)
    model.train()
    return correct / seen
