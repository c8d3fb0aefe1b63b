"""Triage: the full solve only for the images the detectors that read the image find suspect."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rgi_core import invert
from rgi_core.detectors.fusion import Fusion, combine, fusion_of, relevel, surprise
from rgi_core.evaluation.families import apply_family_batch
from rgi_core.evaluation.labelled import random_crops
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.operators import Identity
from rgi_core.inversion.products import detector_maps
from rgi_core.inversion.triage import Triage, switch_triage_of, triage_of
from rgi_core.io import builtin
from rgi_core.priors import load_prior
from rgi_core.settings import resolve


def _clean_maps(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"residual": torch.rand((n, 1, 8, 8), generator=g), "texture": torch.rand((n, 1, 8, 8), generator=g),
            "learned": torch.rand((n, 1, 8, 8), generator=g)}


def test_threshold_sends_the_keep_share_of_the_clean_images_to_the_full_solve():
    g = torch.Generator().manual_seed(0)
    maps = _clean_maps(50, g)
    fusion = Fusion.fit(maps, rule="fisher")
    triage = Triage.fit(fusion, maps, keep=0.2)
    assert triage.detectors == ("learned", "texture")  # the residual needs a solve: not a triage detector
    score = triage.scores(fusion, maps)[1]
    # torch.quantile at 0.8 of 50 distinct values falls between the 40th and 41st: 10 lie above it
    assert int((score > triage.threshold).sum()) == 10
    assert torch.equal(score, fusion.fuse({"texture": maps["texture"], "learned": maps["learned"]})[1])
    assert Triage.from_dict(triage.to_dict()) == triage
    with pytest.raises(ValueError, match="keep"):
        Triage.fit(fusion, maps, keep=0.0)
    with pytest.raises(ValueError, match="reads the image"):
        Triage.fit(Fusion.fit({"residual": maps["residual"]}), maps)
    with pytest.raises(ValueError, match="learned"):
        triage.scores(fusion, {"texture": maps["texture"]})
    # a triage is read only with the fusion it was fitted on
    assert triage_of({"triage": triage.to_dict()}) is None
    assert triage_of({"triage": triage.to_dict(), "fusion": fusion.to_dict()}) == triage


def test_a_miss_target_lowers_the_threshold_to_that_quantile_of_the_flagged_defects():
    """Defective crops: the residual is sure of all 40 (the full score flags them), the triage detectors of only
    some. With miss 0.1 the threshold is the 0.1 quantile of the flagged crops' triage scores, so 4 of 40 fall
    at or below it; crops the full score does not flag play no part; the keep threshold caps it."""
    g = torch.Generator().manual_seed(1)
    clean = _clean_maps(50, g)
    fusion = Fusion.fit(clean, rule="fisher")
    keep = Triage.fit(fusion, clean, keep=0.2)
    bad = _clean_maps(60, g)
    bad["residual"][:40] = 0.999  # flagged by the full score; the last 20 are clean-like and not flagged
    bad["texture"][:40] = torch.linspace(0.2, 0.999, 40)[:, None, None, None].expand(40, 1, 8, 8)
    threshold = 5.0  # the full score: the 40 sure crops are far over it, the clean-like ones under it
    full = fusion.surprises(bad)[0]
    assert bool((full[:40] > threshold).all()) and not bool((full[40:] > threshold).any())
    missed = Triage.fit(fusion, clean, 0.2, bad, threshold, miss=0.1)
    triage = fusion.surprises({k: bad[k] for k in ("learned", "texture")})[0].double()
    assert missed.threshold == pytest.approx(float(torch.quantile(triage[:40], 0.1)))
    assert missed.threshold < keep.threshold and int((triage[:40] <= missed.threshold).sum()) == 4
    assert missed.record["flagged"] == 40 and missed.record["keep_threshold"] == keep.threshold
    assert Triage.fit(fusion, clean, 0.2, bad, threshold, miss=0.99).threshold == keep.threshold  # the cap
    with pytest.raises(ValueError, match="miss target"):
        Triage.fit(fusion, clean, 0.2, None, threshold, miss=0.1)


def test_triage_is_on_where_the_prior_calibrated_it():
    brick, digits = load_prior("brick-64"), load_prior("digits-32")
    assert triage_of(brick.defaults) is not None and triage_of(digits.defaults) is None
    assert config_for_prior("rgi", brick.defaults).triage is True
    assert config_for_prior("rrgi", brick.defaults).triage is True
    assert config_for_prior("mse", brick.defaults).triage is False  # the residual-only baseline
    # digits-32 has no detector that reads the image, so no triage before the solve; its switch triage turns it on
    assert switch_triage_of(digits.defaults) is not None and switch_triage_of(brick.defaults) is None
    assert config_for_prior("rgi", digits.defaults).triage is True
    assert config_for_prior("rgi", brick.defaults, triage=False).triage is False
    # results of the two paths have different config hashes; a recalibrated threshold, another model id
    on, off = resolve(brick), resolve(brick, overrides={"triage": False})
    assert on.config_hash() != off.config_hash() and on.model_id(brick) != off.model_id(brick)


def test_triaged_images_keep_their_pixels_and_the_suspects_get_the_full_solve():
    prior = load_prior("brick-64")
    region = torch.from_numpy(builtin.texture("brick", "eval"))
    clean = random_crops(region, 6, 64, 11)
    bad, _ = apply_family_batch(random_crops(region, 3, 64, 12), "grain", seed=3)
    x = torch.cat([clean, bad])
    cfg = config_for_prior("rgi", prior.defaults, iterations=20, n_init=16, device="cpu")
    out = invert(x, prior, cfg)
    triaged = torch.tensor([d.triaged for d in out.diagnostics])
    assert triaged[:6].sum() >= 3 and not triaged[6:].any()  # most clean crops triaged, every grainy one solved
    t, fusion = triage_of(prior.defaults), fusion_of(prior.defaults)
    assert t is not None and fusion is not None
    # a triaged image: its own pixels, no mask, the detectors' score (at most the threshold), no steps
    assert torch.equal(out.restored[triaged], x[triaged]) and not out.mask[triaged].any()
    assert not out.phi[triaged].any() and (out.score[triaged] <= t.threshold).all()
    assert all(d.iterations == 0 and not d.losses for d, f in zip(out.diagnostics, triaged, strict=True) if f)
    # the suspects: exactly the full solve of those images
    full = invert(x[~triaged], prior, cfg.replace(triage=False))
    for f in ("restored", "mask", "anomaly_map", "score", "latent"):
        torch.testing.assert_close(getattr(out, f)[~triaged], getattr(full, f), atol=0, rtol=0)
    # a map level reads the triaged rows' maps as it reads the solved ones'
    shifted = invert(x, prior, cfg.replace(map_level=0.25))
    torch.testing.assert_close(shifted.anomaly_map, relevel(out.anomaly_map, 0.25), atol=1e-6, rtol=0)
    # the split is the triage score against the threshold
    fast = t.scores(fusion, detector_maps(prior, cfg, Identity(), x, triage=True))[1]
    assert torch.equal(triaged, fast <= t.threshold)
    # a detector the triage reads switched off: every image solved
    no_texture = cfg.replace(texture_map=False, iterations=5, n_init=4)
    assert not any(d.triaged for d in invert(x[:2], prior, no_texture).diagnostics)
    # a prior without a triage: every image solved
    plain = dataclasses.replace(prior, meta={**prior.meta, "defaults": {
        k: v for k, v in prior.defaults.items() if k != "triage"}})
    assert not any(d.triaged for d in invert(x[:2], plain, config_for_prior("rgi", plain.defaults, iterations=5,
                                                                                n_init=4, device="cpu")).diagnostics)


def test_the_catalog_says_which_path_produced_each_row(prefect_api, tmp_path):
    """Through the clean flow with the shipped brick prior: clean crops triaged (their pixels kept, no objective),
    a grainy crop solved; the next run with --no-triage is another model id, so it solves them all. brick-64's
    triage reads its context model too: every row of a triaged run has the context model's columns, and only the
    triaged rows' score joins it."""
    import fsspec
    import pandas as pd

    from flows.clean import CleanOptions, clean_dataset
    from rgi_core.catalog.sql import query
    from rgi_core.io.images import decode_image, encode_png

    region = torch.from_numpy(builtin.texture("brick", "eval"))
    clean = random_crops(region, 8, 64, 21)
    bad, _ = apply_family_batch(random_crops(region, 1, 64, 22), "grain", seed=5)
    src, cat = tmp_path / "src", tmp_path / "cat"
    src.mkdir()
    for i, x in enumerate([*clean, *bad]):
        (src / f"{'bad' if i == 8 else 'clean'}{i}.png").write_bytes(encode_png(x.numpy()))
    opts = dict(iterations=10, n_init=8, batch_size=8)
    out = clean_dataset(source=str(src), catalog=str(cat), prior="brick-64", options=CleanOptions(**opts))
    rows = pd.read_parquet(cat / "images").set_index("source_uri")
    assert out["images_ok"] == 9
    bad_row = rows[rows.index.str.endswith("bad8.png")].iloc[0]
    assert bad_row.stage == "solve" and bad_row.iterations == 10 and pd.notna(bad_row.final_loss)
    triaged = rows[rows.stage == "triage"]
    assert len(triaged) >= 2 and (triaged.iterations == 0).all()
    assert triaged.final_loss.isna().all() and triaged.converged.isna().all()
    for uri, row in triaged.iterrows():  # the restored image is the input, pixel for pixel
        with fsspec.open(row.restored_uri, "rb") as f, fsspec.open(uri, "rb") as g:
            assert np.array_equal(decode_image(f.read(), 1), decode_image(g.read(), 1))
    # each detector's own columns: a triaged row has no residual; the fused score is their p's joined by the rule
    fusion = fusion_of(load_prior("brick-64").defaults)
    threshold = load_prior("brick-64").defaults["score_threshold"]
    for _, row in rows.iterrows():
        names = ("texture", "learned", "context") if row.stage == "triage" else ("residual", "texture", "learned")
        assert (pd.isna(row.residual_score) and pd.isna(row.residual_p)) == (row.stage == "triage")
        read = ("residual", "texture", "learned", "context")[row.stage == "triage":]  # every detector that ran
        ps = {n: row[f"{n}_p"] for n in read}
        assert all(0 < p <= 1 for p in ps.values()) and all(pd.notna(row[f"{n}_score"]) for n in read)
        joined = float(surprise(combine([torch.tensor(math.log(ps[n]), dtype=torch.float64) for n in names],
                                        fusion.rule)))
        assert joined == pytest.approx(row.anomaly_score, rel=1e-4, abs=1e-5)
        assert list(row.flagged_by) == [n for n in read if -math.log10(ps[n]) > threshold]
    by_texture = query(str(cat), "SELECT count(*) AS n FROM images WHERE list_contains(flagged_by, 'texture')")
    assert int(by_texture.n[0]) == sum("texture" in list(f) for f in rows.flagged_by)
    again = clean_dataset(source=str(src), catalog=str(cat), prior="brick-64",
                          options=CleanOptions(**opts, triage=False))
    assert again["images_ok"] == 9  # not skipped: another path, another config hash
    assert again["config_hash"] != out["config_hash"]
    rows = pd.read_parquet(cat / "images")
    assert (rows[rows.run_id == again["run_id"]].stage == "solve").all()


