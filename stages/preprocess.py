"""preprocess: every image of the prepared splits, disc-cropped and resized once, into a uint8
cache that training and evaluation read."""

import argparse
from pathlib import Path

from retino.config import load_config
from retino.data.preprocess import preprocess
from retino.errors import exit_on_error, exit_process


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--prepared", type=Path, default=Path("prepared"))
    parser.add_argument("--out", type=Path, default=Path("preprocessed"))
    args = parser.parse_args()
    index = preprocess(args.data, args.prepared, args.out, load_config(args.params))
    rows = ", ".join(f"{split} {entry['rows']}" for split, entry in index["splits"].items())
    print(f"wrote {args.out}: {rows} images at {index['image_size']} px "
          f"(normalize {index['normalize']})")  # fmt: skip


if __name__ == "__main__":
    exit_process(main())
