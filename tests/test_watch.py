"""rgi watch: S3 notifications (moto S3 -> moto SQS) become rgi.shard.uploaded events on a real Prefect API."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from rgi_core.io.notifications import SeenLedger, ShardUpload, parse_notification, under_prefix, unseen_shards


def _record(key: str, etag: str = "e1", name: str = "ObjectCreated:Put", bucket: str = "b") -> dict:
    return {"eventName": name, "eventTime": "2026-11-24T00:00:00.000Z",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10, "eTag": etag, "sequencer": "01"}}}


def test_parse_notification_decodes_keys_skips_test_events_and_removals():
    removed = _record("shards/x.tar", name="ObjectRemoved:Delete")
    body = json.dumps({"Records": [_record("shards%2Fmy+shard%2B1.tar"), removed]})
    [up] = parse_notification(body)
    assert up.uri == "s3://b/shards/my shard+1.tar" and up.prefix == "s3://b/shards" and up.size == 10
    assert parse_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})) == []
    sns = json.dumps({"Type": "Notification", "Message": body})  # S3 -> SNS -> SQS
    assert parse_notification(sns) == [up]
    for bad in ("not json", json.dumps({"hello": 1}), json.dumps([1])):
        with pytest.raises(ValueError):
            parse_notification(bad)


def test_dedupe_key_and_event_id_follow_the_object_version():
    a, b = ShardUpload("b", "k.tar", etag="e1"), ShardUpload("b", "k.tar", etag="e2")
    assert a.event_id == ShardUpload("b", "k.tar", etag="e1", size=3).event_id != b.event_id
    assert under_prefix(a, "s3://b/") and under_prefix(a, "k") and not under_prefix(a, "s3://other/")


def test_seen_ledger_persists_and_compacts(tmp_path):
    path = tmp_path / "seen"
    ledger = SeenLedger(path, max_entries=3)
    for i in range(6):
        ledger.add(f"k{i}")
    again = SeenLedger(path, max_entries=3)
    assert "k5" in again and "k0" not in again and len(again) == 3  # compacted to the newest 3


def test_unseen_shards_by_shard_uri_and_by_image_file():
    from rgi_core.io.shards import Shard

    shards = [Shard("s3://b/a.tar", "tar"), Shard("s3://b/b.tar", "tar"),
              Shard("s3://b/imgs", "images", ("s3://b/imgs/1.png", "s3://b/imgs/2.png"))]
    new = unseen_shards(shards, done_shards={"s3://b/a.tar"}, done_sources={"s3://b/imgs/1.png"})
    assert [s.uri for s in new] == ["s3://b/b.tar", "s3://b/imgs"]


@pytest.fixture
def queue(s3_endpoint):
    """A fresh moto SQS queue receiving s3:ObjectCreated:* notifications of a fresh bucket."""
    import boto3

    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    name = f"rgi-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket=name)
    s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    yield url, name, sqs, s3
    sqs.delete_queue(QueueUrl=url)


def _events_for(resource_prefix: str, expect: int, timeout: float = 20.0) -> list[dict]:
    """Events on the Prefect server whose resource id starts with ``resource_prefix`` (waits for ``expect``)."""
    from prefect.client.orchestration import get_client

    body = {"filter": {"event": {"name": ["rgi.shard.uploaded"]},
                       "resource": {"id_prefix": [resource_prefix]}, "order": "ASC"}, "limit": 50}
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as c:
            events = c._client.post("/events/filter", json=body).json()["events"]
        if len(events) >= expect or time.monotonic() > deadline:
            time.sleep(1.0 if len(events) == expect else 0)  # give a late duplicate the chance to show up
            with get_client(sync_client=True) as c:
                return c._client.post("/events/filter", json=body).json()["events"]
        time.sleep(0.5)


def test_watch_emits_once_per_object_skips_test_event_and_deletes(prefect_api, queue, tmp_path):
    from flows.watch import watch

    url, bucket, sqs, s3 = queue
    s3.put_object(Bucket=bucket, Key="shards/shard 000.tar", Body=b"x" * 10)  # one notification
    s3.put_object(Bucket=bucket, Key="shards/shard-000.json", Body=b"{}")  # not a shard file
    s3.put_object(Bucket=bucket, Key="other/shard-001.tar", Body=b"y")  # outside --prefix
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
    [put] = [m for m in msgs if "shard+000.tar" in m["Body"] or "shard%20000.tar" in m["Body"]]
    sqs.send_message(QueueUrl=url, MessageBody=put["Body"])  # the same notification delivered twice

    state = tmp_path / "seen"
    stats = watch(url, prefix="shards/", state=str(state), max_messages=5, wait_seconds=1, echo=lambda _: None)
    assert (stats.messages, stats.events, stats.duplicates, stats.skipped, stats.errors) == (5, 1, 1, 2, 0)
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)  # all deleted, TestEvent too

    sqs.send_message(QueueUrl=url, MessageBody=put["Body"])  # re-delivered after a restart: the state file knows
    again = watch(url, prefix="shards/", state=str(state), once=True, wait_seconds=1, echo=lambda _: None)
    assert (again.events, again.duplicates) == (0, 1)

    [event] = _events_for(f"s3://{bucket}/", expect=1)
    assert event["resource"]["prefect.resource.id"] == f"s3://{bucket}/shards/shard 000.tar"
    assert event["resource"]["rgi.prefix"] == f"s3://{bucket}/shards"
    assert event["payload"]["size"] == 10 and event["payload"]["etag"]


def test_watch_keeps_messages_it_cannot_parse(prefect_api, queue):
    from flows.watch import watch

    url, _, sqs, _ = queue
    sqs.purge_queue(QueueUrl=url)  # drop the TestEvent
    sqs.send_message(QueueUrl=url, MessageBody="not a notification")
    stats = watch(url, once=True, wait_seconds=1, visibility_timeout=0, echo=lambda _: None)
    assert (stats.messages, stats.errors, stats.deleted) == (1, 1, 0)
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"][0]["Body"] == "not a notification"


def test_rgi_watch_stops_cleanly_on_sigterm(prefect_api, queue):
    """The long-running consumer finishes the poll in hand on SIGTERM, prints its counts and exits 0."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    url, _, sqs, _ = queue
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "watch", url, "--wait-seconds", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while "Messages" in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, VisibilityTimeout=0):
            assert time.monotonic() < deadline, "rgi watch never consumed the queue's TestEvent"
            time.sleep(0.5)  # wait until the watcher is polling (it deletes the TestEvent)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "rgi watch: 1 messages, 0 events" in err
