"""The grain training pipeline: static batches, framing, mixture, parse-back, determinism, resume, hosts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from imtcxr_jax.data import pipeline, sources
from imtcxr_jax.tasks import classification, localization, report, segmentation
from imtcxr_jax.tasks.common import Task, Unparseable
from imtcxr_jax.text.tokenizer import BOS_ID, EOS_ID, PAD_ID
from tests.data.test_sources import write_phantom_dataset

SIZE = 64
HALF_BIN = SIZE / 999 / 2 + 1e-9  # the most a coordinate moves when quantised to a bin
CONFIG = {
    "image_size": SIZE,
    "max_src_len": 64,
    "max_tgt_len": 128,
    "batch_size": 8,
    "num_threads": 2,
    "prefetch_batches": 2,
    "rotate_deg": 6.0,
    "translate": 0.05,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(folder, 32, size=SIZE)
    records, rejects = sources.load_records(folder)
    assert rejects.rejected == 0
    tokenizer = pipeline.build_tokenizer(records, vocab_size=2000)
    return records, folder, tokenizer


def _dataset(data, config=None, **kwargs):
    records, folder, tokenizer = data
    kwargs.setdefault("seed", 0)
    return pipeline.make_train_dataset(records, folder, tokenizer, {**CONFIG, **(config or {})}, **kwargs)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _assert_resumes(data, config):
    """A saved iterator state, restored into a fresh dataset, continues with the same batches."""
    iterator = iter(_dataset(data, config))
    _take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 3)
    resumed = iter(_dataset(data, config))
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 3), expected)


def _parse(family_task: Task, text: str, size: float):
    """The task parser of a decoded target."""
    if family_task is Task.DISEASES:
        return classification.parse_diseases(text)
    if family_task is Task.PRESENCE:
        return classification.parse_presence(text)
    if family_task is Task.LOCATION:
        return classification.parse_location(text)
    if family_task is Task.SEVERITY:
        return classification.parse_severity(text)
    if family_task is Task.BOX:
        return localization.parse_boxes(text, size, size)
    if family_task is Task.SEGMENTATION:
        return segmentation.parse_polygon(text, size, size)
    return report.parse_report(text)


def test_batches_have_static_shapes_and_the_framing_of_spec_9_3(data):
    train = _dataset(data)
    assert train.per_host_batch == 8
    shapes = {
        "src": ((8, 64), np.int32),
        "images": ((8, SIZE, SIZE, 3), np.float32),
        "prev": ((8, 128), np.int32),
        "target": ((8, 128), np.int32),
        "task": ((8,), np.int32),
    }
    assert train.batch_shapes() == {"all": shapes}  # announced before the first batch
    for batch in _take(iter(train), 20):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
        assert batch["images"].min() >= -1 and batch["images"].max() <= 1
        for src, prev, target in zip(batch["src"], batch["prev"], batch["target"], strict=True):
            n = int((src != PAD_ID).sum())
            assert (src[n:] == PAD_ID).all() and src[0] == BOS_ID and src[n - 1] == EOS_ID
            assert EOS_ID not in src[1 : n - 1]
            m = int((target != PAD_ID).sum())
            assert (target[m:] == PAD_ID).all() and (prev[m:] == PAD_ID).all()
            assert target[m - 1] == EOS_ID and prev[0] == BOS_ID
            np.testing.assert_array_equal(prev[1:m], target[: m - 1])  # shifted by one


def test_mixture_follows_the_weights(data):
    train = _dataset(data)
    tasks = np.concatenate([b["task"] for b in _take(iter(train), 100)])
    shares = np.bincount(tasks, minlength=4) / tasks.size
    np.testing.assert_allclose(shares, [0.15, 0.20, 0.15, 0.50], atol=0.02)

    no_boxes = _dataset(data, {"weights": {"classification": 1.0, "report": 1.0}})
    tasks = np.concatenate([b["task"] for b in _take(iter(no_boxes), 10)])
    assert set(tasks.tolist()) == {0, 3}


def test_every_target_decodes_and_parses_as_its_task(data):
    _, _, tokenizer = data
    families = {"classification": set(), "localization": set(), "segmentation": set(), "report": set()}
    for batch in _take(iter(_dataset(data)), 12):
        for src, target, task in zip(batch["src"], batch["target"], batch["task"], strict=True):
            instruction = tokenizer.decode(src)
            kind = _task_of_instruction(instruction)
            family = pipeline.TASK_FAMILIES[int(task)]
            assert kind.family == family
            parsed = _parse(kind, tokenizer.decode(target), SIZE)
            assert not isinstance(parsed, Unparseable), (instruction, parsed)
            families[family].add(kind)
    assert all(families.values())


def _task_of_instruction(text: str) -> Task:
    for prefix, task in [
        ("what disease", Task.DISEASES),
        ("is ", Task.PRESENCE),
        ("where is", Task.LOCATION),
        ("what is the level", Task.SEVERITY),
        ("give the accurate bbox", Task.BOX),
        ("please segment", Task.SEGMENTATION),
    ]:
        if text.startswith(prefix):
            return task
    assert text.endswith("describe the image"), text
    return Task.REPORT


def test_augmented_targets_parse_back_to_the_augmented_ground_truth(data):
    records, folder, tokenizer = data
    config = pipeline.PipelineConfig.from_config(CONFIG)
    maker = pipeline.ExampleMaker(records, folder, tokenizer, config, augment_images=True)
    refs = [
        *sources.classification_examples(records)[:40],
        *sources.localization_examples(records),
        *sources.segmentation_examples(records)[:40],
        *sources.report_examples(records),
    ]
    for k, ref in enumerate(refs):
        sample = maker.sample(ref, np.random.default_rng(k))
        arrays = sample.arrays
        assert tokenizer.decode(arrays["src"]) == " ".join(sample.text.instruction.split())
        parsed = _parse(Task(ref.task), tokenizer.decode(arrays["target"]), SIZE)
        truth = sample.truth
        if ref.task in (Task.BOX, Task.SEGMENTATION):
            assert parsed.shape == truth.shape
            np.testing.assert_allclose(parsed, truth, atol=HALF_BIN)
        else:
            assert parsed == truth, (ref, parsed, truth)
        if ref.task == Task.SEGMENTATION:  # the jitter really moved the ground truth
            record = records[ref.record]
            assert not np.allclose(truth, sample.transform.fit_matrix[0, 0] * record.polygons[ref.subject])


def test_state_restores_the_identical_batch_sequence(data):
    train = _dataset(data)
    iterator = iter(train)
    _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 4)

    resumed = iter(_dataset(data))
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 4), expected)


def test_same_seed_same_batches_other_seed_other_batches(data):
    first = _take(iter(_dataset(data, seed=5)), 4)
    _assert_same_batches(first, _take(iter(_dataset(data, seed=5)), 4))
    other = _take(iter(_dataset(data, seed=6)), 4)
    assert not all(np.array_equal(a["images"], b["images"]) for a, b in zip(first, other, strict=True))


def test_hosts_partition_the_global_stream(data):
    single = _take(iter(_dataset(data, {"batch_size": 8})), 3)
    hosts = [
        _take(iter(_dataset(data, {"batch_size": 8}, process_index=p, process_count=2)), 3) for p in range(2)
    ]
    for step, global_batch in enumerate(single):
        for key, value in global_batch.items():
            halves = [hosts[p][step][key] for p in range(2)]
            assert halves[0].shape[0] == 4
            # Concatenated in process order, the hosts' batches are the single-process batch.
            np.testing.assert_array_equal(np.concatenate(halves), value, err_msg=key)
    with pytest.raises(ValueError, match="not divisible by process_count 3"):
        _dataset(data, process_index=0, process_count=3)


def test_too_long_examples_are_counted_by_task_and_logged(data, caplog):
    records, _, tokenizer = data
    maker = pipeline.ExampleMaker(
        records, "", tokenizer, pipeline.PipelineConfig.from_config(CONFIG), augment_images=False
    )
    report_lengths = [maker.lengths(ref)[1] for ref in sources.report_examples(records)]
    limit = max(62, int(np.median(report_lengths)))  # some reports do not fit; polygons (61 tokens) do
    too_long = sum(length > limit for length in report_lengths)
    assert 0 < too_long < len(records)
    with caplog.at_level(logging.WARNING, logger="imtcxr_jax.data.pipeline"):
        train = _dataset(data, {"max_tgt_len": limit})
    assert dict(train.report.skipped) == {"report": too_long}
    assert dict(train.report.skipped_by_task) == {"report": too_long}
    assert train.report.examples["report"] == len(records) - too_long
    assert "too long" in caplog.text and "report" in caplog.text
    batch = next(iter(train))
    assert batch["target"].shape == (8, limit)

    with pytest.raises(ValueError, match=r"example too long: .*manifest\.jsonl"):
        _dataset(data, {"max_tgt_len": limit, "too_long": "error"})
    with pytest.raises(ValueError, match=r"task family 'report' has weight 1\.0 but no examples"):
        _dataset(data, {"max_tgt_len": 8, "weights": {"report": 1.0}})


def test_config_keys_are_checked():
    config = pipeline.default_config()
    assert pipeline.PipelineConfig.from_config(config) == pipeline.PipelineConfig()
    config.weights.report = 0.7
    assert pipeline.PipelineConfig.from_config(config).weights["report"] == 0.7
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['img_size'\]"):
        pipeline.PipelineConfig.from_config({"img_size": 64})
    with pytest.raises(ValueError, match="unknown task family 'vqa'"):
        pipeline.PipelineConfig(weights={"vqa": 1.0})
    with pytest.raises(ValueError, match="resize_mode"):
        pipeline.PipelineConfig(resize_mode="crop")
    with pytest.raises(ValueError, match="batch_by_family must be True or False, got 'yes'"):
        pipeline.PipelineConfig(batch_by_family="yes")
    with pytest.raises(ValueError, match="presence_questions 'every' is not one of"):
        pipeline.PipelineConfig(presence_questions="every")
    partial = pipeline.PipelineConfig(weights={"report": 1.0})
    assert partial.weights == {"classification": 0.0, "localization": 0.0, "segmentation": 0.0, "report": 1.0}


def test_presence_questions_all_asks_every_label_of_every_record(data):
    records, _, _ = data
    vocabulary = sources.label_vocabulary(records)
    only = {"weights": {"classification": 1.0}}
    sampled = _dataset(data, only).report.examples["classification"]
    every = _dataset(data, {**only, "presence_questions": "all"}).report.examples["classification"]
    # Sampled: each label of a record plus as many absent ones (at least one); all: every label, every record.
    asked = sum(len(r.labels) + min(len(vocabulary) - len(r.labels), max(1, len(r.labels))) for r in records)
    assert every - sampled == len(records) * len(vocabulary) - asked > 0


def test_eval_examples_are_deterministic_and_unaugmented(data):
    records, folder, tokenizer = data
    evaluation = pipeline.make_eval_examples(records, folder, tokenizer, CONFIG)
    again = pipeline.make_eval_examples(records, folder, tokenizer, CONFIG)
    assert [e.ref for e in evaluation] == [e.ref for e in again]
    vocabulary = sources.label_vocabulary(records)
    presence = [e for e in evaluation if e.task is Task.PRESENCE]
    assert len(presence) == len(records) * len(vocabulary)
    reports = [e for e in evaluation if e.task is Task.REPORT]
    assert len(reports) == 2 * len(records) and sum(e.ref.flag for e in reports) == len(records)

    for example in evaluation:
        parsed = _parse(example.task, tokenizer.decode(example.arrays["target"]), SIZE)
        if example.task in (Task.BOX, Task.SEGMENTATION):
            np.testing.assert_allclose(parsed, example.truth, atol=HALF_BIN)
        else:
            assert parsed == example.truth
    segment = next(e for e in evaluation if e.task is Task.SEGMENTATION)
    original = records[segment.ref.record].polygons[segment.ref.subject]
    np.testing.assert_allclose(segment.transform.from_canvas(segment.truth), original, atol=1e-9)

    batches = list(evaluation.batches(64))
    assert sum(len(examples) for _, examples in batches) == len(evaluation)
    last, examples = batches[-1]
    assert last["images"].shape == (64, SIZE, SIZE, 3) and last["src"].shape == (64, 64)
    np.testing.assert_array_equal(last["src"][: len(examples)], np.stack([e.arrays["src"] for e in examples]))
    images = evaluation.images(evaluation.examples[:2])
    np.testing.assert_array_equal(images, evaluation.images(evaluation.examples[:2]))


def test_the_tokenizer_covers_the_task_vocabulary(data):
    _, _, tokenizer = data
    words = set()
    for label in (*classification.DISEASES, *classification.LOCATIONS, *classification.SEVERITY_LEVELS):
        words.update(label.split())
    words.update(w for s in segmentation.STRUCTURES for w in s.split())
    phantom_words = {w for w in words if w in " ".join(pipeline.task_texts(data[0]))}
    assert len(phantom_words) > 20
    single = {w for w in phantom_words if len(tokenizer.encode(" " + w)) == 1}
    assert single == phantom_words


def test_worker_processes_give_the_same_batches_and_resume(data):
    threads = _take(iter(_dataset(data)), 4)
    train = _dataset(data, {"num_workers": 1})
    iterator = iter(train)
    try:
        first = _take(iterator, 2)
        state = json.loads(json.dumps(iterator.get_state()))
        _assert_same_batches(first + _take(iterator, 2), threads)
    finally:
        iterator.close()
    resumed = iter(_dataset(data, {"num_workers": 1}))
    try:
        resumed.set_state(state)
        _assert_same_batches(_take(resumed, 2), threads[2:])
    finally:
        resumed.close()


def test_the_image_cache_gives_the_same_batches_and_keeps_to_its_budget(data):
    """32 phantoms of 64 px, several epochs: with the cache every batch equals a fresh read's; a cached image is
    kept once, read-only, and gives a fresh read's arrays; with no budget nothing is kept."""
    uncached = _take(iter(_dataset(data)), 12)
    train = _dataset(data, {"image_cache_mb": 8})
    _assert_same_batches(_take(iter(train), 12), uncached)
    records, folder, tokenizer = data
    maker = pipeline.ExampleMaker(records, folder, tokenizer, pipeline.PipelineConfig(**CONFIG, image_cache_mb=8),
                                  augment_images=True)  # fmt: skip
    ref = next(r for r in sources.enumerate_examples(records, "segmentation") if r.record == 3)
    first = maker.fitted_image(ref)
    assert maker.fitted_image(ref) is first and not first.content.flags.writeable
    assert maker._cached_bytes == first.nbytes
    rng = np.random.default_rng(1)
    fresh, _ = pipeline.augment.prepare_image(
        pipeline.load_image(folder / records[3].image),
        SIZE,
        rng=np.random.default_rng(1),
        jitter=maker.config.jitter,
    )
    np.testing.assert_array_equal(maker.sample(ref, rng).arrays["images"], fresh)
    # A budget below one image: nothing is kept, every call reads the file again.
    small = pipeline.ExampleMaker(
        records, folder, tokenizer, pipeline.PipelineConfig(**CONFIG), augment_images=True
    )
    assert small.fitted_image(ref) is not small.fitted_image(ref) and small._cached_bytes == 0
    with pytest.raises(ValueError, match=r"image_cache_mb must be an integer >= 0, got -1"):
        pipeline.PipelineConfig(image_cache_mb=-1)