def test_full_solve_turns_every_lever_off():
    from flows.options import CleanOptions

    brick = load_prior("brick-64")
    cfg = CleanOptions(full_solve=True).settings(brick).config
    assert cfg.triage is False and cfg.stop_tol == 0 and cfg.encoder is False
    defaults = CleanOptions().settings(brick).config
    assert defaults.triage is True and defaults.encoder is True  # brick ships a triage threshold and an encoder
    levers_off = CleanOptions(triage=False, stop_tol=0, encoder=False)
    assert CleanOptions(full_solve=True).config_hash(brick) == levers_off.config_hash(brick)
    with pytest.raises(ValueError, match="full_solve"):
        CleanOptions(full_solve=True, triage=True)
    with pytest.raises(ValueError, match="full_solve"):
        CleanOptions(full_solve=True, stop_tol=0.01)


@pytest.mark.integration  # short solves of 24 brick crops
def test_calibrate_lowers_the_triage_threshold_for_a_miss_target_on_the_fusion_families():
    from rgi_core.calibration import CalibrationConfig, calibrate

    prior = load_prior("brick-64", device="cpu")
    region = torch.from_numpy(builtin.texture("brick", "train"))[:, 384:]
    clean = random_crops(region, 12, 64, seed=3)
    bad, truth = apply_family_batch(random_crops(region, 8, 64, seed=4), "hole", seed=5)
    cfg = CalibrationConfig(rounds=0, iterations=5, n_init=4)
    common = dict(fusion_clean=clean, fusion_families={"hole": (bad, truth)}, triage_keep=0.2)
    plain = calibrate(prior, clean[:4], cfg, **common)["triage"]
    missed = calibrate(prior, clean[:4], cfg, **common, triage_miss=0.0)["triage"]
    assert "miss" not in plain["record"] and missed["record"]["miss"] == 0.0
    assert missed["record"]["keep_threshold"] == pytest.approx(plain["threshold"])
    assert missed["threshold"] <= plain["threshold"]
    if missed["record"]["flagged"]:  # miss 0: at the lowest triage score of the flagged holes
        assert missed["threshold"] == pytest.approx(min(plain["threshold"], missed["record"]["miss_threshold"]))
    with pytest.raises(ValueError, match="fusion_families"):
        calibrate(prior, clean[:4], cfg, fusion_clean=clean, triage_keep=0.2, triage_miss=0.1)
    # read on more crops than the fusion's: the keep share of those crops' triage scores, from no solve
    more = random_crops(region, 40, 64, seed=6)
    read = calibrate(prior, clean[:4], cfg, fusion_clean=clean, triage_keep=0.2, triage_clean=more)
    triage, fusion = Triage.from_dict(read["triage"]), fusion_of(read)
    assert read["fusion"] == calibrate(prior, clean[:4], cfg, fusion_clean=clean, triage_keep=0.2)["fusion"]
    assert triage.record["images"] == 40
    maps = detector_maps(prior, config_for_prior("rgi", prior.defaults, device="cpu"), Identity(), more, triage=True)
    score = triage.scores(fusion, maps)[1]
    assert int((score > triage.threshold).sum()) == 8  # 0.2 of 40 distinct scores


