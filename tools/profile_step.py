"""Where a training run's step spends its time: the jitted train step timed on one real batch of each task
family of a run's data, and optionally one profiled round with the time of every XLA operation attributed to
the source line that produced it (through the stack frames XLA keeps in the optimised HLO).

Run from the repository root on a workdir that `imtcxr train` has set up (its config, tokenizer and data):

    .venv/bin/python -m tools.profile_step --workdir runs/phantom_tiny
    .venv/bin/python -m tools.profile_step --workdir runs/phantom_tiny --families classification --profile

Prints, per family, the step's median milliseconds over `--rounds` rounds and the median weighted by the
config's batch mix (`data.weights`); with `--profile` (one family at a time: XLA numbers its fused operations
per program), the busiest source lines and operations of the last round. The parameters are freshly
initialised, not the run's: a step's cost does not depend on their values. This is a developer's tool for
finding what to change; `tools/bench/train.py` holds the benchmarks against a PyTorch peer.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from imtcxr_jax.tasks.common import TASK_FAMILIES as FAMILIES

PACKAGE = Path(__file__).resolve().parents[1] / "imtcxr_jax"


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, type=Path, help="a run folder of `imtcxr train`")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of each family each)")
    parser.add_argument("--profile", action="store_true", help="attribute the last round's time to source")
    parser.add_argument("--top", type=int, default=20, help="lines of each profile table")
    args = parser.parse_args(argv)
    if args.profile and len(args.families) != 1:
        parser.error("--profile needs one family (--families NAME): XLA numbers operations per program")
    if args.rounds < 1:
        parser.error("--rounds: expected at least 1")
    return args


def _batches_by_family(config, workdir: Path, families: list[str]) -> tuple[dict, object]:
    """One real batch per family from the run's data, and the run's tokenizer."""
    from imtcxr_jax.data.pipeline import make_train_dataset
    from imtcxr_jax.train import loop

    train_source, _ = loop.prepare_data(config, workdir)  # finds the run's data, generates nothing new
    records, images = loop.load_data(train_source)
    tokenizer = loop.prepare_tokenizer(config, workdir, records)
    stream = iter(make_train_dataset(records, images, tokenizer, config.data, seed=config.seed))
    batches: dict[str, dict] = {}
    for _ in range(1000):
        batch = next(stream)
        family = FAMILIES[int(batch["task"][0])]
        if family in families:
            batches.setdefault(family, batch)
        if len(batches) == len(families):
            return batches, tokenizer
    raise ValueError(f"{workdir}: no batch of {sorted(set(families) - set(batches))} in 1000 batches")


def _stack_frames(hlo: str) -> tuple[dict[str, int], dict[int, list[tuple[str, str, int]]]]:
    """(operation name -> stack frame id, frame id -> [(file, function, line), innermost first])."""
    tables: dict[str, list[str]] = collections.defaultdict(list)
    section = None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
        elif not line.strip():
            section = None
        elif section:
            tables[section].append(line)
    files = {int(i): n.strip('"') for i, n in (row.split(" ", 1) for row in tables["FileNames"])}
    functions = {int(i): n.strip('"') for i, n in (row.split(" ", 1) for row in tables["FunctionNames"])}
    locations = {}
    for row in tables["FileLocations"]:
        m = re.search(r"file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", row)
        locations[int(row.split()[0])] = (files[int(m[1])], functions[int(m[2])], int(m[3]))
    parents = {}
    for row in tables["StackFrames"]:
        m = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", row)
        parents[int(row.split()[0])] = (int(m[1]), int(m[2]))

    def chain(frame: int) -> list[tuple[str, str, int]]:
        out, seen = [], set()
        while frame in parents and frame not in seen:
            seen.add(frame)
            location, frame = parents[frame]
            out.append(locations[location])
        return out

    operations = {
        m[1]: int(m[2])
        for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?stack_frame_id=(\d+)", hlo, re.M)
    }
    return operations, {frame: chain(frame) for frame in set(operations.values())}


def _source_line(frames: list[tuple[str, str, int]]) -> str:
    """The innermost frame in this repository's package (not optax, jax or flax), as path:function:line."""
    for file, function, line in frames:
        path = Path(file)
        if path.is_relative_to(PACKAGE):
            return f"{path.relative_to(PACKAGE.parent)}:{function}:{line}"
    return "(no frame in imtcxr_jax)"