def test_batch_by_family_pads_each_family_to_its_own_length(data):
    by_family = _dataset(data, {"batch_by_family": True})
    lengths = by_family.report.longest_target
    seen: dict[int, int] = {}
    for batch in _take(iter(by_family), 24):
        families = set(batch["task"].tolist())
        assert len(families) == 1  # one family per batch
        family = pipeline.TASK_FAMILIES[families.pop()]
        width = batch["target"].shape[1]
        # The family's longest example, rounded up to a multiple of 8 (and never above max_tgt_len).
        assert width == min(-(-lengths[family] // 8) * 8, CONFIG["max_tgt_len"]) and width % 8 == 0
        assert batch["prev"].shape == batch["target"].shape
        assert np.all((batch["target"] == EOS_ID).sum(axis=1) == 1)  # nothing was cut
        # Instructions likewise: the family's longest, rounded up to 8; every one still ends with EOS.
        source = by_family.report.longest_source[family]
        assert batch["src"].shape[1] == min(-(-source // 8) * 8, CONFIG["max_src_len"])
        assert np.all((batch["src"] == EOS_ID).sum(axis=1) == 1)
        seen[width] = seen.get(width, 0) + 1
        # Each family's shapes were announced before the first batch (the train step is compiled for them).
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == by_family.batch_shapes()[family]
    assert len(seen) >= 3  # the short families really are shorter than the reports
    assert sorted(by_family.batch_shapes()) == sorted(pipeline.TASK_FAMILIES)
    assert min(seen) < max(seen) <= CONFIG["max_tgt_len"]


def test_a_coarser_length_multiple_pads_families_alike(data):
    """``length_multiple`` rounds each family's lengths up to its multiples (never above the limits), so
    short families end up with one shape, which the train step then compiles once."""
    fine = _dataset(data, {"batch_by_family": True})
    coarse = _dataset(data, {"batch_by_family": True, "length_multiple": 32})
    for family, (source, target) in coarse.lengths.items():
        longest_source = coarse.report.longest_source[family]
        longest_target = coarse.report.longest_target[family]
        assert source == min(-(-longest_source // 32) * 32, CONFIG["max_src_len"]) >= longest_source
        assert target == min(-(-longest_target // 32) * 32, CONFIG["max_tgt_len"]) >= longest_target
    assert len(set(coarse.lengths.values())) < len(set(fine.lengths.values()))
    for batch in _take(iter(coarse), 8):
        family = pipeline.TASK_FAMILIES[int(batch["task"][0])]
        assert batch["src"].shape[1] == coarse.lengths[family][0]
        assert batch["target"].shape[1] == coarse.lengths[family][1]
    with pytest.raises(ValueError, match=r"length_multiple must be an integer >= 1, got 0"):
        pipeline.PipelineConfig(length_multiple=0)


def test_batch_by_family_hosts_partition_the_global_stream_and_resume(data):
    config = {"batch_by_family": True, "batch_size": 8}
    single = _take(iter(_dataset(data, config)), 6)
    hosts = [_take(iter(_dataset(data, config, process_index=p, process_count=2)), 6) for p in range(2)]
    for step, global_batch in enumerate(single):
        for key, value in global_batch.items():
            np.testing.assert_array_equal(
                np.concatenate([hosts[p][step][key] for p in range(2)]), value, err_msg=key
            )
    _assert_resumes(data, config)


def test_record_grouped_order_shuffles_records_and_keeps_their_examples_together():
    refs = [
        sources.ExampleRef(record, "segmentation", s) for record in range(7) for s in "abc"[: 1 + record % 3]
    ]
    order = pipeline.RecordGroupedOrder(refs, seed=3)
    n = len(refs)
    epochs = [[order[e * n + i] for i in range(n)] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(refs)  # each epoch is every example once
        records = [ref.record for ref in epoch]
        runs = [r for i, r in enumerate(records) if i == 0 or records[i - 1] != r]
        assert sorted(runs) == list(range(7))  # one run per record: its examples are adjacent, in order
        for record in range(7):
            assert [ref.subject for ref in epoch if ref.record == record] == list("abc"[: 1 + record % 3])
    assert epochs[0] != epochs[1] != epochs[2]  # a new order of records each epoch
    assert [pipeline.RecordGroupedOrder(refs, seed=3)[i] for i in range(2 * n)] == epochs[0] + epochs[1]
    assert [pipeline.RecordGroupedOrder(refs, seed=4)[i] for i in range(n)] != epochs[0]


def test_group_by_record_puts_one_images_questions_in_one_batch_and_resumes(data):
    _, _, tokenizer = data
    config = {"weights": {"segmentation": 1.0}, "group_by_record": "segmentation"}
    batch = next(iter(_dataset(data, config)))
    asked = [tokenizer.decode(row.tolist()) for row in batch["src"]]
    # Structures come in the records' order (left lung, right lung, heart[, pneumothorax]), record by record.
    order = [next(s for s in segmentation.STRUCTURES if s in text) for text in asked]
    starts = [i for i, s in enumerate(order) if s == "left lung"]
    assert len(starts) >= 2
    assert order[starts[0] : starts[0] + 3] == ["left lung", "right lung", "heart"]
    _assert_resumes(data, config)
    with pytest.raises(ValueError, match=r"group_by_record: unknown task families \['segmentaton'\]"):
        pipeline.PipelineConfig(group_by_record="segmentaton")
