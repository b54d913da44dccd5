"""Command-line overrides of an experiment config: typed, and a bad one names the key before anything runs."""

from __future__ import annotations

import pytest

from imtcxr_jax.train.experiment import apply_overrides, load_config


def config():
    return load_config("configs/micro.py")


def test_overrides_are_typed_and_reach_nested_keys():
    c = apply_overrides(
        config(),
        ["--config.total_steps=7", "--config.learning_rate=3e-4", "--config.data.batch_by_family=true",
         "--config.data.weights.report=0.25", "--config.mesh=(2,2,1)"],
    )  # fmt: skip
    assert (c.total_steps, c.learning_rate, c.data.batch_by_family) == (7, 3e-4, True)
    assert c.data.weights.report == 0.25 and c.mesh == (2, 2, 1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.total_stepz=3", "config has no key 'total_stepz'"),
        ("--config.data.img_size=3", "data has no key 'img_size'"),
        ("--config.total_steps=many", "expected an integer"),
        ("--config.data.augment=maybe", "expected true or false"),
        ('--config.data.weights={"report": 1}', r"data.weights: is a group of keys \(\['classification'"),
        ("total_steps=3", "expected --config.KEY=VALUE"),
    ],
)
def test_a_bad_override_names_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(config(), [override])


def test_a_negative_phantom_worker_count_is_named_before_any_phantom_is_drawn(tmp_path):
    from imtcxr_jax.train.loop import prepare_data

    with pytest.raises(
        ValueError, match=r"config.dataset.phantom_workers: got -1, expected a number of processes"
    ):
        prepare_data(apply_overrides(config(), ["--config.dataset.phantom_workers=-1"]), tmp_path)
    assert not (tmp_path / "data").exists()
