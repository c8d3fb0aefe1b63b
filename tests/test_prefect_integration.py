"""rgi as a Prefect integration: block standards, blocks on a real API, `rgi setup`, secrets, public tasks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from conftest import drop_gpu_limit, generate
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from test_cli_clean import rgi

from flows.blocks import BLOCKS, RgiCatalog, RgiCleaningSettings, RgiPrior, RgiS3Credentials
from rgi_core.io.images import encode_png
from rgi_core.io.shards import tar_bytes
from rgi_core.priors import load_prior, save_prior

ROOT = Path(__file__).resolve().parents[1]
CHEAP = dict(iterations=5, n_init=2, batch_size=2)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block

    def test_has_a_valid_image(self, block) -> None:
        """Offline variant of the suite's check: the logo URL names docs/rgi-logo.png, which is square."""
        from PIL import Image

        assert str(block._logo_url).endswith("/docs/rgi-logo.png")
        img = Image.open(ROOT / "docs" / "rgi-logo.png")
        assert img.width == img.height and 1000 > img.width > 45


@pytest.fixture(scope="module")
def prior_file(tiny_prior, tmp_path_factory):
    return str(save_prior(tmp_path_factory.mktemp("prior") / "tiny.safetensors",
                          tiny_prior.generator, tiny_prior.discriminator))


def _secrets() -> tuple[str, str]:
    return f"secret-{uuid.uuid4().hex}", f"token-{uuid.uuid4().hex}"


def test_secrets_hidden_in_repr_str_and_json():
    secret, token = _secrets()
    creds = RgiS3Credentials(aws_access_key_id="AKIDTEST", aws_secret_access_key=secret, aws_session_token=token)
    cat = RgiCatalog(url="s3://bucket/catalog", credentials=creds)
    for text in (repr(creds), str(creds), creds.model_dump_json(), repr(cat), str(cat), cat.model_dump_json(),
                 json.dumps(cat.model_dump(mode="json"))):
        assert secret not in text and token not in text
    opts = cat.storage_options()
    assert opts["secret"] == secret and opts["token"] == token and opts["key"] == "AKIDTEST"
    assert cat.storage_options("s3://other/shards") == opts  # same protocol: sources use them
    assert cat.storage_options("/local/images") == {}
    assert RgiCatalog(url="s3://b/c", credentials=creds, use_for_sources=False).storage_options("s3://b/s") == {}


