"""Reading YAML as retino reads it: a duplicate key is an error, `1e-3` is a number.

PyYAML keeps the last of two equal keys without a word, so a stray second `lr:` would silently
win; and it reads `1e-3` as a string (YAML 1.1), while DVC, which writes params.yaml for
`dvc exp run -S`, reads it as a number (YAML 1.2). Both are settled here, for every YAML file
retino parses.
"""

import re
from pathlib import Path
from typing import Any

import yaml

from retino.errors import RetinoError


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}  # key -> line of its first occurrence (0-based)
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (also on line {first[key] + 1}); keep one",
                    key_node.start_mark,
                )  # fmt: skip
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# YAML 1.2 floats without a dot (1e-3, 5E+2); the 1.1 resolver only knows those with one
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: Path) -> Any:
    """The YAML document in `path`; a syntax error or a duplicate key is a one-line RetinoError
    naming the file and line. OSError (a missing file) is left to the caller."""
    text = Path(path).read_text()
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f":{mark.line + 1}" if mark else ""
        problem = err.problem if err.problem and "duplicate key" in err.problem else None
        raise RetinoError(f"{path}{where}: {problem or 'not valid YAML; fix the syntax'}") from None
    except yaml.YAMLError:
        raise RetinoError(f"{path}: not valid YAML; fix the syntax") from None
