"""The grid of a sweep: `-S` lists expanded into cells exactly as `dvc exp run --queue -S` does.

DVC's own parser does the work (its Hydra override grammar, its cartesian product, its order),
so cell i of a sweep is the i-th experiment `dvc exp run --queue` would have queued with the
same arguments. Each cell's params.yaml is then made as DVC makes it (`apply_overrides` on the
committed file) and checked by retino's config, so a typo or an out-of-range value is one line
at submission, not a failed job hours later on the cluster.

A cell is named after its variant and its other overrides, `resnet18-pretrained-seed=1`: the
name of its DVC experiment and of its MLflow run, the same in every submission of the sweep, so
a second submission knows which cells already have an experiment.
"""

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retino.config import Config, from_dict
from retino.errors import RetinoError
from retino.tracking.names import variant
from retino.yamlfile import load_yaml

PARAMS_FILE = "params.yaml"
# characters a git ref name (DVC stores experiments as refs) may not hold, and the path slash
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class Cell:
    index: int  # position in DVC's expansion: the Slurm array task id
    name: str  # the DVC experiment's name and the MLflow run's
    params: tuple[str, ...]  # `-S` values of its `dvc exp run`, as DVC would pass them
    config: Config  # its params.yaml, checked


def expand(set_params: list[str], params_yaml: str) -> list[Cell]:
    """The cells of `-S` arguments (`arch=resnet18,resnet50`, `other.yaml:key=1,2`) over the
    committed params.yaml text."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides

    try:
        by_file = to_path_overrides(set_params)
        parsed = {path: to_hydra_overrides(over) for path, over in by_file.items()}
        swept = any(o.is_sweep_override() for over in parsed.values() for o in over)
        grid = get_hydra_sweeps(by_file) if swept else [by_file]
    except (InvalidArgumentError, ValueError) as err:
        raise RetinoError(f"-S {' '.join(set_params)}: {_reason(err)}") from None
    except Exception as err:  # Hydra's grammar errors have no common base worth importing
        raise RetinoError(f"-S: {_reason(err)}") from None
    cells = []
    for index, overrides in enumerate(grid):
        params = tuple(
            o if path == PARAMS_FILE else f"{path}:{o}"
            for path, over in overrides.items()
            for o in over
        )
        config = _cell_config(params_yaml, overrides.get(PARAMS_FILE, []), params)
        cells.append(Cell(index, _name(config, overrides), params, config))
    _check_unique(cells)
    return cells


def _cell_config(params_yaml: str, overrides: list[str], params: tuple[str, ...]) -> Config:
    """params.yaml as `dvc exp run -S` would leave it for this cell, checked."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    cell = " ".join(f"-S {p}" for p in params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, PARAMS_FILE)
        path.write_text(params_yaml)
        try:
            apply_overrides(path, overrides)
        except InvalidArgumentError as err:
            reason = _reason(err)
            if "not in struct" in reason:  # Hydra's words for a key params.yaml lacks
                reason = f"{PARAMS_FILE} has no such key"
            raise RetinoError(f"{cell}: {reason}") from None
        try:
            return from_dict(load_yaml(path))
        except RetinoError as err:
            raise RetinoError(f"{cell}: {err}") from None


def _reason(err: BaseException) -> str:
    """The innermost message of an error chain, on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(str(err).split()) or type(err).__name__


def _name(config: Config, overrides: dict[str, list[str]]) -> str:
    """resnet18-pretrained-seed=1: the variant, then each other override's key=value (the last
    part of the key, unless two overridden keys share it)."""
    from dvc.utils.hydra import to_hydra_overrides

    pairs = []
    for over in overrides.values():
        for o in to_hydra_overrides(over):
            key = o.key_or_group
            value = o.value()
            if key == "arch" or (key == "pretrained" and isinstance(value, bool)):
                continue  # in the variant
            text = str(value).lower() if isinstance(value, bool) else str(value)
            pairs.append((key, Path(text).name if key == "pretrained" else text))
    leaves = [key.rsplit(".", 1)[-1] for key, _ in pairs]
    parts = [variant(config.arch, config.pretrained)]
    for (key, value), leaf in zip(pairs, leaves, strict=True):
        parts.append(f"{key if leaves.count(leaf) > 1 else leaf}={value}")
    name = _NOT_IN_NAME.sub("_", "-".join(parts))
    return re.sub(r"\.{2,}", ".", name).removesuffix(".lock").rstrip(".")


def _check_unique(cells: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.name in seen:
            first = seen[cell.name]
            raise RetinoError(
                f"cells {' '.join(first.params)} and {' '.join(cell.params)} would both be "
                f"named {cell.name}; give them values that differ in their names"
            )
        seen[cell.name] = cell