# --------------------------------------------------------------------------- the switch triage (digits-32)

def _digits_with_switch_triage(iterations: int, keep: float, early_step: int = 0, early_keep: float = 0.5):
    """digits-32 with a switch triage fitted on 16 training digits for ``iterations``-step solves (best of 16),
    with an early read after ``early_step`` steps (0: none)."""
    from rgi_core.calibration import fit_switch_triage

    prior = load_prior("digits-32", device="cpu")
    plain = dataclasses.replace(prior, meta={**prior.meta, "defaults": {
        k: v for k, v in prior.defaults.items() if k != "switch_triage"}})
    cfg = config_for_prior("rgi", plain.defaults, iterations=iterations, n_init=16, device="cpu")
    train = torch.from_numpy(builtin.digits("train"))
    st = fit_switch_triage(plain, train[:16], cfg, keep=keep, early_step=early_step, early_keep=early_keep)
    return dataclasses.replace(prior, meta={**prior.meta, "defaults": {**plain.defaults,
                                                                       "switch_triage": st.to_dict()}}), st, train


def test_switch_triage_stops_the_digits_judged_clean_at_the_switch_unrestored():
    from rgi_core.inversion.triage import SwitchTriage

    prior, st, train = _digits_with_switch_triage(40, keep=0.25)
    assert st.switch == 30 and st.keep == 0.25 and st.record["images"] == 16  # 0.75 of 40 steps
    assert SwitchTriage.from_dict(st.to_dict()) == st and switch_triage_of(prior.defaults) == st
    bad, _ = apply_family_batch(train[100:104].clone(), "block_fill", seed=2)
    x = torch.cat([train[40:48], bad])
    cfg = config_for_prior("rgi", prior.defaults, iterations=40, n_init=16, device="cpu")
    assert cfg.triage is True  # on where the prior stores a switch triage
    out, full = invert(x, prior, cfg), invert(x, prior, cfg.replace(triage=False))
    stopped = torch.tensor([d.restoration_skipped for d in out.diagnostics])
    assert 0 < int(stopped.sum()) < len(x)
    # the split is the score at the switch, which is the solve's score: the same with and without the triage
    assert torch.equal(stopped, full.score <= st.threshold)
    for f in ("score", "anomaly_map"):
        torch.testing.assert_close(getattr(out, f), getattr(full, f), atol=0, rtol=0)
    # a stopped digit: the input as restored image, nothing taken from G, the steps up to the switch
    assert torch.equal(out.restored[stopped], x[stopped]) and not out.phi[stopped].any()
    assert all((d.stage, d.iterations) == ("detect", 30) for d, s in zip(out.diagnostics, stopped, strict=True) if s)
    # the others went on alone: their restoration is the full solve's (the batch shrank, the values did not change)
    go = ~stopped
    assert all((d.stage, d.iterations) == ("solve", 40) for d, s in zip(out.diagnostics, go, strict=True) if s)
    for f in ("restored", "mask", "phi", "latent"):
        torch.testing.assert_close(getattr(out, f)[go], getattr(full, f)[go], atol=1e-5, rtol=0)
    # off with the triage, and where the solve switches elsewhere than the threshold was fitted at
    assert not any(d.restoration_skipped for d in full.diagnostics)
    longer = invert(x[:4], prior, cfg.replace(iterations=60))  # switch at 45
    assert all(d.stage == "solve" and d.iterations == 60 for d in longer.diagnostics)
    # another path, another config hash and model id
    on, off = resolve(prior), resolve(prior, overrides={"triage": False})
    assert on.config.triage is True and on.config_hash() != off.config_hash()
    assert on.model_id(prior) != off.model_id(prior)


