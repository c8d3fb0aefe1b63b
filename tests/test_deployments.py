"""deployments/prefect.yaml as Prefect reads it, and the nightly rerun over unchanged data writing nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from rgi_core.catalog import Catalog
from rgi_core.io.images import encode_png
from rgi_core.priors import save_prior

YAML = Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml"


def test_deployments_share_settings_and_the_trigger_names_the_shard():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    doc = yaml.safe_load(YAML.read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    nightly, upload, poll = deps["nightly-clean"], deps["clean-on-upload"], deps["poll-for-shards"]
    for key in ("catalog", "prior", "options"):  # one definition, three deployments
        assert nightly["parameters"][key] == upload["parameters"][key] == poll["parameters"][key]
    assert nightly["work_pool"] == upload["work_pool"] == poll["work_pool"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC"}]
    trigger = DeploymentEventTrigger(**{k: v for k, v in upload["triggers"][0].items() if k != "type"})
    assert trigger.expect == {"rgi.shard.uploaded"} and trigger.parameters == {"shard": "{{ event.resource.id }}"}
    assert trigger.within.total_seconds() > 0 and trigger.schedule_after.total_seconds() > 0  # debounced
    assert doc["pull"] == [] and all(":" in d["entrypoint"] and ".py" not in d["entrypoint"] for d in deps.values())


def test_nightly_rerun_over_unchanged_source_writes_no_image_rows(prefect_api, tiny_prior, tmp_path):
    from conftest import generate

    from flows.clean import CleanOptions, clean_dataset

    src, cat = tmp_path / "src", tmp_path / "catalog"
    src.mkdir()
    for i, x in enumerate(generate(tiny_prior, 3, seed=1)):
        (src / f"{i}.png").write_bytes(encode_png(x.numpy()))
    prior = str(save_prior(tmp_path / "tiny.safetensors", tiny_prior.generator, tiny_prior.discriminator))
    opts = CleanOptions(iterations=5, n_init=1, batch_size=8)

    first = clean_dataset(source=str(src), catalog=str(cat), prior=prior, options=opts)
    parts = sorted(Catalog(str(cat)).part_files("images"))
    second = clean_dataset(source=str(src), catalog=str(cat), prior=prior, options=opts)

    assert first["images_ok"] == 3 and (second["images_ok"], second["images_error"]) == (0, 0)
    assert second["images_skipped"] == 3
    assert sorted(Catalog(str(cat)).part_files("images")) == parts  # not even an empty part file
    runs = pd.read_parquet(cat / "runs")
    assert len(runs) == 2 and runs.images_ok.sort_values().tolist() == [0, 3]  # the no-op run is still recorded
