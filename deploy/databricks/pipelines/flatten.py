"""Lakeflow declarative pipeline: one flattened streaming table per sfzb-host table.

Configuration (set by the bundle, resources/flatten.pipeline.yml):
  sfzb.tables   comma-separated source tables written by sfzb-host, each optionally with one
                Salesforce object, e.g.
                main.salesforce.account_events,main.salesforce.all_changes:Contact
Each source `<catalog>.<schema>.<name>` gives `<name>_flat` in the pipeline's schema (with an
object, `<name>_<object>_flat`, its rows only): every column of the source row plus one column
per Salesforce field of the record, decoded from `payload_binary` (masked values stay masked:
transforms re-encode the payload).

Schema evolution: the set of schemas is read when the pipeline updates. After Salesforce adds a
field, start an update (not a full refresh): new rows flatten with the new field, older rows
get null for it. Rows whose schema appeared after the update started are kept with null fields
until the next update flattens new rows with it.
"""

from pyspark import pipelines as dp
from pyspark.sql.avro.functions import from_avro
from pyspark.sql.functions import coalesce, col, lit, struct, when
from pyspark.sql.functions import max as max_

from sfzb_flatten import flat_table, newest_schema, writer_schemas


def source_tables():
    tables = spark.conf.get("sfzb.tables", "")  # noqa: F821 (the pipeline's SparkSession)
    return [t.strip() for t in tables.split(",") if t.strip()]


def define_flat_table(source):
    table, entity, name = flat_table(source)

    @dp.table(
        name=name,
        comment=f"Salesforce change events from {source}, one column per field",
        cluster_by=["change_type"],
    )
    def flat():
        rows = [
            tuple(r)
            for r in spark.read.table(table)  # noqa: F821
            .where(col("schema_json").isNotNull())
            .groupBy("entity_name", "schema_id", "schema_json")
            .agg(max_(struct("timestamp", "replay_id")).alias("last"))
            .select("entity_name", "last.timestamp", "last.replay_id", "schema_id", "schema_json")
            .collect()
        ]
        events = spark.readStream.table(table)  # noqa: F821
        if entity is not None:
            events = events.where(col("entity_name") == lit(entity))
        newest = newest_schema(rows, entity)
        if newest is None:
            return events
        decoded = [
            when(
                col("schema_id") == lit(schema_id),
                from_avro(
                    col("payload_binary"),
                    schema_json,
                    {"mode": "PERMISSIVE", "avroSchema": newest[1]},
                ),
            )
            for schema_id, schema_json in writer_schemas(rows, entity)
        ]
        return events.withColumn("record", coalesce(*decoded)).select("*", "record.*").drop(
            "record"
        )

    return flat


for table in source_tables():
    define_flat_table(table)
