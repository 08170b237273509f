"""What the current-state pipeline makes of sfzb-host's typed change rows, kept apart from Spark
(plain pyarrow) so that it can be tested on rows sfzb-host wrote.

A typed change table (`layout = "typed"`, one object) holds one row per change: the 16 header
columns, then a column per field, with `changed_fields` / `nulled_fields` naming the columns an
UPDATE set (unchanged fields are null in its row). AUTO CDC keeps one row per record from such
a feed, given per change row: the key, an order (`sequence_by`), whether it is a delete, and
which columns it sets (`columns_to_update`, a column holding an array of column names; the
others keep the target's value). `changes` gives these, one row per record of a change:

| change | sets |
|---|---|
| `SNAPSHOT`, `CREATE`, `UNDELETE` | every column; `gap` false |
| `UPDATE` | the fields it changed or nulled, and the change's columns |
| `DELETE`, `GAP_DELETE` | a delete, or (deletes = "mark") `is_deleted` true |
| `GAP_CREATE`, `GAP_UPDATE`, `GAP_UNDELETE` | `gap` true: the record's fields may be stale |
| `GAP_OVERFLOW` | nothing: with `snapshot = true`, sfzb-host reads the object again and its rows follow |

The order is the one sfzb-host's own current state applies: the commit timestamp, then a
snapshot's row after a stream change with the same timestamp (a snapshot row's
`SystemModstamp` is at or after every change it includes, so it already holds that one), then
the replay id (hex of a big-endian counter: shorter is older), then when sfzb-host wrote the
row (a row written again after a crash is the same change, later).
"""

import pyarrow as pa

# The typed layout's header columns, first in every typed table (host/sink/typed.rs).
HEADER = (
    "change_type", "commit_timestamp", "commit_number", "commit_user", "transaction_key",
    "sequence_number", "change_origin", "record_ids", "changed_fields", "nulled_fields",
    "diff_fields", "org_id", "replay_id", "event_id", "schema_id", "processed_timestamp",
)
KEYS = ("org_id", "Id")
# The current-state table's columns besides the key and the fields.
META = ("is_deleted", "gap", "change_type", "commit_timestamp", "replay_id")
COLUMNS_TO_UPDATE = "_sfzb_columns_to_update"
SEQUENCE = "_sfzb_sequence"
DELETE = "_sfzb_delete"
# Columns of the changes view that are for AUTO CDC only, not the table.
INTERNAL = (COLUMNS_TO_UPDATE, SEQUENCE, DELETE)
DELETES = ("remove", "mark")
SCD_TYPES = ("1", "2")
SNAPSHOT_ORIGIN = "sfzb-host/snapshot"
FULL = ("SNAPSHOT", "CREATE", "UNDELETE")
GAPS = ("GAP_CREATE", "GAP_UPDATE", "GAP_UNDELETE")
DELETED = ("DELETE", "GAP_DELETE")


class SettingsError(ValueError):
    """A pipeline setting sfzb-host's current-state pipeline cannot use."""


def field_columns(names):
    """The field columns of a typed table with columns `names`, in order."""
    return [n for n in names if n not in HEADER]


def target_columns(fields):
    """The current-state table's columns for field columns `fields`."""
    return [*KEYS, *fields, *META]


def current_table(source):
    """`catalog.schema.Account` → `account_current`, the current-state table's name."""
    return f"{source.split('.')[-1].lower()}_current"


def settings(tables, scd_type="1", deletes="remove"):
    """The pipeline's configuration, checked: (source tables, SCD type, deletes)."""
    names = [t.strip() for t in tables.split(",") if t.strip()]
    if not names:
        raise SettingsError(
            "sfzb.current_state.tables is empty: list the typed change tables sfzb-host writes "
            "(layout = \"typed\", one object each), e.g. main.salesforce.Account,main.salesforce.Contact")
    for name in names:
        if name.count(".") != 2 or ":" in name:
            raise SettingsError(
                f"sfzb.current_state.tables: {name!r} is not catalog.schema.table; a current "
                "state needs a typed table of one object (sink zerobus:catalog.schema.{object})")
    targets = [current_table(n) for n in names]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise SettingsError(
            f"sfzb.current_state.tables: two tables would both keep {', '.join(twice)}; "
            "give each object one change table per pipeline")
    if str(scd_type) not in SCD_TYPES:
        raise SettingsError(
            f"sfzb.current_state.scd_type is {scd_type!r}: 1 keeps one row per record, "
            "2 keeps every version with __START_AT and __END_AT")
    if deletes not in DELETES:
        raise SettingsError(
            f"sfzb.current_state.deletes is {deletes!r}: remove (a deleted record's row goes) "
            "or mark (it stays with is_deleted true)")
    return names, str(scd_type), deletes


