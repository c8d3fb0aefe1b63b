"""Train the shipped priors' encoders (rgi_core.priors.encoder) and store each in its prior, changing nothing else.

``rgi train-prior`` trains the encoder at the end of training (``--encoder-steps``) and ``rgi calibrate
--into-prior --encoder-steps`` adds one with a fresh calibration. The shipped priors were trained and calibrated
before the encoder existed; this script adds what ``train-prior`` would have added: an encoder trained on crops of
the prior's own training images (``--crops`` of them, seed 0, the held-out rows y >= 384 excluded as the
calibration's sampler excludes them) and on the generator's samples. It resumes from
``runs/priors/NAME.encoder-checkpoint`` (``DIR/NAME.encoder-checkpoint`` with ``--dir``); at the end it writes the
encoder and ``defaults.encoder`` into the prior file and removes the checkpoint. About 1-2 s a step on one CPU
thread for the 64-px priors (2000 steps: 35-75 min).

Usage: python scripts/train_encoders.py [--steps 2000] [--crops 1024] [--threads 1] [--dir DIR] [NAME ...]
       (default: brick grass gravel digits; the training images are exported to runs/priors/data/NAME-train;
       --dir: where the prior files are, default rgi_core/priors)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from rgi_core.io import builtin
from rgi_core.io.images import read_clean_images
from rgi_core.priors import load_prior, update_metadata
from rgi_core.priors.encoder import EncoderConfig, train_encoder
from rgi_core.priors.training import ImageSampler

ROOT = Path(__file__).resolve().parent.parent
FILES = {"brick": "brick-64", "grass": "grass-64", "gravel": "gravel-64", "digits": "digits-32"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(FILES))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--crops", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ROOT / "runs/priors/data"))
    ap.add_argument("--dir", default=str(ROOT / "rgi_core/priors"), help="where the prior files are")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    default_dir = Path(args.dir).resolve() == (ROOT / "rgi_core/priors").resolve()
    checkpoints = ROOT / "runs/priors" if default_dir else Path(args.dir)  # not inside the package
    for name in args.names:
        path = Path(args.dir) / f"{FILES[name]}.safetensors"
        prior = load_prior(str(path))
        data = Path(args.data) / f"{name}-train"
        if not data.exists():
            builtin.export(name, "train", data)
        records, _ = read_clean_images(str(data), prior.spec.channels, print)
        sampler = ImageSampler([r.pixels for r in records], prior.spec.resolution, "auto", False, 0)
        fit_on = sampler.split(0.25, 0)[0] if name != "digits" else sampler  # as `rgi calibrate --holdout 0.25`
        checkpoint = checkpoints / f"{name}.encoder-checkpoint"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        encoder, record = train_encoder(
            prior.generator, fit_on.sample(args.crops), EncoderConfig(steps=args.steps, seed=0),
            checkpoint=checkpoint, log=lambda s, v, n=name: print(f"{n}: encoder step {s}: loss {v:.4f}",
                                                                  file=sys.stderr, flush=True))
        record["source"] = ("the training digits" if name == "digits"
                            else "crops of the training split (the calibration's held-out rows excluded)")
        update_metadata(path, encoder=encoder, defaults={**prior.defaults, "encoder": record})
        checkpoint.unlink(missing_ok=True)
        print(f"{name}: encoder stored ({record['steps']} steps, latent loss {record['latent_loss']:.4f}, "
              f"reconstruction loss {record['reconstruction_loss']:.4f}, {record['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
