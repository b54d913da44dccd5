"""`tools.bench.train` refuses bad sizes before building anything."""

import re

import pytest

from tools.bench.train import parse_args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "--image-size, --batch, --repeats and --pipeline-images must be positive"),
        (
            ["--pipeline-source-size", "-1"],
            "--pipeline-source-size must be 0 .the canvas size. or a positive",
        ),
    ],
)
def test_bad_sizes_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_the_source_size_defaults_to_the_canvas():
    assert parse_args([]).pipeline_source_size == 0
    assert parse_args(["--pipeline-source-size", "256"]).pipeline_source_size == 256
