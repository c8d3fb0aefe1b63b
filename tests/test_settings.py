"""One resolution of settings (rgi_core.settings.resolve): its precedence, a prior left untouched, and the catalog
config hashes of existing catalogs pinned, so reruns still skip done work."""

from __future__ import annotations

import copy
import json

import pytest

from flows.blocks import RgiCleaningSettings
from flows.options import CleanOptions
from rgi_core.calibration import CALIBRATION_KIND
from rgi_core.priors import load_prior
from rgi_core.settings import resolve

# Written by the cleaning options as they were before settings were resolved in one place (the same values are in
# catalogs cleaned then): a change here recomputes every catalogued image. Those catalogs solved every image: the
# same path is --full-solve today (triage and adaptive stopping, on by default, are other paths, other hashes).
# dgp's are those of the official per-task schedule, its default since (results changed, so the hashes did; the
# older path is schedule="ours", whose hash is pinned in tests/test_config.py).
PINNED = {
    # brick-64's: its generator retrained with flips came with a new lam (docs/design.md), so its results and
    # hashes changed (rrgi_50 sets lam itself); the catalogs cleaned before had 4f9053be10b4f917, 803a286529ef0038
    # and 27d7f86c0c368036
    "brick-64": {"rgi": "9c90c91698bbb1b1", "rrgi_50": "ee5404ec04f6e048", "mse_tile": "9c573b100c4a6c20",
                 "dgp": "65d8bf169e049eac"},
    "grass-64": {"rgi": "f80b422bd7311992", "rrgi_50": "ee5404ec04f6e048", "mse_tile": "2524c2de87d2f17f",
                 "dgp": "b314f80a0f6e8f85"},
    "gravel-64": {"rgi": "173607ecfb55873e", "rrgi_50": "ee5404ec04f6e048", "mse_tile": "9920f7019e94d9c6",
                  "dgp": "cb153b1fc6d2f21c"},
    # digits-32's rgi: its restoration stage (restore_lam, docs/design.md) is a new path, so a new hash; the stage
    # at lam / 8 from step 450 of the 2000 changed its results again (before: 08c739ad1b0d997f at lam / 4 from 1500).
    # Its map read at level 0.4 (map_level, every method's anomaly map) changed all four (before: 4cfaf3d92a4c3f7c,
    # 70079889221dbdcf, c27435fd2cfdb7c5, 4bdcec0c887bd5b0)
    "digits-32": {"rgi": "fba22e8847807fb8", "rrgi_50": "ec54640c54c6017b", "mse_tile": "40714959234c6fc8",
                  "dgp": "c54e73831dbdbb0c"},
}
FULL = dict(full_solve=True)
OPTIONS = {"rgi": CleanOptions(**FULL), "rrgi_50": CleanOptions(method="rrgi", iterations=50, lam=0.2, **FULL),
           "mse_tile": CleanOptions(method="mse", sizing="tile", **FULL),
           "dgp": CleanOptions(method="dgp", n_init=10, **FULL)}


@pytest.fixture(scope="module")
def brick():
    return load_prior("brick-64", device="cpu")


@pytest.fixture
def calibration_file(tmp_path, brick):
    doc = {"kind": CALIBRATION_KIND, "lam": 0.03, "score_threshold": 0.4, "map_threshold": 0.5,
           "prior_id": brick.prior_id}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_config_hashes_of_existing_catalogs_are_unchanged(name):
    prior = load_prior(name, device="cpu")
    assert {k: o.config_hash(prior) for k, o in OPTIONS.items()} == PINNED[name]
    # at the defaults another path (adaptive stopping on; the texture priors' triage)
    assert CleanOptions().config_hash(prior) != PINNED[name]["rgi"]


def test_calibrated_and_block_hashes_are_unchanged(brick, calibration_file):
    assert CleanOptions(calibration=calibration_file, **FULL).config_hash(brick) == "5710df00f6ea0cc6"
    assert CleanOptions(calibration=calibration_file, lam=0.07, **FULL).config_hash(brick) == "d316f13a41b188b7"
    assert CleanOptions(**FULL).config_hash(brick, {"lam": 0.011, "score_threshold": 0.3}) == "f5f554774b7f9d6b"


def test_precedence_option_over_calibration_over_block_over_prior_over_fallback(brick):
    cal = {"lam": 0.03, "score_threshold": 0.4, "map_threshold": 0.6}
    block = {"lam": 0.02, "score_threshold": 0.2, "map_sigma": 2.0, "sizing": "resize"}
    assert resolve(brick, overrides={"lam": 0.07}, calibration=cal, prior_defaults=block).config.lam == 0.07
    s = resolve(brick, overrides={"lam": None}, calibration=cal, prior_defaults=block)
    assert (s.config.lam, s.score_threshold, s.map_threshold) == (0.03, 0.4, 0.6)
    s = resolve(brick, prior_defaults=block)
    assert (s.config.lam, s.score_threshold, s.config.map_sigma, s.sizing) == (0.02, 0.2, 2.0, "resize")
    s = resolve(brick)
    d = brick.defaults
    assert (s.config.lam, s.score_threshold, s.config.map_sigma, s.sizing) == (d["lam"], d["score_threshold"],
                                                                            d["map_sigma"], "tile")  # stored as fit
    assert s.config.score_topk == 0.01 and s.map_threshold is None and not s.calibrated  # a fallback; no file
    assert resolve(brick, sizing="resize").sizing == "resize"


