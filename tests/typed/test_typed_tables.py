"""The typed layout read back by Delta and Avro readers that are not ours: the Python
`deltalake` package reads the tables sfzb-host wrote, fastavro decodes the events' Avro
payloads from a reference-layout run of the same events, and every column of every typed row
must equal the payload's value flattened by the README's rule ("Typed tables").

Run from the repository root after `cargo build --release` (or `cargo test --release`), with
the tools `.ci/run` installs: `python3 -m pytest tests/typed`. The binary is found as
tests/conftest.py says.
"""

import base64
import datetime
import io
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MASK = REPO / "guest-transforms/prebuilt/mask.wasm"
UTC = datetime.timezone.utc


def run(args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


# The README's rule, written again here from its text.


def salesforce_type(doc):
    parts = (doc or "").split(":")
    return parts[1] if len(parts) > 1 else ""


def child_column(parent, sf_type, child):
    if sf_type == "Address":
        return (parent[: -len("Address")] if parent.endswith("Address") else parent) + child
    if sf_type == "Location":
        return f"{parent[:-3]}__{child}__s" if parent.endswith("__c") else parent + child
    if sf_type.endswith("PersonName"):
        return child
    return f"{parent}_{child}"


def branches(avro_type):
    return [t for t in avro_type if t != "null"] if isinstance(avro_type, list) else [avro_type]


def convert(value, avro_type, sf_type):
    """A decoded Avro value as the typed column holds it, read back through pyarrow."""
    if value is None:
        return None
    if avro_type == "long" and sf_type == "DateTime":
        return datetime.datetime.fromtimestamp(value / 1000, UTC)
    if avro_type == "long" and sf_type in ("Date", "DateOnly", "Birthday"):
        return datetime.date(1970, 1, 1) + datetime.timedelta(days=value // 86_400_000)
    if avro_type == "long" and sf_type in ("TimeOnly", "Time"):
        ms = value % 86_400_000
        return f"{ms // 3_600_000:02}:{ms // 60_000 % 60:02}:{ms // 1000 % 60:02}.{ms % 1000:03}Z"
    return value


def flatten(schema, record):
    """Column → value of one event, by the documented rule; `renames` maps a compound
    child's header name (`BillingAddress.City`) to its column, and a whole compound field's
    (`BillingAddress`) to all of its columns (its own text column first, if it has one)."""
    named = {}

    def collect(t):
        if isinstance(t, dict) and t.get("type") == "record":
            named[t["name"]] = t
            for f in t["fields"]:
                for b in branches(f["type"]):
                    collect(b)

    collect(schema)
    columns, renames = {}, {}
    for field in schema["fields"][1:]:
        name, sf_type, value = field["name"], salesforce_type(field.get("doc")), record[field["name"]]
        placed = False
        for branch in branches(field["type"]):
            compound = named.get(branch) if isinstance(branch, str) else (
                branch if isinstance(branch, dict) and branch.get("type") == "record" else None)
            if compound:
                whole = renames.setdefault(name, [name] if placed else [])
                for child in compound["fields"]:
                    column = child_column(name, sf_type, child["name"])
                    renames[f"{name}.{child['name']}"] = [column]
                    whole.append(column)
                    child_value = value.get(child["name"]) if isinstance(value, dict) else None
                    (child_type,) = branches(child["type"])
                    columns[column] = convert(child_value, child_type, salesforce_type(child.get("doc")))
            elif not placed:
                columns[name] = None if isinstance(value, dict) else convert(value, branch, sf_type)
                placed = True
    return columns, renames


def test_typed_tables_hold_every_field_as_the_payload_has_it(binary, tmp_path):
    import deltalake
    import fastavro

    sim = subprocess.Popen(
        [binary, "sim", "--port", "0", "--login-port", "0", "--entities", "Account,Contact",
         "--events", "100", "--schema-change-at", "101"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    common = ["--username", "u", "--password", "p", "--channel", "/data/ChangeEvents",
              "--until-idle", "2", "--transform", MASK,
              "--transform-config", "mask.fields=Phone", "--transform-config", "mask.mode=redact"]
    try:
        urls = [sim.stdout.readline().split(":", 1)[1].strip() for _ in range(2)]
        endpoints = ["--pubsub-endpoint", urls[0], "--instance-url", urls[1]]
        run([binary, "run", *endpoints, *common, "--sink", "delta:./tables/{object}",
             "--layout", "typed", "--state-dir", "typed-state"], cwd=tmp_path)
        # The same events in the reference layout: their payloads (masked, as the typed
        # run wrote them) and writer schemas, to decode independently.
        run([binary, "run", *endpoints, *common, "--sink", "jsonl:reference.jsonl",
             "--state-dir", "reference-state"], cwd=tmp_path)
    finally:
        sim.kill()
        sim.wait()

    reference = [json.loads(line) for line in (tmp_path / "reference.jsonl").read_text().splitlines()]
    assert len(reference) == 200
    tables = {p.name for p in (tmp_path / "tables").iterdir()}
    assert tables == {"Account", "Contact", "dead_letter"}, tables

    masked = compared = 0
    for entity in ("Account", "Contact"):
        table = deltalake.DeltaTable(str(tmp_path / "tables" / entity))
        operations = [h["operation"] for h in reversed(table.history())]
        assert operations[0] == "CREATE TABLE"
        # The new field's column arrives in a schema change of its own, before any row has it.
        assert operations.count("ADD COLUMN") == 2, operations
        rows = {r["replay_id"]: r for r in table.to_pyarrow_table().to_pylist()}
        mine = [r for r in reference if r["entity_name"] == entity]
        assert len(rows) == len(mine) == 100
        columns = set(next(iter(rows.values())))
        schema_ids = set()
        for ref in mine:
            row = rows[ref["replay_id"]]
            schema = json.loads(ref["schema_json"])
            record = fastavro.schemaless_reader(
                io.BytesIO(base64.b64decode(ref["payload_binary"])), fastavro.parse_schema(schema))
            header = record["ChangeEventHeader"]
            fields, renames = flatten(schema, record)
            for column, value in fields.items():
                assert row[column] == value, (entity, ref["replay_id"], column, row[column], value)
                compared += value is not None
            # Columns of fields this writer schema lacks (added later) are null.
            header_columns = {"change_type", "commit_timestamp", "commit_number", "commit_user",
                              "transaction_key", "sequence_number", "change_origin", "record_ids",
                              "changed_fields", "nulled_fields", "diff_fields", "org_id",
                              "replay_id", "event_id", "schema_id", "processed_timestamp"}
            for column in columns - set(fields) - header_columns:
                assert row[column] is None, (entity, ref["replay_id"], column)
            assert row["change_type"] == header["changeType"]
            assert row["commit_timestamp"] == datetime.datetime.fromtimestamp(header["commitTimestamp"] / 1000, UTC)
            assert row["commit_number"] == header["commitNumber"]
            assert row["commit_user"] == header["commitUser"]
            assert row["transaction_key"] == header["transactionKey"]
            assert row["sequence_number"] == header["sequenceNumber"]
            assert row["change_origin"] == header["changeOrigin"]
            assert row["record_ids"] == header["recordIds"]
            for name in ("changed_fields", "nulled_fields", "diff_fields"):
                expected = [c for f in ref[name] for c in renames.get(f, [f])]
                assert row[name] == expected, (ref["replay_id"], name)
            assert row["org_id"] == ref["org_id"]
            assert row["event_id"] == ref["event_id"]
            assert row["schema_id"] == ref["schema_id"]
            schema_ids.add(ref["schema_id"])
            masked += row.get("Phone") == "REDACTED"
        assert len(schema_ids) == 2, f"{entity}: the schema changed halfway"
        added = [c for c in columns if c == "Sim_Tier__c"]
        assert added, "the new field has its column"
        assert any(r["Sim_Tier__c"] for r in rows.values()), "rows after the change fill it"
    assert masked > 0, "masked values land in the typed columns"
    assert compared > 1000, f"only {compared} values were not null"
