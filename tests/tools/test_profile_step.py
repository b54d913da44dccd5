"""`tools.profile_step` reads XLA's stack frames back to this package's source lines."""

import gzip
import inspect
import json
import re

import jax
import jax.numpy as jnp
import pytest

from imtcxr_jax.models import layers
from tools.profile_step import _attribute, _parse_args, _source_line, _stack_frames


def _gelu_program() -> str:
    return jax.jit(lambda x: layers.gelu(x) * 2.0).lower(jnp.ones((4, 8))).compile().as_text()


def test_operations_are_traced_back_to_the_package_source_line():
    hlo = _gelu_program()
    operations, chains = _stack_frames(hlo)
    lines = {_source_line(chains[frame]) for frame in operations.values()}
    gelu_lines = {line for line in lines if line.startswith("imtcxr_jax/models/layers.py:gelu:")}
    assert gelu_lines, lines
    source, first = inspect.getsourcelines(layers.gelu)
    for line in gelu_lines:  # a line inside gelu's body
        assert first <= int(line.rsplit(":", 1)[1]) < first + len(source)
    # The test's own lambda lies outside the package: its multiply has no package frame.
    assert "(no frame in imtcxr_jax)" in lines


def test_traced_time_is_summed_per_source_line(tmp_path, capsys):
    hlo = _gelu_program()
    operations, chains = _stack_frames(hlo)
    gelu_ops = [op for op, frame in operations.items() if "gelu" in _source_line(chains[frame])]
    events = [
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "tf_XLAEigen/1"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 3, "args": {"name": "python"}},
        {"ph": "X", "name": gelu_ops[0], "pid": 1, "tid": 2, "ts": 0, "dur": 3000},
        {"ph": "X", "name": gelu_ops[0], "pid": 1, "tid": 2, "ts": 5000, "dur": 1000},
        {"ph": "X", "name": "ThunkExecutor::Execute", "pid": 1, "tid": 2, "ts": 0, "dur": 9000},  # a span
        {"ph": "X", "name": gelu_ops[0], "pid": 1, "tid": 3, "ts": 0, "dur": 7000},  # Python's thread
        {"ph": "X", "name": "unknown.1", "pid": 1, "tid": 2, "ts": 0, "dur": 1000},
    ]
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "host.trace.json.gz").write_bytes(
        gzip.compress(json.dumps({"traceEvents": events}).encode())
    )
    _attribute(tmp_path, hlo, top=5)
    out = capsys.readouterr().out
    assert "thread time of the traced step: 5.0 ms" in out
    assert re.search(r"4\.0 ms  80\.0%  imtcxr_jax/models/layers\.py:gelu:\d+", out), out
    assert re.search(r"1\.0 ms  20\.0%  \(no stack frame\)", out), out


def test_a_profile_needs_one_family_and_a_round(capsys):
    with pytest.raises(SystemExit):
        _parse_args(["--workdir", "w", "--profile"])
    assert "--profile needs one family" in capsys.readouterr().err
    assert _parse_args(["--workdir", "w", "--profile", "--families", "report"]).families == ["report"]
    with pytest.raises(SystemExit):
        _parse_args(["--workdir", "w", "--rounds", "0"])
    assert "--rounds: expected at least 1" in capsys.readouterr().err
