"""Shard listing and streaming for image folders, WebDataset tars and Parquet files (local and fsspec URLs)."""

from __future__ import annotations

import json
import tarfile

import fsspec
import numpy as np
import pytest
from conftest import parquet_bytes

from rgi_core.io.images import decode_image, encode_png
from rgi_core.io.shards import Shard, iter_items, list_shards, tar_bytes


def _png(v: int, size: int = 8) -> bytes:
    return encode_png(np.full((1, size, size), v / 255.0))


@pytest.fixture
def source(tmp_path):
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.png").write_bytes(_png(10))
    (tmp_path / "loose" / "b.jpg").write_bytes(b"broken jpeg")
    (tmp_path / "loose" / "notes.txt").write_text("ignored")
    (tmp_path / "s-000.tar").write_bytes(tar_bytes([
        ("0001.json", json.dumps({"label": "ok"}).encode()), ("0001.png", _png(20)),
        ("0002.png", _png(30)), ("0002.json", b"{not json"),
        ("0003.png", _png(40)),
    ]))
    (tmp_path / "p-000.parquet").write_bytes(parquet_bytes({
        "id": ["x", "y"], "image": [_png(50), b""], "camera": ["c1", "c2"]}))
    return tmp_path


def test_list_shards_kinds_and_order(source):
    shards = list_shards(str(source))
    assert [(s.uri.rsplit("/", 1)[-1], s.kind) for s in shards] == [
        ("loose", "images"), ("p-000.parquet", "parquet"), ("s-000.tar", "tar")]
    assert [f.rsplit("/", 1)[-1] for f in shards[0].files] == ["a.png", "b.jpg"]


def test_items_of_every_kind(source):
    items = {s.kind: list(iter_items(s)) for s in list_shards(str(source))}
    loose = items["images"]
    assert [i.uri.rsplit("/", 1)[-1] for i in loose] == ["a.png", "b.jpg"]
    assert decode_image(loose[0].data, 1)[0, 0, 0] == pytest.approx(10 / 255)
    tar = items["tar"]
    assert [i.uri.rsplit("#", 1)[-1] for i in tar] == ["0001.png", "0002.png", "0003.png"]
    assert tar[0].meta == {"label": "ok"} and "json_error" in tar[1].meta and tar[2].meta == {}
    assert all(i.uri.startswith(i.shard_uri + "#") for i in tar)
    assert decode_image(tar[2].data, 1)[0, 0, 0] == pytest.approx(40 / 255)
    par = items["parquet"]
    assert [i.uri.rsplit("#", 1)[-1] for i in par] == ["x", "y"]
    assert par[0].meta == {"camera": "c1"} and par[0].error == ""
    assert par[1].error and par[1].data == b""


def test_single_file_sources_and_fsspec_urls(source):
    fs = fsspec.filesystem("memory")
    fs.pipe("/shards-test/s.tar", (source / "s-000.tar").read_bytes())
    fs.pipe("/shards-test/imgs/a.png", _png(1))
    shards = list_shards("memory://shards-test")
    assert [s.kind for s in shards] == ["images", "tar"]
    assert shards[0].files == ("memory:///shards-test/imgs/a.png",)
    assert len(list(iter_items(list_shards("memory://shards-test/s.tar")[0]))) == 3
    assert list_shards(str(source / "loose" / "a.png"))[0].kind == "images"


def test_errors_are_clear(source, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such source"):
        list_shards(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not an image"):
        list_shards(str(source / "loose" / "notes.txt"))
    rows = list(iter_items(Shard(str(source / "p-000.parquet"), "parquet"), image_column="pixels"))
    assert [i.uri.rsplit("#", 1)[-1] for i in rows] == ["x", "y"]  # one error item per row, named by its id
    assert all("no column 'pixels'" in i.error and not i.data for i in rows)
    with pytest.raises(ValueError, match="no column 'key'"):
        list(iter_items(Shard(str(source / "p-000.parquet"), "parquet"), id_column="key"))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises((tarfile.TarError, OSError, ValueError)):
        list(iter_items(Shard(str(bad), "tar")))
    gone = Shard("loose", "images", (str(source / "loose" / "vanished.png"),))
    (item,) = iter_items(gone)
    assert item.error.startswith("cannot read")