def test_an_early_read_stops_the_plainest_digits_before_the_switch():
    """An early read after 10 of 40 steps (switch at 30): the digits whose score there is at most its threshold stop
    there, unrestored, with the score of their fit at that step; the others go on exactly as without it."""
    from rgi_core.calibration import inliers
    from rgi_core.inversion.triage import EarlyRead, SwitchTriage

    prior, st, train = _digits_with_switch_triage(40, keep=0.25, early_step=10, early_keep=0.5)
    assert st.switch == 30 and st.early is not None and (st.early.step, st.early.keep) == (10, 0.5)
    assert SwitchTriage.from_dict(st.to_dict()) == st and switch_triage_of(prior.defaults) == st
    bad, _ = apply_family_batch(train[100:104].clone(), "block_fill", seed=2)
    x = torch.cat([train[40:48], bad])
    cfg = config_for_prior("rgi", prior.defaults, iterations=40, n_init=16, device="cpu")
    out = invert(x, prior, cfg)
    # the score after 10 steps of the same solve: every digit stopped at an early read of threshold +inf
    probe = dataclasses.replace(st, threshold=float("inf"), early=EarlyRead(10, float("inf"), 1.0))
    probe_prior = dataclasses.replace(prior, meta={**prior.meta, "defaults": {
        **prior.defaults, "switch_triage": probe.to_dict()}})
    at10 = invert(x, probe_prior, cfg)
    assert all((d.stage, d.iterations) == ("detect", 10) for d in at10.diagnostics)
    early = at10.score <= st.early.threshold
    assert 0 < int(early.sum()) < len(x)
    steps = torch.tensor([d.iterations for d in out.diagnostics])
    assert torch.equal(steps == 10, early)
    # stopped early: the score of the fit at step 10, the input as restored image
    torch.testing.assert_close(out.score[early], at10.score[early], atol=1e-6, rtol=0)
    # every digit's score at the read is in its diagnostics, the ones that went on included
    read = torch.tensor([d.early_score for d in out.diagnostics], dtype=at10.score.dtype)
    torch.testing.assert_close(read, at10.score, atol=1e-6, rtol=0)
    # calibration takes both reads from one solve: its early threshold is the keep quantile of these scores
    fitted_on = invert(train[:16], probe_prior, cfg).score.double()
    inl, _ = inliers(fitted_on, 3.5)
    assert st.early.threshold == pytest.approx(EarlyRead.fit(fitted_on[inl], 0.5, 10).threshold, abs=1e-6)
    assert torch.equal(out.restored[early], x[early]) and not out.phi[early].any()
    assert all(out.diagnostics[i].stage == "detect" for i in early.nonzero().flatten().tolist())
    # the others: the switch triage's solve, as if there were no early read
    without = invert(x, dataclasses.replace(prior, meta={**prior.meta, "defaults": {
        **prior.defaults, "switch_triage": dataclasses.replace(st, early=None).to_dict()}}), cfg)
    assert all(math.isnan(d.early_score) for d in without.diagnostics)  # no early read, no score from it
    go = ~early
    for f in ("score", "restored", "mask", "latent"):
        torch.testing.assert_close(getattr(out, f)[go], getattr(without, f)[go], atol=1e-5, rtol=0)
    assert [d.stage for d, g in zip(out.diagnostics, go, strict=True) if g] == [
        d.stage for d, g in zip(without.diagnostics, go, strict=True) if g]
    # the threshold is the keep quantile of the clean scores at that step, and the read comes before the switch
    e = EarlyRead.fit(torch.arange(1, 21, dtype=torch.float64), keep=0.5, step=100)
    assert int((torch.arange(1, 21) > e.threshold).sum()) == 10
    with pytest.raises(ValueError, match="before the switch"):
        SwitchTriage(1.0, 0.2, 450, early=EarlyRead(450, 1.0, 0.5))
    with pytest.raises(ValueError, match="at least one step"):
        EarlyRead(0, 1.0, 0.5)


