"""MetricsWriter: metrics.jsonl keeps every key as given; TensorBoard tags lose their spaces, silently."""

import logging

from imtcxr_jax.train.logging_utils import MetricsWriter, read_metrics


def test_metric_names_with_spaces_are_written_without_a_log_line_per_tag(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    writer = MetricsWriter(tmp_path)
    writer.write({"step": 3, "loss": 0.5, "eval/dice/left lung": 0.8})
    writer.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 3, "loss": 0.5, "eval/dice/left lung": 0.8}]
    assert not [r for r in caplog.records if "illegal" in r.getMessage()]  # tensorboardX's renaming notice
    assert any((tmp_path / "tensorboard").iterdir())