def test_nothing_mutates_a_loaded_prior(brick, calibration_file):
    before = copy.deepcopy(brick.meta)
    opts = RgiCleaningSettings(calibration={"lam": 0.2}, n_starts=2).options(calibration=calibration_file)
    opts.settings(brick, {"lam": 0.5, "score_threshold": 0.0})
    resolve(brick, "rrgi", overrides={"iterations": 3}, prior_defaults={"mask_tv": 0.3})
    assert brick.meta == before


def test_the_settings_block_and_the_cli_share_the_options_model():
    from flows.cli import build_parser
    from flows.options import SolveOptions

    assert set(SolveOptions.model_fields) <= set(RgiCleaningSettings.model_fields)
    assert set(SolveOptions.model_fields) <= set(CleanOptions.model_fields)
    clean = next(a for a in build_parser()._subparsers._group_actions[0].choices["clean"]._actions
                 if a.dest == "batch_size")
    assert clean.help.startswith(CleanOptions.model_fields["batch_size"].description.rstrip("."))
    args = build_parser().parse_args(["clean", "src", "--catalog", "cat", "--n-starts", "3", "--lambda", "0.2"])
    from flows.options import options_from_args

    opts = options_from_args(args)
    assert (opts.n_starts, opts.lam, opts.batch_size, opts.sizing) == (3, 0.2, 16, "auto")
    for flags, sizing in ((["--tile"], "tile"), (["--resize"], "resize"), (["--sizing", "tile"], "tile")):
        args = build_parser().parse_args(["clean", "src", "--catalog", "cat", *flags])
        assert options_from_args(args, fit=args.fit).sizing == sizing  # fit: unset, the deprecated name


def test_model_id_covers_exactly_the_parts_a_result_reads(brick, tmp_path):
    import dataclasses

    import torch

    from rgi_core.priors import load_prior as load
    from rgi_core.priors import shipped_priors, update_metadata

    def ids(prior):
        return {m: resolve(prior, m).model_id(prior) for m in ("rgi", "mse", "dgp")}

    base = ids(brick)
    assert len(set(base.values())) == 3  # mse reads neither detector, dgp reads the discriminator too
    # A note and another calibration record in the file: a new prior_id, the same model_id.
    path = tmp_path / "noted.safetensors"
    path.write_bytes(shipped_priors()["brick-64"].read_bytes())
    update_metadata(path, note="re-exported", defaults={**brick.defaults, "calibration": {"source": "elsewhere"}})
    noted = load(str(path), device="cpu")
    assert noted.prior_id != brick.prior_id and ids(noted) == base
    # A new score threshold changes is_anomalous: every method's rows are recomputed.
    rethresholded = dataclasses.replace(brick, meta={**brick.meta, "defaults": {**brick.defaults,
                                                                                 "score_threshold": 0.9}})
    assert all(ids(rethresholded)[m] != base[m] for m in base)
    # Other texture statistics: the methods that fuse them only.
    stats = dict(brick.defaults["texture_stats"], version=-1)
    retextured = dataclasses.replace(brick, meta={**brick.meta, "defaults": {**brick.defaults, "texture_stats": stats}})
    changed = ids(retextured)
    assert changed["mse"] == base["mse"] and changed["rgi"] != base["rgi"] and changed["dgp"] != base["dgp"]
    # Other generator weights: everything.
    g = load("brick-64", device="cpu")
    with torch.no_grad():
        next(g.generator.parameters()).add_(1e-3)
    assert all(ids(g)[m] != base[m] for m in base)


def test_fit_is_still_accepted_as_the_deprecated_name_of_sizing(brick):
    with pytest.warns(DeprecationWarning, match="sizing"):
        assert CleanOptions(fit="tile").sizing == "tile"
    with pytest.warns(DeprecationWarning, match="sizing"):
        assert RgiCleaningSettings(fit="resize").options().sizing == "resize"  # a block saved with fit
    with pytest.warns(DeprecationWarning, match="sizing"):
        assert resolve(brick, fit="resize").sizing == "resize"
    # Defaults may store it under either name; the shipped texture priors keep "fit" (their ids hash the file).
    assert "fit" in brick.defaults and resolve(brick).sizing == "tile"
    assert resolve(brick, prior_defaults={"fit": "resize"}).sizing == "resize"
    assert resolve(brick, prior_defaults={"sizing": "resize"}).sizing == "resize"