def test_switch_triage_threshold_is_the_keep_quantile_of_the_clean_scores_at_the_switch():
    from rgi_core.inversion.triage import SwitchTriage

    scores = torch.arange(1, 21, dtype=torch.float64)  # 20 distinct clean scores
    st = SwitchTriage.fit(scores, keep=0.2, switch=450)
    assert int((scores > st.threshold).sum()) == 4 and st.record == {"images": 20}
    with pytest.raises(ValueError, match="keep"):
        SwitchTriage.fit(scores, keep=0.0, switch=450)
    with pytest.raises(ValueError, match="at least one"):
        SwitchTriage.fit(scores[:0], keep=0.2, switch=450)
    with pytest.raises(ValueError, match="step >= 1"):
        SwitchTriage(1.0, 0.2, 0)


def test_calibrate_stores_a_switch_triage_for_a_prior_with_a_restoration_stage():
    """`rgi calibrate --switch-triage-images N`: the threshold at the switch of `rgi clean`'s solve (2000 steps:
    step 450), fitted on those images; without a restoration stage it is refused."""
    from rgi_core.calibration import CalibrationConfig, calibrate, fit_switch_triage

    prior = load_prior("digits-32", device="cpu")
    train = torch.from_numpy(builtin.digits("train"))
    cfg = CalibrationConfig(rounds=0, iterations=5, n_init=4)
    d = calibrate(prior, train[:4], cfg, triage_keep=0.5, switch_clean=train[200:204])
    st = d["switch_triage"]
    assert st["switch"] == 450 and st["keep"] == 0.5 and st["record"]["images"] == 4
    assert st["record"]["iterations"] == 2000 and d["lam"] == prior.defaults["lam"]
    assert d["calibration"]["lam_rounds"] == prior.defaults["calibration"]["lam_rounds"]  # kept with rounds 0
    assert "switch_triage" not in calibrate(prior, train[:4], cfg)  # not asked: an older one is dropped
    no_stage = config_for_prior("rgi", prior.defaults, iterations=40, restore_lam=0.0)
    with pytest.raises(ValueError, match="restoration stage"):
        fit_switch_triage(prior, train[:2], no_stage, keep=0.2)