def _attribute(trace_dir: Path, hlo_text: str, top: int) -> None:
    """Print the traced operations' thread time per source line and per operation."""
    trace_file = next(trace_dir.rglob("*.trace.json.gz"))
    events = json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    operations, chains = _stack_frames(hlo_text)
    per_line: collections.Counter[str] = collections.Counter()
    per_operation: collections.Counter[str] = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or threads.get((event["pid"], event["tid"]), "") == "python":
            continue
        if name.startswith(("ThunkExecutor", "Threadpool", "SlinkyThreadPool")):
            continue  # the executor's own spans enclose the operations
        frame = operations.get(name)
        per_line[_source_line(chains[frame]) if frame is not None else "(no stack frame)"] += event["dur"]
        per_operation[name] += event["dur"]
    total = sum(per_line.values())
    print(f"\nthread time of the traced step: {total / 1000:.1f} ms (both threads)")
    print("by source line:")
    for key, micros in per_line.most_common(top):
        print(f"  {micros / 1000:8.1f} ms {100 * micros / total:5.1f}%  {key}")
    print("by operation (optimised HLO names):")
    for name, micros in per_operation.most_common(top):
        shape = re.search(r"^\s*(?:ROOT )?%?" + re.escape(name) + r" = (\S+)", hlo_text, re.M)
        print(f"  {micros / 1000:8.1f} ms  {name}  {shape[1] if shape else ''}")


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    import jax

    from imtcxr_jax.sharding import make_mesh
    from imtcxr_jax.train import loop
    from imtcxr_jax.train.experiment import config_from_json
    from imtcxr_jax.train.optimizer import make_optimizer
    from imtcxr_jax.train.partition import batch_sharding, init_sharded_state

    config = config_from_json((args.workdir / "config.json").read_text())
    batches, tokenizer = _batches_by_family(config, args.workdir, args.families)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    optimizer = make_optimizer(config)
    graphdef, state, shardings, _ = init_sharded_state(
        loop.model_config(config, tokenizer), optimizer, mesh, config.seed
    )
    step_fn = loop.config_train_step(config, graphdef, optimizer, shardings, mesh)
    sharding = batch_sharding(mesh)
    on_device = {f: {k: jax.device_put(v, sharding) for k, v in b.items()} for f, b in batches.items()}
    started = time.perf_counter()
    hlo_text = ""
    if args.profile:  # one family: compile it ahead of time and run that program, whose HLO names the ops
        (family,) = batches
        compiled = step_fn.lower(state, on_device[family]).compile()
        step_fn, hlo_text = compiled, compiled.as_text()

    def run(family: str) -> float:
        nonlocal state
        started = time.perf_counter()
        state, metrics = step_fn(state, on_device[family])
        float(metrics["loss"])  # waits for the step
        return time.perf_counter() - started

    for family in batches:  # compiles each shape (with --profile: runs the compiled one)
        run(family)
    print(
        f"compiled and ran one step of each family in {time.perf_counter() - started:.0f} s", file=sys.stderr
    )
    times: dict[str, list[float]] = {family: [] for family in batches}
    trace_dir = Path(tempfile.mkdtemp(prefix="profile_step_")) if args.profile else None
    for round_index in range(args.rounds):
        profiled = args.profile and round_index == args.rounds - 1
        if profiled:
            jax.profiler.start_trace(str(trace_dir))
        for family in batches:
            times[family].append(run(family))
        if profiled:
            jax.profiler.stop_trace()
    median_ms = {family: 1000 * statistics.median(t) for family, t in times.items()}
    weights = {family: float(config.data.weights[family]) for family in median_ms}
    weighted = sum(weights[f] * median_ms[f] for f in median_ms) / max(sum(weights.values()), 1e-9)
    print(
        json.dumps(
            {"median_ms": {f: round(v, 1) for f, v in median_ms.items()}, "weighted_ms": round(weighted, 1)}
        )
    )
    if args.profile:
        _attribute(trace_dir, hlo_text, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