def sequence_type(schema):
    return pa.struct([
        pa.field("commit_timestamp", schema.field("commit_timestamp").type),
        pa.field("snapshot", pa.int8()),
        pa.field("replay_length", pa.int32()),
        pa.field("replay_id", pa.string()),
        pa.field("processed_timestamp", schema.field("processed_timestamp").type),
    ])


def output_schema(schema):
    """The changes view's schema from the typed change table's (a pyarrow schema)."""
    fields = field_columns(schema.names)
    return pa.schema([
        pa.field("org_id", pa.string()),
        pa.field("Id", pa.string()),
        *(schema.field(n).with_nullable(True) for n in fields),
        pa.field("is_deleted", pa.bool_()),
        pa.field("gap", pa.bool_()),
        pa.field("change_type", pa.string()),
        schema.field("commit_timestamp").with_nullable(True),
        pa.field("replay_id", pa.string()),
        pa.field(COLUMNS_TO_UPDATE, pa.list_(pa.string())),
        pa.field(SEQUENCE, sequence_type(schema)),
        pa.field(DELETE, pa.bool_()),
    ])


def changes(batch, deletes="remove"):
    """The typed change rows of `batch` (a pyarrow RecordBatch) as AUTO CDC's input: one row
    per record of each change, with its columns to update, its order and whether it deletes.
    A partial change's unlisted columns are null, so an insert of a record not seen before
    takes the same values whether AUTO CDC inserts every column or only the listed ones."""
    out_schema = output_schema(batch.schema)
    fields = field_columns(batch.schema.names)
    known = set(fields)
    full = [*fields, *META]
    stamp = ["is_deleted", "change_type", "commit_timestamp", "replay_id"]
    rows = []
    for row in batch.to_pylist():
        kind = row["change_type"]
        if kind == "GAP_OVERFLOW":
            continue
        values = {"is_deleted": False, "gap": None}
        delete = False
        if kind in FULL:
            update = full
            values.update({f: row[f] for f in fields})
            values["gap"] = False
        elif kind == "UPDATE":
            named = [*(row["changed_fields"] or []), *(row["nulled_fields"] or [])]
            named = list(dict.fromkeys(f for f in named if f in known))
            update = [*named, *stamp]
            values.update({f: row[f] for f in named})
        elif kind in DELETED:
            update = stamp
            values["is_deleted"] = True
            delete = deletes == "remove"
        elif kind in GAPS:
            update = [*stamp, "gap"]
            values["gap"] = True
        else:
            raise ValueError(
                f"change type {kind!r} (replay id {row['replay_id']}) is not one sfzb-host "
                "writes; is this a typed table of sfzb-host?")
        replay = row["replay_id"] or ""
        values.update({
            "change_type": kind,
            "commit_timestamp": row["commit_timestamp"],
            "replay_id": replay,
            COLUMNS_TO_UPDATE: update,
            SEQUENCE: {
                "commit_timestamp": row["commit_timestamp"],
                "snapshot": 1 if row["change_origin"] == SNAPSHOT_ORIGIN else 0,
                "replay_length": len(replay),
                "replay_id": replay,
                "processed_timestamp": row["processed_timestamp"],
            },
            DELETE: delete,
        })
        for record_id in row["record_ids"] or []:
            rows.append({"org_id": row["org_id"], "Id": record_id, **values})
    return pa.RecordBatch.from_pylist(rows, schema=out_schema)
