"""Anomaly detectors and their fusion into one anomaly map and image score.

- :mod:`.residual`: what the fit G(z) cannot explain (the closed-form mask, the residual map, phi, the score).
- :mod:`.texture`: local texture statistics of stationary textures, fitted on clean crops.
- :mod:`.segmenter`: a small learned segmenter trained on synthetic anomalies in clean crops.
- :mod:`.fusion`: the anomaly map and score assembled from all of them, in one place.
"""

#: Every detector by name, in the order their maps join (the residual first). Importing this module loads no torch.
DETECTORS = ("residual", "texture", "learned")
