"""`rgi evaluate` and `rgi calibrate`: labelled folders, metrics, curves, grids, thresholds the flow accepts."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rgi_core.calibration import conformal_min_images, conformal_threshold, read_calibration
from rgi_core.evaluation import metrics
from rgi_core.evaluation.grids import image_grid
from rgi_core.evaluation.labelled import Labelled, digits_eval_set, export_labelled, items_from_set, load_labelled
from rgi_core.io import builtin
from rgi_core.io.images import encode_png


def rgi(*args: str, api: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if api:
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _decodes(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        return im.size


def _digits_folder(root, n_bad: int = 5, n_clean: int = 3):
    """Held-out digits: n_bad with salt-and-pepper (mask, clean reference), n_clean clean (empty mask)."""
    items = items_from_set(digits_eval_set("salt_pepper", n=n_bad, seed=1))
    ev = torch.from_numpy(builtin.digits("eval"))
    items += [Labelled(f"clean-{i}", ev[100 + i], torch.zeros((1, 32, 32), dtype=torch.bool), ev[100 + i])
              for i in range(n_clean)]
    export_labelled(items, str(root))
    return items


@pytest.mark.integration  # CLI subprocess
def test_evaluate_cli_compares_methods_on_labelled_digits(tmp_path):
    _digits_folder(tmp_path / "data")
    out = tmp_path / "report"
    r = rgi("evaluate", str(tmp_path / "data"), "--prior", "digits-32", "--methods", "rgi,mse", "--out", str(out),
            "--iterations", "200", "--n-init", "16", "--grid", "2", "--paper-protocol")
    assert r.returncode == 0, r.stderr
    assert "| rgi |" in r.stdout and "| mse |" in r.stdout and "pixel AUROC" in r.stdout
    assert "| rgi | residual | 8 |" in r.stdout  # what each detector contributes (digits: the residual alone)
    assert "the RGI paper's protocol" in r.stdout
    doc = json.loads((out / "metrics.json").read_text())
    paper = {p["method"]: p for p in doc["paper_protocol"]}
    assert paper["rgi"]["images"] == 5 and 0 < paper["rgi"]["mask_dice"] <= 1
    assert paper["rgi"]["map_dice"] > paper["mse"]["map_dice"]  # the robust fit's map finds the flipped pixels
    assert [d["detector"] for d in doc["detectors"]] == ["residual", "residual"]
    assert (doc["images"], doc["with_masks"], doc["defective"], doc["with_clean"]) == (8, 8, 5, 8)
    rgi_m, mse_m = doc["methods"]["rgi"], doc["methods"]["mse"]
    for m in (rgi_m, mse_m):
        for key in ("pixel_auroc", "pro", "image_auroc", "max_f1", "mask_iou", "ssim"):
            assert 0.0 <= m[key] <= 1.0, (key, m)
        assert m["images_per_second"] > 0 and m["config"]["iterations"] == 200
        assert m["psnr_db"] > m["psnr_input_db"]  # both restore something from 10-25 % flipped pixels
    # The robust fit ignores the flipped pixels; MSE is dragged towards them.
    assert rgi_m["psnr_db"] > mse_m["psnr_db"] + 3, (rgi_m, mse_m)
    assert rgi_m["ssim"] > mse_m["ssim"], (rgi_m, mse_m)
    assert len(doc["per_image"]) == 8 and set(doc["per_image"][0]) >= {"name", "defective", "rgi", "mse"}
    for name in ("roc.png", "pro.png"):
        w, h = _decodes(out / name)
        assert w > 300 and h > 300
    w, h = _decodes(out / "grid.png")
    assert h > 4 * 96 and w > 6 * 96  # 2 worst + 2 best rows; input, truth, 2 x (restored, map)


@pytest.mark.integration  # CLI subprocess
def test_evaluate_without_masks_reports_na_and_handles_other_sizes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ev = builtin.digits("eval")
    (data / "a.png").write_bytes(encode_png(ev[0]))
    (data / "b_clean.png").write_bytes(encode_png(ev[1]))
    (data / "b.png").write_bytes(encode_png(ev[1]))
    big = torch.nn.functional.interpolate(torch.from_numpy(ev[2])[None], size=(45, 37), mode="bilinear")[0]
    (data / "big.png").write_bytes(encode_png(big.numpy()))
    (data / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "r"
    r = rgi("evaluate", str(data), "--prior", "digits-32", "--methods", "mse", "--out", str(out),
            "--iterations", "5", "--n-init", "2", "--sizing", "tile")
    assert r.returncode == 0, r.stderr
    assert "n/a" in r.stdout and "broken.png" in r.stderr
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["methods"]["mse"]
    assert doc["images"] == 3 and doc["with_masks"] == 0 and len(doc["skipped"]) == 1
    assert m["pixel_auroc"] is None and m["pro"] is None and m["image_auroc"] is None
    assert m["psnr_db"] is not None  # b has a clean reference
    for name in ("roc.png", "pro.png", "grid.png"):
        _decodes(out / name)


def test_load_labelled_separate_masks_folder_and_size_mismatch(tmp_path):
    data, masks = tmp_path / "d", tmp_path / "m"
    data.mkdir()
    masks.mkdir()
    x = torch.rand(1, 9, 11)
    gt = torch.zeros(1, 9, 11)
    gt[:, 2:4, 3:7] = 1
    (data / "x.png").write_bytes(encode_png(x.numpy()))
    (masks / "x.png").write_bytes(encode_png(gt.numpy()))
    (data / "y.png").write_bytes(encode_png(x.numpy()))
    (masks / "y_mask.png").write_bytes(encode_png(torch.zeros(1, 5, 5).numpy()))
    items, errors = load_labelled(str(data), str(masks))
    assert [it.name for it in items] == ["x"] and items[0].defective
    assert torch.equal(items[0].mask, gt > 0.5)
    assert len(errors) == 1 and "y.png" in errors[0] and "mask is (5, 5)" in errors[0]
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "z_mask.png").write_bytes(encode_png(gt.numpy()))
    with pytest.raises(ValueError, match="no images"):
        load_labelled(str(tmp_path / "only"))


def test_pro_of_images_of_different_sizes_matches_one_batch():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 1, 12, 12, generator=gen)
    gts = torch.zeros(3, 1, 12, 12, dtype=torch.bool)
    gts[0, 0, 2:5, 2:5] = gts[1, 0, 7:10, 1:4] = gts[2, 0, 0:2, 8:12] = True
    maps[gts] += 0.5
    batch = metrics.pro_curve(maps, gts)
    ragged = metrics.pro_curve(list(maps), list(gts))
    assert torch.allclose(batch[0], ragged[0]) and torch.allclose(batch[1], ragged[1])
    fpr, tpr = metrics.roc_curve(maps, gts, max_points=50)
    assert fpr.numel() <= 50 and fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_image_grid_has_header_and_blank_cells():
    png = encode_png(torch.rand(1, 8, 8).numpy())
    out = image_grid([("a", [png, b"", png]), ("b", [png])], columns=["x", "y", "z"], size=20)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (3 * 24 + 4, 14 + 2 * (20 + 14 + 4) + 4)


def test_conformal_threshold_hand_computed_and_its_guarantee():
    v = np.arange(1.0, 21.0)  # 20 clean scores 1..20, in any order
    # k = ceil(21 * 0.9) = 19: the 19th smallest. One of the 20 lies above it, and a 21st exchangeable
    # score exceeds it with probability 2/21 <= 0.1.
    assert conformal_threshold(v[::-1], 0.1) == 19.0
    assert conformal_threshold(v, 0.05) == 20.0  # k = ceil(19.95) = 20
    assert conformal_threshold(v[:10], 0.05) == 10.0  # k = 11 > 10: too few values, the largest one
    assert conformal_min_images(0.05) == 19 and conformal_min_images(0.1) == 9  # k <= n from there on
    with pytest.raises(ValueError, match="no values"):
        conformal_threshold(np.array([]), 0.1)
    # The guarantee, by simulation: a new draw exceeds the threshold of n = 40 others with probability
    # (n + 1 - k) / (n + 1) = 4/41 (k = ceil(41 * 0.9) = 37), within (0.1 - 1/41, 0.1].
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 41))
    hits = [row[-1] > conformal_threshold(row[:-1], 0.1) for row in x]
    assert abs(np.mean(hits) - 4 / 41) < 0.015  # 3 sigma of 4000 trials


def test_read_calibration_rejects_bad_files(tmp_path, tiny_prior):
    p = tmp_path / "c.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="not a calibration file"):
        read_calibration(str(p))
    p.write_text("nope")
    with pytest.raises(ValueError, match="not a calibration JSON"):
        read_calibration(str(p))
    good = {"kind": "rgi-calibration", "lam": 0.1, "score_threshold": 0.6, "map_threshold": 0.4, "prior_id": "abc"}
    p.write_text(json.dumps(good | {"lam": -1}))
    with pytest.raises(ValueError, match="lam must be"):
        read_calibration(str(p))
    p.write_text(json.dumps(good))
    assert read_calibration(str(p))["lam"] == 0.1
    with pytest.raises(ValueError, match="calibrated for prior"):
        read_calibration(str(p), dataclasses.replace(tiny_prior, prior_id="def"))
    with pytest.raises(FileNotFoundError):
        read_calibration(str(tmp_path / "missing.json"))


def test_calibrate_json_is_accepted_by_clean(prefect_api, tiny_prior, tmp_path):
    import pandas as pd
    from conftest import write_generated

    from flows.clean import CleanOptions
    from rgi_core.priors import load_prior, save_prior

    prior_path = save_prior(tmp_path / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    clean = write_generated(tiny_prior, tmp_path / "clean", 6, seed=3)
    (Path(clean) / "gt_mask.png").write_bytes(encode_png(np.zeros((1, 16, 16), np.float32)))  # not an image
    cal = tmp_path / "calibration.json"
    r = rgi("calibrate", str(clean), "--prior", str(prior_path), "--fpr", "0.2", "--out", str(cal),
            "--iterations", "20", "--n-init", "4", "--rounds", "1")
    assert r.returncode == 0, r.stderr
    assert "left out 1 ground-truth mask" in r.stderr
    doc = json.loads(cal.read_text())
    assert doc["fpr"] == 0.2 and doc["images"] == 6 and doc["lam"] > 0 and len(doc["lam_rounds"]) == 1
    assert doc["conformal"]  # 6 images bound a 0.2 FPR (needs >= 4)
    assert doc["clean_image_fpr"] == 0.0  # k = ceil(7 * 0.8) = 6 of 6: the highest clean score

    src = write_generated(tiny_prior, tmp_path / "src", 3, seed=9)
    cat = tmp_path / "cat"
    r = rgi("clean", str(src), "--catalog", str(cat), "--prior", str(prior_path), "--iterations", "10",
            "--n-init", "4", "--calibration", str(cal), api=True)
    assert r.returncode == 0, r.stderr
    run = pd.read_parquet(cat / "runs").iloc[0]
    assert json.loads(run["parameters_json"])["calibration"] == str(cal)
    prior = load_prior(str(prior_path), device="cpu")
    with_cal = CleanOptions(iterations=10, n_init=4, calibration=str(cal))
    assert with_cal.settings(prior).config.lam == doc["lam"]  # the calibrated lam is what ran
    assert run["config_hash"] == with_cal.config_hash(prior)
    assert run["config_hash"] != CleanOptions(iterations=10, n_init=4).config_hash(prior)
    rows = pd.read_parquet(cat / "images")
    assert (rows["is_anomalous"] == (rows["anomaly_score"] > doc["score_threshold"])).all()


@pytest.mark.slow
@pytest.mark.integration  # calibration solves
def test_calibrated_thresholds_hit_target_fpr_on_held_out_digits():
    """Calibrate on half of the held-out digits, measure on the other half: images neither the prior nor the
    calibration saw, from the same distribution (as a user calibrates on clean images of their own data).
    Pixel FPR pools ~150k pixels: held to +-2 %. Image FPR counts 148 images on each side, so its binomial noise
    alone is ~2.5 % (1 sigma): held to +-5 % here; docs/howto/evaluate.md has the repeated full-size check."""
    from rgi_core.calibration import CalibrationConfig, calibrate_fpr
    from rgi_core.evaluation.labelled import Thresholds, evaluate_labelled
    from rgi_core.priors import load_prior

    prior, fpr = load_prior("digits-32", device="cpu"), 0.05
    held = torch.from_numpy(builtin.digits("eval"))  # (297, 1, 32, 32), digits 1500..1796
    calib, test = list(held[:148]), list(held[148:])
    cfg = CalibrationConfig(iterations=40, n_init=8, rounds=1)
    cal = calibrate_fpr(prior, calib, fpr, cfg, lam_images=32)
    # In-sample: the conformal threshold is the k = ceil(149 * 0.95) = 142nd of 148 scores, so 6 lie above it.
    assert cal["clean_image_fpr"] == pytest.approx(6 / 148) and abs(cal["clean_pixel_fpr"] - fpr) < 0.001

    empty = torch.zeros((1, 32, 32), dtype=torch.bool)
    held_out = [Labelled(f"e{i}", x, empty) for i, x in enumerate(test)]
    report = evaluate_labelled(prior, held_out, ("rgi",), thresholds=Thresholds(cal["map_threshold"],
                               cal["score_threshold"]), batch_size=len(test), lam=cal["lam"], iterations=40,
                               n_init=8)
    s = report.scores[0]
    assert abs(s.pixel_fpr - fpr) <= 0.02, s
    assert abs(s.image_fpr - fpr) <= 0.05, s


def test_per_family_rows_score_each_folder_of_defects_against_every_clean_image():
    from rgi_core.cleaning import Inverted
    from rgi_core.evaluation.labelled import MethodRun, family_of, format_families, score_families
    from rgi_core.inversion.config import make_config

    def item(name: str, defect: bool) -> Labelled:
        mask = torch.zeros((1, 4, 4), dtype=torch.bool)
        mask[0, 0, 0] = defect
        return Labelled(name, torch.zeros(1, 4, 4), mask)

    def out(score: float, hit: bool) -> Inverted:
        amap = torch.zeros(1, 4, 4)
        amap[0, 0, 0] = 0.9 if hit else 0.0
        return Inverted(torch.zeros(1, 4, 4), amap, amap, amap, score, ())

    # cracks score above both clean images and are found; holes score between them and are missed
    items = [item("good/0", False), item("good/1", False), item("test/crack/0", True), item("test/crack/1", True),
             item("test/hole/0", True), item("test/hole/1", True)]
    outputs = [out(0.1, False), out(0.5, False), out(0.8, True), out(0.9, True), out(0.3, False), out(0.4, False)]
    run = MethodRun("rgi", make_config("rgi"), outputs, seconds=6.0)
    rows = score_families(items, run)
    assert list(rows) == ["test/crack", "test/hole"] and family_of("top") == ""
    crack, hole = rows["test/crack"], rows["test/hole"]
    assert crack.image_auroc == 1.0 and crack.pixel_auroc == 1.0 and crack.mask_iou == 1.0
    assert hole.image_auroc == pytest.approx(0.5)  # each hole beats one of the two clean images: 2 of 4 pairs
    assert hole.mask_iou == 0.0 and crack.images_per_second == pytest.approx(1.0)
    table = format_families("per family", {k: [v] for k, v in rows.items()})
    assert "| test/crack | rgi | 1.000 |" in table and table.count("\n| test/") == 2
    assert score_families(items[:4], run) == {}  # one family: nothing per family to say
