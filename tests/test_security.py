"""Safe loading and no credential leaks: pickled priors refused, secrets absent from everything a run leaves."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rgi_core.io.fs import has_credentials, redact_text, redact_uri, require_no_credentials
from rgi_core.io.images import encode_png
from rgi_core.priors import load_prior, save_prior
from rgi_core.priors.files import PriorFormatError, read_metadata

ENV_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIARGITESTENVKEY0001",
               "AWS_SECRET_ACCESS_KEY": "rgiEnvSecret/Key+0123456789abcdefghijklmn",
               "AWS_SESSION_TOKEN": "rgiEnvSessionToken0123456789abcdef"}
URL_KEY, URL_SECRET = "AKIARGITESTURLKEY0002", "rgiUrlSecret/Key+0123456789abcdefghijklmn"


@pytest.fixture(scope="module")
def prior_file(tiny_prior, tmp_path_factory):
    return save_prior(tmp_path_factory.mktemp("prior") / "tiny.safetensors", tiny_prior.generator,
                      tiny_prior.discriminator)


# -- safe loading ------------------------------------------------------------------------------------------

def _bad_priors(tiny_prior, prior_file, tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message) for priors that must be refused before any work."""
    state = {"generator": tiny_prior.generator.state_dict()}
    zip_pickle = tmp_path / "zip-pickle.safetensors"  # torch.save (zip + pickle) behind a safetensors name
    torch.save(state, zip_pickle)
    legacy = tmp_path / "legacy.pt"  # torch.save's old format: a raw pickle stream
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)
    data = prior_file.read_bytes()
    meta = read_metadata(data)
    four = tmp_path / "four-channels.safetensors"  # metadata declares an architecture rgi cannot build
    four.write_bytes(st_save(st_load(data), metadata={"rgi": json.dumps(
        meta | {"architecture": meta["architecture"] | {"channels": 4}})}))
    wrong = tmp_path / "wrong-resolution.safetensors"  # metadata says 64 px, tensors are for 32 px
    wrong.write_bytes(st_save(st_load(data), metadata={"rgi": json.dumps(
        meta | {"architecture": meta["architecture"] | {"resolution": 64}})}))
    return {"zip": (str(zip_pickle), "pickle"), "legacy": (str(legacy), "pickle"),
            "garbage": (str(garbage), "not an rgi prior"), "channels": (str(four), "invalid architecture"),
            "resolution": (str(wrong), "do not match the architecture")}


def test_pickles_and_broken_priors_are_refused(tiny_prior, prior_file, tmp_path):
    bad = _bad_priors(tiny_prior, prior_file, tmp_path)
    assert open(bad["legacy"][0], "rb").read(2) == b"\x80\x02"  # a raw pickle stream
    assert open(bad["zip"][0], "rb").read(4) == b"PK\x03\x04"  # a zip holding data.pkl
    for path, message in bad.values():
        with pytest.raises(PriorFormatError, match=message):
            load_prior(path)


def test_flow_refuses_bad_priors_before_listing_any_shard(prefect_api, tiny_prior, prior_file, tmp_path):
    from flows.clean import CleanOptions, clean_dataset

    for name, (path, message) in _bad_priors(tiny_prior, prior_file, tmp_path).items():
        cat = tmp_path / f"cat-{name}"
        # the source does not exist: listing it would raise FileNotFoundError, so the prior is checked first
        with pytest.raises(PriorFormatError, match=message):
            clean_dataset(source=str(tmp_path / "no-such-source"), catalog=str(cat), prior=path,
                          options=CleanOptions(iterations=1))
        assert not cat.exists()


# -- credentials -------------------------------------------------------------------------------------------

