"""Full history and current state, checked by readers that are not ours: a simulated org
starts with 50,000 Accounts and changes 100 of them a second for the whole run; sfzb-host
snapshots the object through Bulk API 2.0, follows the change stream from the position it
captured first, and keeps a current-state table. It is killed with SIGKILL twice (mid-snapshot
and during CDC) and started again. At the end the current-state table, read with the Python
`deltalake` package, must equal the org's records as its own Bulk API 2.0 query returns them
(Python's urllib and csv): the same record ids, every field equal, deleted ones gone.

Run from the repository root after `cargo build --release` (or `cargo test --release`), with
the tools `.ci/run` installs: `python3 -m pytest tests/history`. The binary is found as
tests/conftest.py says.
"""

import json
import re
import time
import urllib.error
import urllib.request

from org import (Host, Org, assert_equal, change_table, current_rows, records_of,
                 run_command, start_sim)

RECORDS = 50_000
RATE = 100
# Changes flow this long from the simulator's start: through the snapshot, both kills and the
# catch-up.
RATE_SECS = 45


def test_current_state_equals_the_orgs_records_after_two_kills(binary, tmp_path):
    sim, urls = start_sim(
        binary,
        "--records", str(RECORDS), "--events", "0", "--rate", str(RATE),
        "--rate-for-secs", str(RATE_SECS), "--page-size", "2000", "--keepalive-ms", "200",
        "--seed", "5")
    started = time.monotonic()
    try:
        run = run_command(binary, urls, "--current-state", "delta:./tables/account_current",
                              "--current-state-interval-secs", "1")

        first = Host(run, tmp_path)
        line = first.wait_for(lambda l: "Snapshot progress" in l, "the first snapshot page")
        first.kill()
        assert records_of(line) < RECORDS, line

        second = Host(run, tmp_path)
        second.wait_for(lambda l: "reading it again from the same stream position" in l,
                        "the snapshot read again")
        second.wait_for(lambda l: "Snapshot written" in l, "the snapshot written")
        # Changes from the stream, into both tables, then the second kill.
        second.wait_for(lambda l: "Written to" in l, "changes written after the snapshot")
        second.wait_for(lambda l: "Current state applied" in l, "changes applied")
        second.kill()

        assert time.monotonic() - started < RATE_SECS, "the kills came while changes flowed"
        third = Host([*run, "--until-idle", "4"], tmp_path)
        third.process.wait(timeout=RATE_SECS + 240)
        assert third.process.returncode == 0, third.log()
        assert not any(l and "Snapshot progress" in l for l in third.lines), \
            "a finished snapshot is not read again"

        records = Org(urls[1]).records()
    finally:
        sim.kill()
        sim.wait()

    assert len(records) > RECORDS * 0.9
    rows = current_rows(tmp_path)
    assert_equal(records, {r["Id"]: r for r in rows if not r["is_deleted"]})
    assert not any(r["is_deleted"] for r in rows), "deletes remove rows by default"
    # Both kinds of rows made it: the snapshot's and the stream's.
    kinds = {r["change_type"] for r in rows}
    assert "SNAPSHOT" in kinds and "UPDATE" in kinds, kinds


def test_gap_events_re_read_their_records_and_deletes_can_be_marked(binary, tmp_path):
    """Every 7th change reaches the stream as a GAP_UPDATE (a header, no fields): the current
    state re-reads those records through the REST API. Deletes are marked, not removed."""
    sim, urls = start_sim(
        binary,
        "--records", "400", "--events", "0", "--rate", "80", "--rate-for-secs", "6",
        "--gap-every", "7", "--keepalive-ms", "200", "--seed", "9")
    try:
        host = Host(
            run_command(binary, urls, "--current-state", "delta:./tables/account_current",
                        "--current-state-deletes", "mark", "--current-state-interval-secs", "1",
                        "--until-idle", "3"),
            tmp_path)
        host.process.wait(timeout=120)
        assert host.process.returncode == 0, host.log()
        org = Org(urls[1])
        everything = list(org.records(deleted=True).values())
    finally:
        sim.kill()
        sim.wait()

    changes = change_table(tmp_path)
    gaps = [t for t in changes.column("change_type").to_pylist() if t == "GAP_UPDATE"]
    assert len(gaps) >= 20, f"{len(gaps)} gap events"
    rows = current_rows(tmp_path)
    live = {r["Id"]: r for r in everything if r["IsDeleted"] == "false"}
    assert_equal(live, {r["Id"]: r for r in rows if not r["is_deleted"]})
    deleted = {r["Id"] for r in everything if r["IsDeleted"] == "true"}
    marked = {r["Id"] for r in rows if r["is_deleted"]}
    assert marked, "deletes were marked"
    assert marked <= deleted, "only deleted records are marked"