def test_the_catalog_says_which_digits_stopped_at_the_switch(prefect_api, tmp_path):
    """Through the clean flow: a prior file with a switch triage for 40-step solves; the rows of the digits it
    stopped say `detect`, keep their input as restored image and report the steps and objective they ran."""
    import shutil

    import fsspec
    import pandas as pd

    from flows.clean import CleanOptions, clean_dataset
    from rgi_core.io.images import decode_image, encode_png
    from rgi_core.priors import shipped_priors, update_metadata

    prior, st, train = _digits_with_switch_triage(40, keep=0.25)
    path = tmp_path / "digits-switch.safetensors"
    shutil.copy(shipped_priors()["digits-32"], path)
    update_metadata(path, defaults=prior.defaults)
    src, cat = tmp_path / "src", tmp_path / "cat"
    src.mkdir()
    for i, x in enumerate(train[60:66]):
        (src / f"d{i}.png").write_bytes(encode_png(x.numpy()))
    out = clean_dataset(source=str(src), catalog=str(cat), prior=str(path),
                        options=CleanOptions(iterations=40, n_init=16, batch_size=8))
    rows = pd.read_parquet(cat / "images")
    assert out["images_ok"] == 6 and set(rows.stage) <= {"detect", "solve"}
    detect = rows[rows.stage == "detect"]
    assert len(detect) >= 1 and (detect.iterations == 30).all() and detect.final_loss.notna().all()
    assert (detect.anomaly_score <= st.threshold + 1e-6).all()
    assert (rows[rows.stage == "solve"].iterations == 40).all()
    for _, row in detect.iterrows():  # the restored image is the input, pixel for pixel
        with fsspec.open(row.restored_uri, "rb") as f, fsspec.open(row.source_uri, "rb") as g:
            assert np.array_equal(decode_image(f.read(), 1), decode_image(g.read(), 1))