def test_redact_helpers():
    url = f"s3://{URL_KEY}:{URL_SECRET}@bucket/src/a.png"
    assert has_credentials(url) and redact_uri(url) == "s3://***@bucket/src/a.png"
    signed = "https://h.example/b/k.png?X-Amz-Credential=AKIA0/x&X-Amz-Signature=abc123&size=2"
    assert redact_uri(signed) == "https://h.example/b/k.png?X-Amz-Credential=***&X-Amz-Signature=***&size=2"
    for plain in ("s3://bucket/src", "/data/a b/x@2x.png", "s3://b/t.tar#dir/k@1.png", "memory://x/y"):
        assert not has_credentials(plain) and redact_uri(plain) == plain
    assert redact_text(f"failed to open {url}: denied") == "failed to open s3://***@bucket/src/a.png: denied"
    with pytest.raises(ValueError, match=r"source s3://\*\*\*@bucket/src/a.png: credentials embedded"):
        require_no_credentials(url, "source")


def _secrets() -> list[str]:
    """The secrets and their fragments (a secret with "/" is cut there by URL parsers and error messages)."""
    whole = [*ENV_SECRETS.values(), URL_KEY, URL_SECRET]
    return sorted({*whole, *(part for s in whole for part in s.split("/") if len(part) >= 8)})


def _prefect_records() -> list[str]:
    """Every flow run's parameters, name and state message, every artifact and every log in the API, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    out: list[str] = []
    with get_client(sync_client=True) as client:
        reads = ((client.read_flow_runs, FlowRunSort.ID_DESC,
                  lambda r: [json.dumps(r.parameters), r.name, r.state.message if r.state else ""]),
                 (client.read_artifacts, ArtifactSort.ID_DESC, lambda a: [json.dumps(a.data), a.description or ""]),
                 (client.read_logs, LogSort.TIMESTAMP_ASC, lambda log: [log.message]))
        # (the sync client sends null filters that the server rejects for artifacts: pass empty ones)
        empty = {client.read_artifacts: dict(artifact_filter=ArtifactFilter(), flow_run_filter=FlowRunFilter(),
                                             task_run_filter=TaskRunFilter())}
        for read, sort, dump in reads:
            offset = 0
            while batch := read(sort=sort, limit=200, offset=offset, **empty.get(read, {})):
                out += [s or "" for r in batch for s in dump(r)]
                offset += len(batch)
    return out


def test_no_credentials_in_catalog_parameters_artifacts_or_logs(prefect_api, s3, tiny_prior, prior_file,
                                                                monkeypatch):
    import s3fs
    from conftest import generate

    from flows.clean import CleanOptions, clean_dataset

    for name, value in ENV_SECRETS.items():  # moto accepts any key; s3fs picks these up from the environment
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    for i, x in enumerate(generate(tiny_prior, 2, seed=9)):
        fs.pipe(f"rgi-test/src/{i}.png", encode_png(x.numpy()))
    fs.pipe("rgi-test/src/broken.png", b"not an image")
    fs.pipe("rgi-test/src/broken.tar", b"\x00" * 10)
    opts = CleanOptions(iterations=5, n_init=2, batch_size=2)

    out = clean_dataset(source="s3://rgi-test/src", catalog="s3://rgi-test/cat", prior=str(prior_file),
                        options=opts)
    assert out["images_ok"] == 2 and out["images_error"] == 2
    # the same source with the keys in the URL: refused with a redacted message, before any work
    with pytest.raises(ValueError, match=r"s3://\*\*\*@rgi-test/src: credentials embedded in a URL are refused"):
        clean_dataset(source=f"s3://{URL_KEY}:{URL_SECRET}@rgi-test/src", catalog="s3://rgi-test/cat2",
                      prior=str(prior_file), options=opts)
    assert not fs.exists("rgi-test/cat2")

    texts = [json.dumps(out, default=str)]
    for sub in ("images", "runs"):  # every column of every catalog row
        table = pq.read_table(f"rgi-test/cat/{sub}", filesystem=fs).to_pandas()
        texts += [str(v) for v in table.astype(str).to_numpy().ravel()]
    texts += fs.find("rgi-test/cat")  # output paths
    records = _prefect_records()
    assert any("s3://***@rgi-test/src" in r for r in records)  # the refused run's parameters are there, redacted
    assert any("shards under s3://rgi-test/src" in r for r in records)  # and the good run's logs
    texts += records
    leaks = [(s, t[:200]) for t in texts for s in _secrets() if s in t]
    assert leaks == []
    s3fs.S3FileSystem.clear_instance_cache()  # monkeypatch restores the environment
