"""Configs: frozen, typed, serialisable into run parameters, with validated values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rgi_core.inversion.config import CONFIGS, DGPConfig, RRGIConfig, config_for_prior, config_from_dict, make_config


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_round_trip_through_json(method):
    cfg = make_config(method, iterations=7, lam=0.3)
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.method == method
    assert again.config_hash() == cfg.config_hash()


def test_hash_changes_with_results_but_not_with_device():
    cfg = make_config("rgi")
    assert cfg.config_hash() != cfg.replace(lam=0.2).config_hash()
    assert cfg.config_hash() != make_config("rrgi").config_hash()
    assert cfg.config_hash() == cfg.replace(device="cpu").config_hash()
    # multi-start: a single start ignores start_iterations; more starts than candidates are capped at n_init
    assert cfg.config_hash() == cfg.replace(start_iterations=50).config_hash()
    assert cfg.config_hash() != cfg.replace(n_starts=4).config_hash()
    assert cfg.replace(n_starts=4).config_hash() == cfg.replace(n_starts=4, start_iterations=250).config_hash()
    assert cfg.replace(n_init=2, n_starts=4).config_hash() == cfg.replace(n_init=2, n_starts=2).config_hash()
    # adaptive stopping: off (0) ignores the window; on, both count
    off = cfg.replace(stop_tol=0.0)
    assert off.config_hash() == off.replace(stop_window=50).config_hash()
    assert off.config_hash() != cfg.config_hash()
    assert cfg.config_hash() != cfg.replace(stop_window=50).config_hash()
    # precision: float32 and TF32 off leave the hash as it was; bfloat16 autocast and TF32 change results
    assert cfg.config_hash() == cfg.replace(precision="fp32", tf32=False).config_hash()
    hashes = {cfg.config_hash(), cfg.replace(precision="bf16").config_hash(), cfg.replace(tf32=True).config_hash()}
    assert len(hashes) == 3
    with pytest.raises(ValueError, match="precision"):
        cfg.replace(precision="fp16")


def test_hash_of_an_unchanged_config_survives_new_fields():
    """Catalog rows are matched by the hash of the config the pipeline builds (``config_for_prior``): a field that
    changes nothing at its default must not change it, or every nightly run after an upgrade re-cleans the whole
    dataset. Pinned from the code as it was when the hash was introduced (and when priors gained defaults). Those
    runs solved every image to the end: the same path is adaptive stopping off (``stop_tol=0``), which is on by
    default since (results change, so the hash does)."""
    assert config_for_prior("rgi", {}, stop_tol=0.0).config_hash() == "0d80602b708caa02"
    assert config_for_prior("rrgi", {}, lam=0.2, iterations=50, stop_tol=0.0).config_hash() == "006166dcd5a2897e"
    meta = {"lam": 0.04, "map_sigma": 1.0, "mask_tv": 0.06, "mask_tv_until": 0.75, "score_threshold": 0.5}
    pinned = {"mse": "7cef786f03a1f47a", "rgi": "4757117636345b4f", "rrgi": "33d6657ecbe21803",
              "dgp": "5022bf07c704013a"}
    # those DGP rows ran rgi's own schedule, schedule="ours" (the official per-task schedule is the default)
    assert {m: config_for_prior(m, meta, stop_tol=0.0, **({"schedule": "ours"} if m == "dgp" else {})).config_hash()
            for m in pinned} == pinned


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_config("rgi").lam = 1.0  # type: ignore[misc]


def test_paper_defaults():
    assert make_config("rgi").lr_z == 0.1 and make_config("rgi").iterations == 2000
    assert RRGIConfig().lr_theta == 1e-5
    assert DGPConfig().latent_reg == 0.02 and DGPConfig().n_init == 500
    # Unset fields the prior may calibrate; without its value: the paper's element-wise mask (no TV), exact maps.
    assert make_config("rgi").mask_tv is None and config_for_prior("rgi", {}).mask_tv == 0.0
    assert config_for_prior("rgi", {}).map_sigma == 0.0 and config_for_prior("dgp", {}).score_topk == 0.01


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown method 'xyz'"):
        make_config("xyz")
    with pytest.raises(ValueError, match="no field"):
        make_config("mse", lr_mask=0.1)
    with pytest.raises(ValueError, match="iterations"):
        make_config("rgi", iterations=-1)
    with pytest.raises(ValueError, match="finetune_from"):
        make_config("rrgi", finetune_from=2.0)
    with pytest.raises(ValueError, match="n_starts"):
        make_config("rgi", n_starts=0)
    with pytest.raises(ValueError, match="start_iterations"):
        make_config("rgi", n_starts=2, start_iterations=-1)
    with pytest.raises(ValueError, match="fidelity"):
        make_config("rgi", fidelity="l3")
    with pytest.raises(ValueError, match="stop_tol"):
        make_config("rgi", stop_tol=-0.1)
    with pytest.raises(ValueError, match="stop_tol"):
        make_config("rgi", stop_tol=float("nan"))
    with pytest.raises(ValueError, match="stop_window"):
        make_config("rgi", stop_tol=0.01, stop_window=0)
    with pytest.raises(ValueError, match="mask_tv must"):
        make_config("rgi", mask_tv=-0.1)
    with pytest.raises(ValueError, match="mask_tv_until"):
        make_config("rrgi", mask_tv_until=1.5)


def test_none_overrides_keep_defaults():
    assert make_config("rgi", lam=None, iterations=None) == make_config("rgi")


def test_prior_defaults_sit_between_paper_defaults_and_overrides():
    from rgi_core.inversion.config import config_for_prior

    meta = {"lam": 0.02, "map_sigma": 1.0, "score_threshold": 0.4, "calibration": {"images": 8}}
    cfg = config_for_prior("rgi", meta)
    assert cfg.lam == 0.02 and cfg.map_sigma == 1.0 and cfg.iterations == 2000
    cfg = config_for_prior("rrgi", meta, lam=0.3, map_sigma=None, iterations=50)
    assert cfg.lam == 0.3 and cfg.map_sigma == 1.0 and cfg.iterations == 50
    assert config_for_prior("mse", {}).map_sigma == 0.0
    # A default only mask methods have (mask_tv) reaches rgi/rrgi and is skipped for mse/dgp.
    meta = {"lam": 0.02, "mask_tv": 0.1, "mask_tv_until": 0.75}
    assert config_for_prior("rrgi", meta).mask_tv == 0.1 and config_for_prior("rgi", meta).mask_tv_until == 0.75
    assert config_for_prior("mse", meta).lam == 0.02 and not hasattr(config_for_prior("dgp", meta), "mask_tv")
