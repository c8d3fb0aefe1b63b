"""Write a prior that takes its generator and discriminator from a newly trained prior and keeps, from an existing
prior of the same architecture, the detectors that read the input only (the texture statistics, the learned
segmenter and the context model) and its settings. What depends on the generator is left out to be calibrated
again: the encoder, lam, the score threshold, the fusion (the residual's clean tails) and the triage.

Used to retrain brick-64's GAN without retraining its segmenter, whose retraining variance alone moves the
held-out detection by about 0.04 (docs/history/design-log.md), so that a comparison isolates the generator.

Usage: python scripts/swap_generator.py NEW_GAN.safetensors EXISTING_PRIOR OUT.safetensors
       then calibrate OUT as scripts/ship_brick_flip.sh does: lam (rgi calibrate --rounds 6), the encoder
       (scripts/train_encoders.py --dir), the fusion and thresholds (rgi calibrate --rounds 0 --fusion-images 64)
"""

from __future__ import annotations

import sys

from rgi_core.priors import load_prior, save_prior, update_metadata

# defaults that depend on the generator (or on the encoder, which depends on it): calibrated again
GENERATOR_BOUND = ("encoder", "fusion", "triage", "calibration", "lam", "score_threshold")


def main(new_gan: str, existing: str, out: str) -> int:
    new, old = load_prior(new_gan), load_prior(existing)
    if new.spec != old.spec:
        raise SystemExit(f"architectures differ: {new.spec} against {old.spec}")
    defaults = {k: v for k, v in old.defaults.items() if k not in GENERATOR_BOUND}
    save_prior(out, new.generator, new.discriminator, name=old.meta.get("name", old.name),
               training=new.meta.get("training", {}), defaults=defaults)
    if old.segmenter is not None or old.context is not None:
        update_metadata(out, segmenter=old.segmenter, context=old.context)
    kept = sorted(defaults)
    nets = [n for n, part in (("segmenter nets", old.segmenter), ("context model", old.context)) if part is not None]
    print(f"{out}: generator of {new_gan}; kept from {existing}: {', '.join(kept + nets)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    sys.exit(main(*sys.argv[1:]))