def test_a_gap_overflow_reads_the_object_again(binary, tmp_path):
    """At bus position 300 (6 s in, well after the host captured its position) a transaction
    updates and deletes up to 30 Accounts and reaches the stream as one GAP_OVERFLOW (no
    record id, no field). With snapshot = true sfzb-host
    reads the object again, deleted records too: the current state must equal the org's
    records, which it cannot from the change events alone."""
    sim, urls = start_sim(
        binary,
        "--records", "300", "--events", "0", "--rate", "50", "--rate-for-secs", "8",
        "--overflow-at", "300", "--keepalive-ms", "200", "--seed", "11")
    try:
        host = Host(
            run_command(binary, urls, "--current-state", "delta:./tables/account_current",
                        "--current-state-interval-secs", "1", "--until-idle", "4"),
            tmp_path)
        host.process.wait(timeout=120)
        assert host.process.returncode == 0, host.log()
        assert any(l and "GAP_OVERFLOW" in l and "reading the object again" in l
                   for l in host.lines), host.log()
        records = Org(urls[1]).records()
    finally:
        sim.kill()
        sim.wait()

    changes = change_table(tmp_path)
    kinds = changes.column("change_type").to_pylist()
    origins = changes.column("change_origin").to_pylist()
    assert kinds.count("GAP_OVERFLOW") == 1, kinds.count("GAP_OVERFLOW")
    # Both snapshots: the first of ~300 records, the second of every one made since.
    assert kinds.count("SNAPSHOT") > 540, kinds.count("SNAPSHOT")
    snapshot_deletes = [k for k, o in zip(kinds, origins)
                        if k == "DELETE" and o == "sfzb-host/snapshot"]
    assert snapshot_deletes, "the overflow's deletes came as DELETE rows of the second snapshot"
    rows = current_rows(tmp_path)
    assert_equal(records, {r["Id"]: r for r in rows if not r["is_deleted"]})
    assert not any(r["is_deleted"] for r in rows), "deletes remove rows by default"


def test_a_snapshot_asked_for_over_http_reads_the_object_again(binary, tmp_path):
    """`POST /subscriptions/snapshot` while changes flow: the subscription reads its object
    again at the position it has reached, and goes on from there; the current state still
    equals the org's records. Selections that match nothing, or nothing, are refused."""
    sim, urls = start_sim(
        binary,
        "--records", "200", "--events", "0", "--rate", "20", "--rate-for-secs", "12",
        "--keepalive-ms", "200", "--seed", "5")
    try:
        host = Host(
            run_command(binary, urls, "--current-state", "delta:./tables/account_current",
                        "--current-state-interval-secs", "1", "--until-idle", "4",
                        "--metrics-listen", "127.0.0.1:0"),
            tmp_path)
        serving = host.wait_for(lambda l: "Serving /metrics" in l, "the HTTP endpoint")
        endpoint = re.search(r"local=(\S+)", serving).group(1)
        first = host.wait_for(lambda l: "Snapshot written" in l, "the first snapshot")

        def post(query):
            request = urllib.request.Request(
                f"http://{endpoint}/subscriptions/snapshot{query}", b"", method="POST")
            try:
                with urllib.request.urlopen(request) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as error:
                return error.code, json.load(error)

        assert post("")[0] == 400
        assert post("?name=nobody")[0] == 404
        status, body = post("?channel=/data/AccountChangeEvent")
        assert status == 202, body
        assert len(body["asked"]) == 1 and not body["refused"], body
        host.wait_for(lambda l: "Snapshot asked for" in l, "the snapshot asked for", timeout=30)
        second = host.wait_for(lambda l: "Snapshot written" in l, "the second snapshot")
        assert records_of(second) > records_of(first), (first, second)
        host.process.wait(timeout=120)
        assert host.process.returncode == 0, host.log()
        records = Org(urls[1]).records()
    finally:
        sim.kill()
        sim.wait()

    changes = change_table(tmp_path)
    origins = changes.column("change_origin").to_pylist()
    # Both snapshots' records, each a row: live ones as SNAPSHOT, deleted ones (the second
    # reads the recycle bin too) as DELETE.
    from_snapshots = sum(1 for o in origins if o == "sfzb-host/snapshot")
    assert from_snapshots == records_of(first) + records_of(second), from_snapshots
    rows = current_rows(tmp_path)
    assert_equal(records, {r["Id"]: r for r in rows if not r["is_deleted"]})
