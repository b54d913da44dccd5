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
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from imtcxr_jax.evaluate import evaluate_during_training
    from imtcxr_jax.train.loop import train

    last = train(config, args.workdir, evaluate_fn=evaluate_during_training)
    print(json.dumps(last))
    return 0