def test_a_tiled_image_takes_the_furthest_path_of_its_tiles():
    from rgi_core.cleaning import _stage
    from rgi_core.inversion.results import ImageDiagnostics

    t, d, s = ImageDiagnostics(triaged=True), ImageDiagnostics(restoration_skipped=True), ImageDiagnostics()
    assert (t.stage, d.stage, s.stage) == ("triage", "detect", "solve")
    assert _stage((t, t)) == "triage" and _stage((t, d)) == "detect" and _stage((d, s, t)) == "solve"


def test_cli_calibrate_stores_the_switch_triage_in_the_prior_file(tmp_path):
    """`rgi calibrate --into-prior --rounds 0 --switch-triage-images N` on a copy of digits-32: the lam and the
    score threshold of the 300-step calibration kept as they were measured, a switch triage at step 450 with an
    early read after 100 steps (`--switch-triage-early 100`), which needs the switch triage's crops."""
    import shutil

    from flows.cli import main
    from rgi_core.io.images import encode_png
    from rgi_core.priors import shipped_priors

    path = tmp_path / "digits.safetensors"
    shutil.copy(shipped_priors()["digits-32"], path)
    src = tmp_path / "digits"
    src.mkdir()
    for i, x in enumerate(torch.from_numpy(builtin.digits("train"))[300:306]):
        (src / f"d{i}.png").write_bytes(encode_png(x.numpy()))
    assert main(["calibrate", str(src), "--prior", str(path), "--into-prior", "--images-n", "4", "--iterations", "5",
                 "--n-init", "4", "--rounds", "0", "--fusion-images", "0", "--switch-triage-images", "4",
                 "--switch-triage-early", "100"]) == 0
    d = load_prior(str(path), device="cpu").defaults
    assert d["switch_triage"]["switch"] == 450 and d["switch_triage"]["record"]["images"] <= 4
    assert (d["switch_triage"]["early"]["step"], d["switch_triage"]["early"]["keep"]) == (100, 0.5)
    assert "early_trimmed_images" in d["switch_triage"]["record"]
    assert main(["calibrate", str(src), "--prior", str(path), "--into-prior", "--switch-triage-early", "100"]) == 2
    assert d["lam"] == load_prior("digits-32").defaults["lam"]
    assert d["calibration"]["lam_source"] == "kept from the previous calibration (--rounds 0)"


def test_calibrate_triage_script_finds_the_crops_the_calibration_left_out():
    """scripts/calibrate_triage.py finds which drawn crops a fusion was fitted on (the calibration left some out as
    outliers) by refitting its stored tails, with no solve."""
    import runpy
    from pathlib import Path

    fusion_crops = runpy.run_path(str(Path(__file__).parent.parent / "scripts/calibrate_triage.py"))["fusion_crops"]
    g = torch.Generator().manual_seed(0)
    maps = {k: torch.rand((14, 1, 8, 8), generator=g) for k in ("texture", "learned")}
    keep = torch.ones(14, dtype=torch.bool)
    keep[[3, 9]] = False
    fusion = Fusion.fit({k: v[keep] for k, v in maps.items()})
    assert torch.equal(fusion_crops(fusion, maps, 2), keep)
    assert fusion_crops(fusion, maps, 1) is None  # no single crop left out refits the tails
    assert fusion_crops(fusion, {k: torch.rand((14, 1, 8, 8), generator=g) for k in maps}, 2) is None


