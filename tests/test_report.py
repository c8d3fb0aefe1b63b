"""rgi report: the static HTML report of a catalog, built from synthetic and real catalogs and browsed in a real
headless Chromium (tests/browser.py; skipped with a message where none is installed)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgi_core.catalog import Catalog
from rgi_core.report import build_report
from rgi_core.report.html import script_json

ROOT = Path(__file__).resolve().parents[1]
XSS = "<img src=x onerror=alert(1)>.png"
CONFIG_HASH = "0123456789abcdef"
THRESHOLD = 3.0
PICTURES = (("thumbnail_uri", "thumbnail"), ("restored_uri", "restored"), ("anomaly_map_uri", "anomaly_map"),
            ("mask_uri", "mask"))


def _png(seed: int, size: tuple[int, int] = (32, 32), bits: int = 8) -> bytes:
    """A smooth random gray image (a blob pattern, so a screenshot shows something)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a = 0.5 + 0.5 * np.sin(6 * xx * rng.uniform(0.5, 2) + 5 * yy * rng.uniform(0.5, 2) + rng.uniform(0, 6))
    im = Image.fromarray((a * 65535).astype(np.uint16)) if bits == 16 else Image.fromarray((a * 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def synthetic_catalog(root: Path, n: int, runs: tuple[str, ...] = ("run-a", "run-b"), errors_every: int = 10,
                      looks: int = 4, odd_files: bool = False) -> Catalog:
    """A catalog of ``n`` image rows over ``runs`` (round robin) without solving anything: every tenth row an error,
    the first row's source the XSS key, and the ok rows sharing ``looks`` sets of output PNGs. With ``odd_files``,
    look 1's restored image is 600x400 and its anomaly map 16-bit (both shrunk or converted on copy), one row names
    a missing output and one a file outside the catalog (both placeholders)."""
    cat = Catalog(str(root))
    sets = []
    for k in range(looks):
        key = hashlib.sha256(f"look-{k}".encode()).hexdigest()
        files = {}
        for column, name in PICTURES:
            size, bits = (32, 32), 8
            if odd_files and k == 1:
                size, bits = ((600, 400), 8) if name == "restored" else ((32, 32), 16 if name == "anomaly_map" else 8)
            files[column] = cat.write_output(cat.output_path(CONFIG_HASH, key, name), _png(k * 10 + len(name),
                                                                                          size, bits))
        sets.append(files)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        error = i % errors_every == errors_every - 1
        source = XSS if i == 0 else f"s3://bucket/shard-{i // 100:03d}/img-{i:05d}.png"
        score = None if error else float(rng.gamma(2.0, 0.8))
        row = {"image_key": hashlib.sha256(source.encode()).hexdigest(), "source_uri": source,
               "shard_uri": f"s3://bucket/shard-{i // 100:03d}", "width": 64, "height": 64, "channels": 1,
               "prior": "brick-64", "prior_id": "ab" * 32, "model_id": "cd" * 16, "config_hash": CONFIG_HASH,
               "run_id": runs[i % len(runs)], "method": "rgi" if i % 3 else "mse",
               "status": "error" if error else "ok", "error": f"ValueError: cannot decode image {i}" if error else None,
               "anomaly_score": score, "is_anomalous": None if error else score > THRESHOLD,
               "flagged_by": None if error else (["texture", "learned"][: 1 + i % 2] if score > THRESHOLD else []),
               "is_blurry": i % 13 == 0, "is_dark": i % 29 == 0, "meta_json": json.dumps({"label": i % 2}),
               "stage": None if error else ("triage", "detect", "solve")[i % 3]}
        if not error:
            row |= sets[i % looks]
        rows.append(row)
    # Rows 3 and 4 hold the same pixels, 5 nearly (one bit of its perceptual hash): the catalog's view names them.
    for i, (pixels, phash) in zip((3, 4, 5), (("aa" * 32, 12345), ("aa" * 32, 12345), ("bb" * 32, 12345 ^ 1)),
                                  strict=True):
        rows[i] |= {"pixel_hash": pixels, "phash": phash}
    if odd_files:
        rows[1]["restored_uri"] = cat.uri(cat.output_path(CONFIG_HASH, "f" * 64, "restored"))  # never written
        rows[2]["restored_uri"] = "/etc/hostname"  # not a catalog output: never read
    cat.write_images(rows, run_id="synthetic", seq=0)
    for run in runs:
        mine = [r for r in rows if r["run_id"] == run]
        cat.write_run({"run_id": run, "source": "s3://bucket", "method": "rgi", "prior": "brick-64",
                       "prior_id": "ab" * 32, "config_hash": CONFIG_HASH, "status": "completed",
                       "parameters_json": json.dumps({"iterations": 300, "note": "</script><b>x</b>"}),
                       "images_ok": sum(r["status"] == "ok" for r in mine),
                       "images_error": sum(r["status"] == "error" for r in mine), "images_skipped": 0, "shards": 3,
                       "images_per_second": 12.5, "seconds": len(mine) / 12.5, "score_threshold": THRESHOLD})
    return cat


def _data_block(index: Path) -> dict:
    html = index.read_text()
    block = re.search(r'<script type="application/json" id="rows">(.*?)</script>', html, flags=re.S).group(1)
    return json.loads(block)


# -- the builder, without a browser ---------------------------------------------------------------------------

def test_script_json_cannot_end_its_script_block_and_parses_back():
    value = {"a": "</script><script>alert(1)</script>", "b": "<!-- & -->", "c": "line\u2028sep\u2029", "n": [1.5]}
    text = script_json(value)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == value


def test_build_copies_each_image_once_and_shows_placeholders(tmp_path):
    synthetic_catalog(tmp_path / "cat", 60, odd_files=True)
    out = tmp_path / "report"
    report = build_report(str(tmp_path / "cat"), str(out))
    assert report.rows == report.total_rows == 60
    assert report.images == 16 and report.missing == 2  # 4 looks x 4 pictures; the missing and the foreign file
    assert sorted(p.name for p in out.iterdir()) == ["img", "index.html"]
    assert len(list((out / "img").iterdir())) == 16
    assert max(max(Image.open(p).size) for p in (out / "img").iterdir()) == 256  # the 600x400 image, shrunk
    data = _data_block(out / "index.html")
    assert len(data["rows"]) == 60 and data["columns"][: 2] == ["image_key", "source_uri"]
    scores = [r[data["columns"].index("anomaly_score")] for r in data["rows"]]
    assert scores[:54] == sorted(scores[:54], reverse=True) and scores[54:] == [None] * 6  # errors last
    restored = data["image_columns"].index("restored_uri")
    by_source = {r[1]: img for r, img in zip(data["rows"], data["images"], strict=True)}
    assert by_source["s3://bucket/shard-000/img-00001.png"][restored] is None  # never written
    assert by_source["s3://bucket/shard-000/img-00002.png"][restored] is None  # outside the catalog
    assert XSS in by_source
    assert XSS not in (out / "index.html").read_text()  # only with \u003c escapes

    runs = build_report(str(tmp_path / "cat"), str(tmp_path / "run-a"), runs=["run-a"], limit=10)
    data = _data_block(tmp_path / "run-a" / "index.html")
    assert runs.rows == 10 and runs.total_rows == 30 and len(data["runs"]["rows"]) == 1
    assert {r[data["columns"].index("run_id")] for r in data["rows"]} == {"run-a"}


def test_an_empty_catalog_makes_a_page(tmp_path):
    report = build_report(str(tmp_path / "nothing"), str(tmp_path / "report"))
    assert (report.rows, report.images, report.missing) == (0, 0, 0)
    assert _data_block(tmp_path / "report" / "index.html")["rows"] == []


# -- in the browser ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from browser import MISSING, Browser, find_chromium

    if find_chromium() is None:
        pytest.skip(MISSING)
    with Browser() as b:
        yield b


def _open(browser, index: Path):
    """A new page on the report at ``index``, drawn (its script ran to the end)."""
    page = browser.new_page()
    page.goto(index.as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    return page


def _table(page) -> dict:
    """The count the page shows and the source, status and score of the rows on the current page."""
    return page.evaluate("""(() => {
        const count = document.getElementById('count');
        const rows = [...document.querySelectorAll('#images tbody tr[data-row]')].map((tr) => {
            const td = tr.children;
            return {source: td[1].title, name: td[1].querySelector('.name').textContent, status: td[2].textContent,
                    score: td[3].textContent === '—' ? null : Number(td[3].textContent)};
        });
        return {shown: Number(count.dataset.shown), total: Number(count.dataset.total), text: count.textContent,
                rows: rows};
    })()""")


def _leaving(page, folder: Path) -> list[str]:
    """Requests to anything but the report's folder (data: and about: URLs are the page's own)."""
    base = folder.as_uri() + "/"
    return [u for u in page.requests if not (u.startswith(base) or u.startswith(("data:", "about:")))]


@pytest.mark.integration
def test_report_in_the_browser(browser, tmp_path):
    n = 250
    synthetic_catalog(tmp_path / "cat", n, odd_files=True)
    out = tmp_path / "report"
    build_report(str(tmp_path / "cat"), str(out))
    page = _open(browser, out / "index.html")

    # One table row per catalog row, 100 to a page.
    first = _table(page)
    assert first["shown"] == first["total"] == n and "of 250" in first["text"] and len(first["rows"]) == 100
    page.click("#pager-top .last")
    last = _table(page)
    assert len(last["rows"]) == n - 200 and "rows 201–250 of 250" in last["text"]

    # Sorted by score, highest first; a click on the header sorts lowest first (error rows, no score, last).
    page.click("#pager-top .first")
    scores = [r["score"] for r in _table(page)["rows"]]
    assert scores == sorted(scores, reverse=True) and None not in scores
    assert page.evaluate("document.querySelector('th[data-sort=anomaly_score]').getAttribute('aria-sort')") == \
        "descending"
    page.click("th[data-sort=anomaly_score]")
    scores = [r["score"] for r in _table(page)["rows"]]
    assert scores == sorted(scores) and scores[0] < first["rows"][-1]["score"]
    page.click("th[data-sort=source_uri]")
    sources = [r["source"] for r in _table(page)["rows"]]
    assert sources[:3] == ["<img src=x onerror=alert(1)>.png", "s3://bucket/shard-000/img-00001.png",
                           "s3://bucket/shard-000/img-00002.png"]

    # A filter: status = error shows the error rows only; the histogram has the runs' threshold.
    assert page.evaluate("document.querySelectorAll('#histogram line.threshold').length") == 1
    page.evaluate("""(() => { const s = document.getElementById('filter-status');
        s.value = [...s.options].find((o) => o.text === 'error').value; s.dispatchEvent(new Event('change')); })()""")
    errors = _table(page)
    assert errors["shown"] == n // 10 and errors["total"] == n and {r["status"] for r in errors["rows"]} == {"error"}
    assert "filtered from 250" in errors["text"]
    assert page.evaluate("document.querySelectorAll('#errors-table tbody tr').length") == n // 10
    page.click("#filter-reset")

    # The dataset checks: the flags and the duplicates the catalog's view finds, as badges and as a filter.
    choose_check = """((label) => { const s = document.getElementById('filter-check');
        s.value = [...s.options].find((o) => o.text === label).value; s.dispatchEvent(new Event('change')); })"""
    page.evaluate(f"{choose_check}('exact duplicate')")
    dup = page.evaluate("[...document.querySelectorAll('#images tbody td.checks')].map((td) => td.textContent)")
    assert dup == ["duplicate of img-00003.pngnear duplicates: img-00003.png"]
    page.evaluate(f"{choose_check}('near duplicate')")
    assert _table(page)["shown"] == 3
    page.evaluate(f"{choose_check}('blurry')")
    assert _table(page)["shown"] == len(range(0, n, 13))
    page.click("#filter-reset")

    # The path that produced each row (the catalog's stage): a column and a filter.
    page.evaluate("""(() => { const s = document.getElementById('filter-stage');
        s.value = [...s.options].find((o) => o.text === 'detect').value; s.dispatchEvent(new Event('change')); })()""")
    detect = [i for i in range(n) if i % 10 != 9 and i % 3 == 1]
    assert _table(page)["shown"] == len(detect)
    assert set(page.evaluate("[...document.querySelectorAll('#images tbody td.stage')].map((td) => td.textContent)"
                             )) == {"detect"}
    page.click("#filter-reset")

    # The XSS key is text: no element was made from it, no dialog opened, and the text is on the page.
    assert _table(page)["rows"][0]["name"] == XSS  # still sorted by source, ascending: the shown text is the key
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], img:not([src^=\"img/\"])').length") == 0
    assert page.evaluate("document.body.innerText").count(XSS) == 1
    page.click("#images tbody tr[data-row]")
    assert page.evaluate("document.getElementById('detail-title').textContent") == XSS
    page.click("#detail-close")
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], img:not([src^=\"img/\"])').length") == 0
    assert not [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"]

    # Thumbnails load from the report's folder (a missing file is a placeholder, not a broken image).
    page.wait_for("[...document.querySelectorAll('#images tbody img')].every((i) => i.complete)")
    assert page.evaluate("[...document.querySelectorAll('#images tbody img')].filter((i) => i.naturalWidth > 0).length"
                         ) > 100
    assert page.evaluate("[...document.querySelectorAll('#images tbody .placeholder')].map((p) => p.textContent)"
                         ).count("unreadable") == 2

    # The detail view: the maps large, the overlay, every catalog field.
    page.click("#images tbody tr[data-row]:nth-child(4)")
    assert page.evaluate("document.getElementById('detail').hidden") is False
    columns = _data_block(out / "index.html")["columns"]
    fields = page.evaluate("[...document.querySelectorAll('#detail-fields tr')].map((tr) => tr.dataset.field)")
    assert fields == columns
    assert page.evaluate("document.querySelector('#detail-fields tr[data-field=source_uri] td').textContent") == \
        "s3://bucket/shard-000/img-00003.png"
    page.wait_for("[...document.querySelectorAll('#detail img')].every((i) => i.complete)")
    assert page.evaluate("[...document.querySelectorAll('#detail .stack img.overlay')].length") == 2
    assert page.evaluate("[...document.querySelectorAll('#detail img')].every((i) => i.naturalWidth > 0)")
    page.screenshot(tmp_path / "detail.png")
    page.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
    assert page.evaluate("document.getElementById('detail').hidden") is True

    assert _leaving(page, out) == [] and len(page.requests) > 10
    assert page.errors == []
    page.screenshot(tmp_path / "report.png")
    assert Image.open(tmp_path / "report.png").size == (1400, 1000)


@pytest.mark.integration
def test_ten_thousand_rows(browser, tmp_path):
    n = 10_000
    synthetic_catalog(tmp_path / "cat", n, runs=("run-a", "run-b", "run-c"))
    t0 = time.perf_counter()
    report = build_report(str(tmp_path / "cat"), str(tmp_path / "report"))
    built = time.perf_counter() - t0
    assert report.rows == n and report.images == 16
    page = browser.new_page()
    loaded = page.goto((tmp_path / "report" / "index.html").as_uri())
    page.wait_for("document.body.dataset.ready === '1'")
    drawn = time.perf_counter() - t0 - built
    table = _table(page)
    assert table["shown"] == table["total"] == n and len(table["rows"]) == 100 and "of 10,000" in table["text"]
    t1 = time.perf_counter()
    page.click("th[data-sort=anomaly_score]")
    scores = [r["score"] for r in _table(page)["rows"]]
    resorted = time.perf_counter() - t1
    assert scores == sorted(scores)
    page.click("#pager-top .last")
    assert len(_table(page)["rows"]) == 100
    assert page.errors == [] and _leaving(page, tmp_path / "report") == []
    size = (tmp_path / "report" / "index.html").stat().st_size
    print(f"10 000 rows: built in {built:.2f} s ({size / 1e6:.1f} MB index.html), loaded in {loaded:.2f} s, "
          f"drawn after {drawn:.2f} s, re-sorted in {resorted:.2f} s")
    assert built < 30 and drawn < 15 and resorted < 5  # measured on a 2-core machine: 0.9 s, 0.6 s, 0.2 s


@pytest.mark.integration
def test_report_of_an_s3_catalog_into_s3(s3, tmp_path):
    synthetic_catalog("s3://rgi-test/cat", 30)
    report = build_report("s3://rgi-test/cat", "s3://rgi-test/cat/reports/all")
    assert report.index_uri == "s3://rgi-test/cat/reports/all/index.html"
    assert (report.rows, report.images, report.missing) == (30, 16, 0)
    assert len(s3.find("rgi-test/cat/reports/all/img")) == 16
    s3.get("rgi-test/cat/reports/all/index.html", str(tmp_path / "index.html"))
    assert len(_data_block(tmp_path / "index.html")["rows"]) == 30


# -- the report of a real cleaning run ------------------------------------------------------------------------

def _clean_inputs(tiny_prior, folder: Path) -> tuple[str, dict]:
    """What the flow test cleans, and the prior and options it cleans with: 5 images of the tiny prior and a broken
    file. With RGI_UPDATE_DOCS=1, the demo's brick crops instead (a third with a defect, flows/demo.py) on the shipped
    brick-64 prior, so that docs/report.png shows a real run."""
    from conftest import generate

    from rgi_core.io.images import encode_png
    from rgi_core.priors import save_prior

    folder.mkdir(parents=True)
    if os.environ.get("RGI_UPDATE_DOCS") == "1":
        from flows.demo import demo_dataset

        for key, png, kind in demo_dataset("brick", n=24):
            (folder / f"brick-{key}-{kind}.png").write_bytes(png)
        (folder / "truncated-upload.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        return "brick-64", dict(iterations=300, batch_size=12)
    for i, x in enumerate(generate(tiny_prior, 5, seed=8)):
        (folder / f"{i}.png").write_bytes(encode_png(x.numpy()))
    (folder / XSS).write_bytes(b"not an image")
    prior = save_prior(folder.parent / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    return str(prior), dict(iterations=20, n_init=8, batch_size=4)


def _report_artifact(run_id: str) -> str:
    """The markdown of the run's ``rgi-clean-report`` artifact."""
    from prefect.client.orchestration import get_client

    # Artifact filters only: with a task-run filter the server leaves out the artifacts the flow itself made.
    query = {"artifacts": {"key": {"any_": ["rgi-clean-report"]}, "flow_run_id": {"any_": [run_id]}}, "limit": 10}
    with get_client(sync_client=True) as client:
        found = client.request("POST", "/artifacts/filter", json=query).json()
    assert len(found) == 1, found
    return found[0]["data"]


@pytest.mark.integration
def test_every_clean_run_writes_its_report_and_links_it(prefect_api, tiny_prior, tmp_path, monkeypatch, caplog):
    import flows.tasks
    from flows.clean import CleanOptions, clean_dataset
    from flows.cli import main

    prior, opts = _clean_inputs(tiny_prior, tmp_path / "src")
    cat = tmp_path / "catalog"
    out = clean_dataset(source=str(tmp_path / "src"), catalog=str(cat), prior=prior, options=CleanOptions(**opts))
    run_id = out["run_id"]
    index = cat / "reports" / run_id / "index.html"
    assert out["html_report_uri"] == str(index) and index.exists()
    assert f"[{index}]({index})" in _report_artifact(run_id)
    data = _data_block(index)
    assert len(data["rows"]) == out["images_ok"] + out["images_error"] and len(data["runs"]["rows"]) == 1
    runs = dict(zip(data["runs"]["columns"], data["runs"]["rows"][0], strict=True))
    assert runs["run_id"] == run_id and runs["status"] == "completed" and "score_threshold" in runs
    status = data["columns"].index("status")
    pictures = [names for row, names in zip(data["rows"], data["images"], strict=True) if row[status] == "ok"]
    assert len(pictures) == out["images_ok"] and all(all(names[1:]) for names in pictures)  # restored, map, mask

    # `rgi report` on the same catalog: one run chosen, the top rows only.
    assert main(["report", str(cat), "--out", str(tmp_path / "top"), "--run", run_id, "--limit", "2"]) == 0
    assert len(_data_block(tmp_path / "top" / "index.html")["rows"]) == 2
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2

    # A report that cannot be written is a warning; the run completes.
    def broken(*args, **kwargs):
        raise OSError("the report's storage is down")

    monkeypatch.setattr(flows.tasks, "build_report", broken)
    again = clean_dataset(source=str(tmp_path / "src"), catalog=str(cat), prior=prior,
                          options=CleanOptions(**opts, force=True, io_retry_delays=(0.0,)))
    assert again["status"] == "completed" and again["html_report_uri"] is None
    assert again["images_ok"] == out["images_ok"]
    assert f"the HTML report of run {again['run_id']} was not written: OSError: the report's storage is down" in \
        caplog.text

    # The run's report in the browser (screenshots; with RGI_UPDATE_DOCS=1 they become docs/report*.png).
    from browser import MISSING, Browser, find_chromium

    if find_chromium() is None:
        pytest.skip(MISSING)
    with Browser(height=1500 if os.environ.get("RGI_UPDATE_DOCS") == "1" else 1000) as browser:
        page = _open(browser, index)
        assert _table(page)["total"] == len(data["rows"]) and page.errors == []
        assert _leaving(page, index.parent) == []
        if os.environ.get("RGI_UPDATE_DOCS") != "1":  # the undecodable file named like markup: an error row, as text
            assert page.evaluate("document.body.innerText").count(XSS) >= 2  # in the table and the errors section
            assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
        page.wait_for("[...document.querySelectorAll('#images tbody img')].every((i) => i.complete)")
        shots = [page.screenshot(tmp_path / "report.png")]
        page.click("#images tbody tr[data-row]")
        page.wait_for("[...document.querySelectorAll('#detail img')].every((i) => i.complete)")
        shots.append(page.screenshot(tmp_path / "report-detail.png"))
    if os.environ.get("RGI_UPDATE_DOCS") == "1":
        for shot in shots:
            (ROOT / "docs" / shot.name).write_bytes(shot.read_bytes())
