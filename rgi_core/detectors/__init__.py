"""Anomaly detectors and their fusion into one anomaly map and image score.

- :mod:`.residual`: what the fit G(z) cannot explain (the closed-form mask, the residual map, phi, the score).
- :mod:`.texture`: local texture statistics of stationary textures, fitted on clean crops.
- :mod:`.segmenter`: a small learned segmenter trained on synthetic anomalies in clean crops.
- :mod:`.context`: a context model that predicts each pixel from its surround (read by the triage only).
- :mod:`.fusion`: the anomaly map and score assembled from all of them, in one place.
"""

#: The detectors whose maps join a solved image's map and score, in that order (the residual first); ``--detectors``
#: chooses among them. Importing this module loads no torch.
SCORING_DETECTORS = ("residual", "texture", "learned")
#: Every detector by name: the scoring ones, then ``context``, which the triage alone reads.
DETECTORS = (*SCORING_DETECTORS, "context")
