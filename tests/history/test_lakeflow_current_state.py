"""The Databricks current-state pipeline (deploy/databricks/pipelines/current_state.py), checked
without Spark: its row logic (sfzb_current_state.py) runs on the typed change table sfzb-host
wrote from a simulated org (a snapshot killed on its first page and read again, then changes
with gap events), and an oracle applies the result as AUTO CDC documents it (per key, in
`sequence_by` order: deletes remove, other rows set the columns `columns_to_update` names; SCD
type 2 closes a version where the next one starts). The current state must equal the org's
records, read with its own Bulk API 2.0 query, except records a gap event left flagged.

What this does not show: Spark and AUTO CDC themselves are not run here, so `columns_to_update`
with SCD type 2 and the insert of a partial change are as we read the documentation.
"""

import sys
from pathlib import Path

import pytest

from org import (Host, Org, as_text, change_table, records_of, run_command, same,
                 start_sim)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "databricks" / "pipelines"))
import sfzb_current_state as cs  # noqa: E402

RECORDS = 4_000


@pytest.fixture(scope="module")
def written(binary, tmp_path_factory):
    """(the change table, the org's live records, every record with IsDeleted)."""
    tmp_path = tmp_path_factory.mktemp("lakeflow")
    sim, urls = start_sim(
        binary,
        "--records", str(RECORDS), "--events", "0", "--rate", "100", "--rate-for-secs", "12",
        "--page-size", "500", "--gap-every", "9", "--keepalive-ms", "200", "--seed", "21")
    try:
        run = run_command(binary, urls)
        first = Host(run, tmp_path)
        line = first.wait_for(lambda l: "Snapshot progress" in l, "the first snapshot page")
        first.kill()
        assert records_of(line) < RECORDS, line
        second = Host([*run, "--until-idle", "4"], tmp_path)
        second.process.wait(timeout=240)
        assert second.process.returncode == 0, second.log()
        org = Org(urls[1])
        everything = list(org.records(deleted=True).values())
    finally:
        sim.kill()
        sim.wait()
    table = change_table(tmp_path)
    live = {r["Id"]: r for r in everything if r["IsDeleted"] == "false"}
    return table, live, everything


def feed(table, deletes="remove"):
    """AUTO CDC's input: the pipeline's rows for every batch of the change table."""
    return [row for batch in table.to_batches() for row in cs.changes(batch, deletes).to_pylist()]


def order(row):
    s = row[cs.SEQUENCE]
    return (s["commit_timestamp"], s["snapshot"], s["replay_length"], s["replay_id"],
            s["processed_timestamp"])


def auto_cdc(rows, scd_type="1"):
    """AUTO CDC as documented, on the changes view's rows: per key, in sequence order, a delete
    removes the row (and closes its version); any other row sets the columns it lists in
    columns_to_update, the others keep their value (null for a record not seen before). Returns
    the current rows by key and, for SCD type 2, every version."""
    columns = [c for c in rows[0] if c not in cs.INTERNAL] if rows else []
    by_key = {}
    for row in rows:
        by_key.setdefault((row["org_id"], row["Id"]), []).append(row)
    current, versions = {}, []
    for key, changes in by_key.items():
        changes.sort(key=order)
        orders = [order(r) for r in changes]
        assert len(set(orders)) == len(orders), f"two changes of {key} in the same order"
        state, open_version = None, None
        for row in changes:
            at = order(row)
            if open_version is not None:
                # A delete or a newer version closes the open one.
                open_version["__END_AT"] = at
                open_version = None
            if row[cs.DELETE]:
                state = None
                continue
            state = dict(state) if state else {c: None for c in columns}
            state.update({"org_id": key[0], "Id": key[1]})
            for column in row[cs.COLUMNS_TO_UPDATE]:
                state[column] = row[column]
            if scd_type == "2":
                open_version = {**state, "__START_AT": at, "__END_AT": None}
                versions.append(open_version)
        if state is not None:
            current[key] = state
    return current, versions


def stale(records, rows):
    """Ids of `rows` (the current state, by record id) whose fields differ from the org's."""
    different = set()
    for record_id, record in records.items():
        row = rows[record_id]
        if as_text(row["commit_timestamp"]) != record["SystemModstamp"]:
            different.add(record_id)
        for name, expected in record.items():
            if name not in ("Id", "SystemModstamp", "IsDeleted") and not same(expected, row.get(name)):
                different.add(record_id)
    return different


