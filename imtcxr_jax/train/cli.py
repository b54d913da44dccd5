"""`imtcxr train --config CONFIG --workdir W [--config.KEY=VALUE ...]`: train (or resume) in W."""

from __future__ import annotations

import argparse
import json
import logging

from imtcxr_jax.train.experiment import load_config


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imtcxr train", description=__doc__)
    parser.add_argument("--config", required=True, help="experiment file, e.g. configs/phantom_tiny.py")
    parser.add_argument("--workdir", required=True, help="run folder; an existing one is resumed")
    # Multi-host (imtcxr_jax/train/distributed.py): all three or none; SLURM and Cloud TPU need none.
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run")
    parser.add_argument("--num-processes", type=int, help="processes in the run")
    parser.add_argument("--process-id", type=int, help="this process's index, 0..N-1")
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
    except ValueError as error:
        parser.error(str(error))
    # force: importing orbax already configured the root logger (absl calls basicConfig), at WARNING
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    from imtcxr_jax.train import distributed

    # Before anything touches a device: joining a multi-host run must precede JAX's backend start-up.
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as error:
        parser.error(str(error))
    from imtcxr_jax.evaluate import evaluate_during_training, print_scores
    from imtcxr_jax.train.loop import train

    last = train(config, args.workdir, evaluate_fn=evaluate_during_training)
    scores = {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")}
    if scores:
        print(f"held-out scores at step {last['step']}:")
        print_scores(scores)
    print(json.dumps(last))
    return 0