def test_blocks_save_and_load_on_api(prefect_api, prior_file, tmp_path):
    secret, token = _secrets()
    name = f"t-{uuid.uuid4().hex[:8]}"
    creds = RgiS3Credentials(aws_access_key_id="AKIDTEST", aws_secret_access_key=secret, aws_session_token=token,
                             region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    RgiCatalog(url=str(tmp_path / "cat"), credentials=creds, fsspec_options={"auto_mkdir": True}).save(name)
    RgiPrior(location=prior_file, defaults={"lam": 0.3}).save(name)
    calib = tmp_path / "calibration.json"
    calib.write_text(json.dumps({"defaults": {"lam": 0.4, "score_threshold": 0.5}}))
    RgiCleaningSettings(method="rrgi", lam=0.1, iterations=7, mask_tv=0.05, n_starts=3, calibration_url=str(calib),
                        calibration={"score_threshold": 0.6}).save(name)

    cat = RgiCatalog.load(name)
    assert cat.url == str(tmp_path / "cat") and cat.credentials.aws_secret_access_key.get_secret_value() == secret
    assert cat.credentials.aws_session_token.get_secret_value() == token
    assert cat.storage_options()["client_kwargs"] == {"region_name": "us-east-1"}
    prior = RgiPrior.load(name).load_prior(device="cpu")
    as_stored = load_prior(prior_file, device="cpu")
    assert prior.defaults == as_stored.defaults and prior.prior_id == as_stored.prior_id  # the block's apply later
    assert RgiPrior.load(name).defaults == {"lam": 0.3}
    settings = RgiCleaningSettings.load(name)
    opts = settings.options(seed=3)
    assert (opts.method, opts.lam, opts.iterations, opts.seed, opts.mask_tv) == ("rrgi", 0.1, 7, 3, 0.05)
    assert opts.n_starts == 3 and opts.settings(prior).config.n_starts == 3
    assert settings.calibrated_defaults() == {"lam": 0.4, "score_threshold": 0.6}

    from flows.blocks import resolve
    from flows.clean import CleanOptions

    cat, p, o, defaults = resolve("", "unused", CleanOptions(seed=5, iterations=3), name, name, name)
    assert isinstance(cat, RgiCatalog) and (o.method, o.lam, o.iterations, o.seed) == ("rrgi", 0.1, 3, 5)
    assert defaults == {"lam": 0.4, "score_threshold": 0.6}  # settings over prior block
    assert p.defaults == as_stored.defaults  # the loaded prior is left as its file says
    assert o.settings(p, defaults).score_threshold == 0.6 and o.settings(p, defaults).config.lam == 0.1
    with pytest.raises(ValueError, match="catalog"):
        resolve("", prior_file, None, None, None, None)


def test_prefect_block_register_and_rgi_setup(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slugs = [b.get_block_type_slug() for b in BLOCKS]

    def registered(drop: bool = False) -> set[str]:
        """The rgi block types on the API (deleted when ``drop``)."""
        found = set()
        with get_client(sync_client=True) as client:
            for slug in slugs:
                try:
                    block_type = client.read_block_type_by_slug(slug)
                except ObjectNotFound:
                    continue
                found.add(block_type.slug)
                if drop:
                    client.delete_block_type(block_type.id)
        return found

    from prefect.settings import PREFECT_API_URL

    registered(drop=True)
    assert registered() == set()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "flows.blocks"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert registered() == set(slugs)

    registered(drop=True)
    try:
        for args in (("setup", "--gpu-slots", "2"), ("setup",)):  # twice: idempotent, the second resizes
            r = rgi(*args)
            assert r.returncode == 0, r.stderr
        assert registered() == set(slugs) and "gpu = 1 slot" in r.stdout
        with get_client(sync_client=True) as client:
            assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 1
            schema = client.read_block_type_by_slug("rgi-catalog")
            assert schema.documentation_url and schema.logo_url and "catalog" in schema.description.lower()
    finally:
        drop_gpu_limit()  # (conftest) a run that holds the shared API's one gpu slot would stall later tests


def test_entry_point_and_task_pairs():
    import inspect
    from importlib.metadata import entry_points

    from flows import tasks

    eps = {ep.name: ep.value for ep in entry_points(group="prefect.collections")}
    assert eps.get("rgi") == "flows.blocks"
    for name in ("list_shards", "read_done", "load_batch", "write_rows", "write_run", "write_report"):
        sync, coro = getattr(tasks, name), getattr(tasks, "a" + name)
        assert sync.tags == coro.tags == {"io"} and sync.name == coro.name and sync.retries == 3
        assert not inspect.iscoroutinefunction(sync.fn) and inspect.iscoroutinefunction(coro.fn)
        assert inspect.signature(sync.fn) == inspect.signature(coro.fn)
    assert tasks.invert_batch.tags == {"gpu"}


def test_flow_with_blocks_on_s3_never_leaks_credentials(prefect_api, s3, s3_endpoint, prior_file, monkeypatch):
    """Credentials reach s3fs only through the catalog block: the run's process has none in its environment.

    The flow runs in a child process so that everything it prints is captured whole (stdout and stderr).
    """
    import os
    import subprocess
    import sys

    import s3fs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    tiny = load_prior(prior_file, device="cpu")
    for i, x in enumerate(generate(tiny, 3, seed=4)):
        s3.pipe(f"rgi-test/src/{i}.png", encode_png(x.numpy()))
    secret, token = _secrets()
    name = f"s3-{uuid.uuid4().hex[:8]}"
    creds = RgiS3Credentials(aws_access_key_id="testing", aws_secret_access_key=secret, aws_session_token=token,
                             endpoint_url=s3_endpoint)
    RgiCatalog(url="s3://rgi-test/catalog", credentials=creds).save(name)
    RgiPrior(location=prior_file, defaults={"score_threshold": 0.0}).save(name)
    RgiCleaningSettings(calibration={"lam": 0.2}, **CHEAP).save(name)

    no_creds = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent"}
    hidden = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")
    env = {k: v for k, v in os.environ.items() if k not in hidden} | no_creds
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    for var in hidden:
        monkeypatch.delenv(var, raising=False)
    for var, value in no_creds.items():
        monkeypatch.setenv(var, value)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(Exception):  # noqa: B017  without the block's keys the store refuses us
        s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).ls("rgi-test/src")

    code = ("import json\nfrom flows.clean import clean_dataset\n"
            f"s = clean_dataset(source='s3://rgi-test/src', catalog_block={name!r}, prior_block={name!r}, "
            f"settings_block={name!r}, return_state=True)\n"
            "out = s.result()\n"
            "print(json.dumps({'run_id': str(s.state_details.flow_run_id), 'ok': out['images_ok'], "
            "'report': out['report_uri']}))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] == 3 and out["report"].startswith("s3://rgi-test/catalog/reports/")
    monkeypatch.undo()  # the test's own S3 access below uses the fixture's credentials again
    s3fs.S3FileSystem.clear_instance_cache()
    images = pd.read_parquet("rgi-test/catalog/images", filesystem=s3)
    expected = RgiCleaningSettings(**CHEAP).options().config_hash(load_prior(prior_file, device="cpu"), {"lam": 0.2})
    assert (images.config_hash == expected).all()
    assert images.is_anomalous.all()  # the prior block's score_threshold 0.0

    with get_client(sync_client=True) as client:
        params = json.dumps(client.read_flow_run(out["run_id"]).parameters)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[out["run_id"]])),
                                limit=200, offset=0)
    assert name in params and logs
    text = "\n".join([params, *(log.message for log in logs), proc.stdout, proc.stderr])
    assert secret not in text and token not in text