def test_an_early_read_stops_the_solved_crops_that_look_clean_after_a_few_steps():
    """brick-64 (no restoration stage) with an early read fitted after 10 steps of a 40-step solve: the solved crops
    whose fused score there is at most its threshold stop, unrestored, with the score of their fit at that step;
    the others go on exactly as without it. The read holds only with the triage on and from the start it was
    fitted on, and it never judges clean a crop its score flags."""
    from rgi_core.calibration import fit_early_read
    from rgi_core.inversion.triage import EarlyRead, early_read_of

    shipped = load_prior("brick-64", device="cpu")
    prior = dataclasses.replace(shipped, meta={**shipped.meta, "defaults": {
        k: v for k, v in shipped.defaults.items() if k not in ("triage", "early_read")}})  # every crop solved
    region = torch.from_numpy(builtin.texture("brick", "train"))
    clean = random_crops(region, 12, 64, seed=5)
    cfg = config_for_prior("rgi", prior.defaults, iterations=40, n_init=16, device="cpu", triage=True)
    # 10 steps leave every crop over the score threshold, so the ceiling is lifted here and tested on its own
    read = fit_early_read(prior, clean[:8], cfg, step=10, keep=0.5, ceiling=float("inf"), trim=0.0)
    # the scores it read are those of a solve that ran 10 steps (on brick a solve's schedule does not depend on
    # its length), and the threshold is their keep quantile
    at10 = invert(clean[:8], prior, cfg.replace(iterations=10, triage=False)).score.double()
    assert read.threshold == pytest.approx(float(torch.quantile(at10, 0.5)), abs=1e-6)
    assert (read.step, read.keep) == (10, 0.5) and read.record["encoder"] is True and read.record["images"] == 8
    assert EarlyRead.from_dict(read.to_dict()) == read
    lower = fit_early_read(prior, clean[:8], cfg, step=10, keep=0.5, ceiling=float(at10.min()) - 1.0, trim=0.0)
    assert lower.threshold == float(at10.min()) - 1.0  # capped: an image the score flags is never judged clean

    with_read = dataclasses.replace(prior, meta={**prior.meta, "defaults": {**prior.defaults,
                                                                            "early_read": read.to_dict()}})
    assert early_read_of(with_read.defaults) == read and early_read_of(prior.defaults) is None
    bad, _ = apply_family_batch(clean[8:].clone(), "thin_lines", seed=3)
    x = torch.cat([clean[8:], bad])
    out = invert(x, with_read, cfg)
    full = invert(x, prior, cfg)  # the same solve without the read
    first = invert(x, prior, cfg.replace(iterations=10, triage=False))
    stopped = torch.tensor([d.restoration_skipped for d in out.diagnostics])
    assert torch.equal(stopped, first.score <= read.threshold) and 0 < int(stopped.sum()) < len(x)
    assert all((d.stage, d.iterations) == ("detect", 10) for d, s in zip(out.diagnostics, stopped, strict=True) if s)
    torch.testing.assert_close(out.score[stopped], first.score[stopped], atol=1e-6, rtol=0)
    assert torch.equal(out.restored[stopped], x[stopped]) and not out.phi[stopped].any()
    read_at = torch.tensor([d.early_score for d in out.diagnostics], dtype=first.score.dtype)
    torch.testing.assert_close(read_at, first.score, atol=1e-6, rtol=0)  # every solved crop's read is recorded
    go = ~stopped
    for f in ("score", "restored", "mask", "latent"):
        torch.testing.assert_close(getattr(out, f)[go], getattr(full, f)[go], atol=1e-5, rtol=0)
    # not with the triage off, nor from another start than the one it was fitted on
    for other in (cfg.replace(triage=False), cfg.replace(encoder=False)):
        assert not any(d.restoration_skipped for d in invert(x[:2], with_read, other).diagnostics)
    # another path, another model id
    assert resolve(with_read).model_id(with_read) != resolve(prior).model_id(prior)


def test_the_crops_added_thresholds_are_read_on_come_after_the_fusions_own(tmp_path):
    """past_fusion_crops: the held-out rows `rgi calibrate --holdout 0.25 --seed 0` drew the fusion's crops from,
    past the fusion's kept and trimmed crops, so a threshold added later is read on crops the fusion never saw."""
    from PIL import Image

    from rgi_core.calibration import past_fusion_crops
    from rgi_core.priors.training import ImageSampler

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (160, 160), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    shipped = load_prior("brick-64", device="cpu")
    fusion = {**shipped.defaults["fusion"], "record": {**shipped.defaults["fusion"]["record"], "images": 5,
                                                        "trimmed": 2}}
    prior = dataclasses.replace(shipped, meta={**shipped.meta, "defaults": {**shipped.defaults, "fusion": fusion}})
    pixels = [torch.from_numpy(a).float().div(255.0)[None] for a in arrays]
    _, held = ImageSampler(pixels, 64, "auto", False, 0).split(0.25, 0)
    fusions_own, after = held.sample(7), held.sample(4)
    got = past_fusion_crops(prior, str(tmp_path)).sample(4)
    torch.testing.assert_close(got, after, atol=1e-6, rtol=0)
    assert not any(torch.equal(g, f) for g in got for f in fusions_own)
    no_fusion = dataclasses.replace(shipped, meta={**shipped.meta, "defaults": {
        k: v for k, v in shipped.defaults.items() if k != "fusion"}})
    with pytest.raises(ValueError, match="no fusion"):
        past_fusion_crops(no_fusion, str(tmp_path))