def assert_current(live, current):
    """The current state holds exactly the org's live records; every one is equal except
    records a gap event flagged, and some were flagged."""
    rows = {key[1]: row for key, row in current.items() if not row["is_deleted"]}
    assert set(rows) == set(live), (
        f"{len(set(live) - set(rows))} records missing, {len(set(rows) - set(live))} extra")
    gapped = {i for i, row in rows.items() if row["gap"]}
    differ = stale(live, rows)
    assert gapped, "gap events flagged records"
    assert differ <= gapped, f"{len(differ - gapped)} records differ without a gap flag"
    assert len(rows) - len(gapped) > RECORDS * 0.9


def test_the_header_is_the_typed_layouts(written):
    table, _, _ = written
    assert tuple(table.schema.names[:len(cs.HEADER)]) == cs.HEADER
    kinds = set(table.column("change_type").to_pylist())
    assert {"SNAPSHOT", "CREATE", "UPDATE", "DELETE", "GAP_UPDATE"} <= kinds, kinds


def test_scd_type_1_equals_the_orgs_records_but_for_gaps(written):
    table, live, _ = written
    current, _ = auto_cdc(feed(table))
    assert not any(row["is_deleted"] for row in current.values()), "deletes remove rows"
    assert_current(live, current)


def test_scd_type_2_current_versions_are_type_1s_rows(written):
    table, live, _ = written
    rows = feed(table)
    current, _ = auto_cdc(rows)
    _, versions = auto_cdc(rows, "2")
    open_versions = {(v["org_id"], v["Id"]): v for v in versions if v["__END_AT"] is None}
    assert len(open_versions) == sum(v["__END_AT"] is None for v in versions), "one open version per record"
    strip = lambda v: {k: x for k, x in v.items() if k not in ("__START_AT", "__END_AT")}  # noqa: E731
    assert {k: strip(v) for k, v in open_versions.items()} == current
    assert len(versions) > len(current), "changed records have earlier versions"


def test_deletes_can_be_marked(written):
    table, live, everything = written
    current, _ = auto_cdc(feed(table, "mark"))
    assert_current(live, current)
    deleted = {r["Id"] for r in everything if r["IsDeleted"] == "true"}
    marked = {key[1] for key, row in current.items() if row["is_deleted"]}
    assert marked, "deletes were marked"
    assert marked <= deleted, "only deleted records are marked"


def test_an_update_sets_only_what_it_changed_or_nulled(written):
    table, _, _ = written
    fields = set(cs.field_columns(table.schema.names))
    updates = 0
    for batch in table.to_batches():
        source = [r for r in batch.to_pylist() if r["change_type"] != "GAP_OVERFLOW"]
        out = {(r["replay_id"], r["Id"]): r for r in cs.changes(batch).to_pylist()
               if r["change_type"] == "UPDATE"}
        for change in source:
            if change["change_type"] != "UPDATE":
                continue
            updates += 1
            named = set(change["changed_fields"] or []) | set(change["nulled_fields"] or [])
            row = out[(change["replay_id"], change["record_ids"][0])]
            listed = set(row[cs.COLUMNS_TO_UPDATE])
            assert listed - set(cs.META) == named & fields, change["replay_id"]
            assert "gap" not in listed, "an update leaves a gap flag as it is"
            for field in fields - named:
                assert row[field] is None, (change["replay_id"], field)
    assert updates > 100, updates


def test_settings_are_checked():
    assert cs.settings("main.salesforce.Account, main.salesforce.Contact") == (
        ["main.salesforce.Account", "main.salesforce.Contact"], "1", "remove")
    assert cs.current_table("main.salesforce.Invoice__c") == "invoice__c_current"
    for tables, scd, deletes, message in [
        ("", "1", "remove", "is empty"),
        ("salesforce.Account", "1", "remove", "not catalog.schema.table"),
        ("main.salesforce.all_changes:Contact", "1", "remove", "not catalog.schema.table"),
        ("main.a.Account,main.b.Account", "1", "remove", "account_current"),
        ("main.salesforce.Account", "3", "remove", "scd_type"),
        ("main.salesforce.Account", "1", "drop", "deletes"),
    ]:
        with pytest.raises(cs.SettingsError, match=message):
            cs.settings(tables, scd, deletes)
