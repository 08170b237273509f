"""Which Avro schemas decode an sfzb-host table, kept apart from Spark so it can be tested.

Every row carries its payload (`payload_binary`) and the schema it was written with
(`schema_json`, identified by `schema_id`). Avro is not self-describing: a payload must be read
with its own writer schema. Salesforce evolves a CDC schema by adding nullable fields, so each
payload is read with its writer schema and resolved to the newest schema (Avro schema
resolution: fields the writer lacked take their default, null), and every row of a table flattens
to the same columns whatever schema it was written with. (The reference pipeline reads every
payload with the newest schema only, which misreads payloads written before a field was added.)
"""


def newest_schema(rows):
    """The schema of the newest event, from (timestamp, replay_id, schema_id, schema_json) rows.

    replay_id is hex of Salesforce's big-endian counter, so it orders events with equal
    commit timestamps. Returns None for a table with no payloads yet.
    """
    newest = max(
        (r for r in rows if r[3]),
        key=lambda r: (r[0], len(r[1]), r[1]),
        default=None,
    )
    return None if newest is None else (newest[2], newest[3])


def writer_schemas(rows):
    """Every distinct (schema_id, schema_json), in a stable order."""
    return sorted({(r[2], r[3]) for r in rows if r[2] and r[3]})
