"""Every YAML file retino reads: duplicate keys are an error, 1e-3 is a number."""

import pytest

from retino.errors import RetinoError
from retino.tracking.runs import data_version
from retino.yamlfile import load_yaml


def test_duplicate_keys_anywhere_are_an_error(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("top:\n  inner:\n    x: 1\n    y: 2\n    x: 3\n")
    with pytest.raises(RetinoError) as err:
        load_yaml(path)
    assert str(err.value) == f"{path}:5: duplicate key 'x' (also on line 3); keep one"


def test_merge_keys_may_be_overridden_and_exponents_are_numbers(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  x: 5\nlr: 1e-3\nbig: -2E+2\n")
    assert load_yaml(path) == {
        "base": {"x": 1, "y": 2}, "use": {"x": 5, "y": 2}, "lr": 0.001, "big": -200.0,
    }  # fmt: skip


def test_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("a: 1\nb: [1\nc: 2\n")
    with pytest.raises(RetinoError, match=rf"^{path}:\d: not valid YAML; fix the syntax$"):
        load_yaml(path)


def test_data_dvc_with_a_duplicate_key_is_refused(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: abc.dir\n  path: data\n")
    assert data_version(dvc_file) == "abc.dir"
    dvc_file.write_text("outs:\n- md5: abc.dir\n  md5: def.dir\n  path: data\n")
    with pytest.raises(RetinoError, match="duplicate key 'md5'"):
        data_version(dvc_file)
    assert data_version(tmp_path / "missing.dvc") == ""  # outside a DVC project: no tag
