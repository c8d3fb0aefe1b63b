"""Image decoding, listing over local folders and fsspec URLs, and the built-in dataset splits."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pytest
from PIL import Image

from rgi_core.io import builtin
from rgi_core.io.images import ImageDecodeError, decode_image, encode_png, list_images, read_images


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_gray_rgb_and_16bit():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    x = decode_image(_png(gray), channels=1)
    assert x.shape == (1, 3, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], gray / 255.0, atol=1e-6)
    assert decode_image(_png(gray), channels=3).shape == (3, 3, 4)  # gray replicated
    rgb = np.zeros((5, 7, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    y = decode_image(_png(rgb), channels=3)
    assert y.shape == (3, 5, 7) and y[0].min() == 1.0 and y[1].max() == 0.0
    assert decode_image(_png(rgb), channels=1).shape == (1, 5, 7)  # luminance
    deep = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 13107)
    z = decode_image(_png(deep), channels=1)
    np.testing.assert_allclose(z[0], deep / 65535.0, atol=1e-6)


def test_decode_garbage_names_the_file():
    with pytest.raises(ImageDecodeError, match="bad.png"):
        decode_image(b"not an image at all", channels=1, name="bad.png")
    with pytest.raises(ImageDecodeError):
        decode_image(_png(np.zeros((8, 8), np.uint8))[:40], channels=1, name="truncated.png")


def test_encode_png_round_trip():
    x = np.random.default_rng(0).integers(0, 256, (1, 9, 11)).astype(np.float32) / 255.0
    np.testing.assert_allclose(decode_image(encode_png(x), 1), x, atol=1e-6)


def test_read_images_local_folder_skips_bad_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    (tmp_path / "sub" / "b.png").write_bytes(_png(np.full((4, 4), 255, np.uint8)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    (tmp_path / "notes.txt").write_text("not an image")
    records, errors = read_images(str(tmp_path), channels=1)
    assert [r.uri.rsplit("/", 1)[-1] for r in records] == ["a.png", "b.png"]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "missing"))


def test_read_images_fsspec_url():
    fs = fsspec.filesystem("memory")
    fs.pipe("/rgi-test-imgs/x.png", _png(np.full((6, 5), 128, np.uint8)))
    records, errors = read_images("memory://rgi-test-imgs", channels=1)
    assert errors == [] and len(records) == 1
    assert records[0].uri.startswith("memory://") and records[0].pixels.shape == (1, 6, 5)


def test_texture_splits_are_disjoint_quarters():
    train, held = builtin.texture("brick", "train"), builtin.texture("brick", "eval")
    assert train.shape == (1, 512, 384) and held.shape == (1, 512, 128)
    from skimage import data

    full = np.asarray(data.brick(), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(np.concatenate([train[0], held[0]], axis=1), full)
    with pytest.raises(ValueError, match="split"):
        builtin.texture("brick", "test")


def test_the_colour_texture_is_split_the_same_way_and_exports_in_colour(tmp_path):
    from skimage import data

    train, held = builtin.texture("ihc", "train"), builtin.texture("ihc", "eval")
    assert train.shape == (3, 512, 384) and held.shape == (3, 512, 128)
    full = np.asarray(data.immunohistochemistry(), dtype=np.float32).transpose(2, 0, 1) / 255.0
    np.testing.assert_array_equal(np.concatenate([train, held], axis=2), full)
    (path,) = builtin.export("ihc", "eval", tmp_path)
    assert path.name == "ihc-eval.png"
    np.testing.assert_allclose(decode_image(path.read_bytes(), 3), held, atol=1e-6)
    with pytest.raises(ValueError, match="unknown texture"):
        builtin.texture("tissue", "train")


def test_digits_split_sizes_and_scaling():
    train, held = builtin.digits("train"), builtin.digits("eval")
    assert train.shape == (1500, 1, 32, 32) and held.shape == (297, 1, 32, 32)
    assert 0.0 <= held.min() and held.max() <= 1.0 and held.max() > 0.9


def test_export_writes_pngs(tmp_path):
    paths = builtin.export("digits", "eval", tmp_path)
    assert len(paths) == 297 and paths[0].name == "digit-1500.png"
    np.testing.assert_allclose(decode_image(paths[0].read_bytes(), 1), builtin.digits("eval")[0], atol=1e-6)