def _source(tiny_prior, root: Path) -> None:
    imgs = [encode_png(x.numpy()) for x in generate(tiny_prior, 5, seed=12)]
    (root / "loose").mkdir(parents=True)
    for i in range(2):
        (root / "loose" / f"{i}.png").write_bytes(imgs[i])
    (root / "loose" / "broken.png").write_bytes(b"not an image")
    (root / "s-000.tar").write_bytes(tar_bytes([(f"k{i}.png", imgs[i]) for i in range(2, 5)]))
    (root / "bad.tar").write_bytes(b"truncated")


def test_user_flow_from_public_tasks_matches_clean_dataset(prefect_api, tiny_prior, prior_file, tmp_path):
    """An async user flow built only from flows.tasks writes the catalog clean_dataset writes."""
    from prefect import flow

    from flows.clean import CleanOptions, clean_dataset
    from flows.tasks import (
        alist_shards,
        aload_batch,
        aread_done,
        awrite_report,
        awrite_rows,
        awrite_run,
        invert_batch,
        run_context,
    )

    _source(tiny_prior, tmp_path / "src")
    options = CleanOptions(**CHEAP)

    @flow
    async def user_flow(source: str, catalog: str) -> int:
        prior = load_prior(prior_file, device="cpu")
        context = run_context(prior, options)
        done = await aread_done(catalog, context["config_hash"], prior.prior_id, context["model_id"])
        rows = []
        for seq, shard in enumerate(await alist_shards(source)):
            items = await aload_batch(shard, skip=done)
            rows += await awrite_rows(invert_batch(items, prior, options), items, catalog, context, seq)
        await awrite_run(catalog, {"run_id": context["run_id"], "source": source, "images_ok": len(rows)})
        await awrite_report(catalog, context["run_id"], [r for r in rows if r["status"] == "ok"][:2])
        return len(rows)

    ours, theirs = str(tmp_path / "user"), str(tmp_path / "flow")
    assert asyncio.run(user_flow(str(tmp_path / "src"), ours)) == 7  # reruns: tests/test_prefect_docs.py
    clean_dataset(source=str(tmp_path / "src"), catalog=theirs, prior=prior_file, options=options)

    cols = ["image_key", "source_uri", "status", "config_hash", "width", "height"]
    a, b = (pd.read_parquet(Path(c) / "images").sort_values("source_uri").reset_index(drop=True)
            for c in (ours, theirs))
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert list(a.status).count("error") == 2  # the broken PNG and the truncated tar
    pd.testing.assert_series_equal(a.anomaly_score, b.anomaly_score, rtol=1e-3, atol=1e-4)
    assert (Path(ours) / "runs").is_dir() and list((Path(ours) / "reports").glob("*.png"))
