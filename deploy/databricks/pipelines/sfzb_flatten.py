"""Which Avro schemas decode an sfzb-host table, kept apart from Spark so it can be tested.

Every row carries its payload (`payload_binary`) and the schema it was written with
(`schema_json`, identified by `schema_id`). Avro is not self-describing: a payload must be read
with its own writer schema. Salesforce evolves a CDC schema by adding nullable fields, so each
payload is read with its writer schema and resolved to the newest schema (Avro schema
resolution: fields the writer lacked take their default, null), and every row of a table flattens
to the same columns whatever schema it was written with. (The reference pipeline reads every
payload with the newest schema only, which misreads payloads written before a field was added.)
"""


def of_entity(rows, entity):
    """The rows of one Salesforce object, from (entity_name, timestamp, replay_id, schema_id,
    schema_json) rows; all of them when `entity` is None."""
    return [r for r in rows if entity is None or r[0] == entity]


def newest_schema(rows, entity=None):
    """The schema of the newest event (of `entity`): (schema_id, schema_json), or None for no
    payloads yet. replay_id is hex of Salesforce's big-endian counter, so it orders events
    with equal commit timestamps."""
    newest = max(
        (r for r in of_entity(rows, entity) if r[4]),
        key=lambda r: (r[1], len(r[2]), r[2]),
        default=None,
    )
    return None if newest is None else (newest[3], newest[4])


def writer_schemas(rows, entity=None):
    """Every distinct (schema_id, schema_json) of `entity`, in a stable order."""
    return sorted({(r[3], r[4]) for r in of_entity(rows, entity) if r[3] and r[4]})


def flat_table(source):
    """`catalog.schema.table` or `catalog.schema.table:Entity` → (table, entity or None, the
    flattened table's name). A table that holds several objects (`/data/ChangeEvents`, or
    routed by a transform) flattens one object per entry, since each object has its own
    columns."""
    table, _, entity = source.partition(":")
    name = table.split(".")[-1]
    if entity:
        return table, entity, f"{name}_{entity.lower()}_flat"
    return table, None, f"{name}_flat"
