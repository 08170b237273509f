"""Lakeflow declarative pipeline: a current-state table per typed change table, by AUTO CDC.

Configuration (set by the bundle, resources/current_state.pipeline.yml):
  sfzb.current_state.tables    comma-separated typed change tables sfzb-host writes through
                               Zerobus (layout = "typed", one object each, e.g. with
                               snapshot = true), e.g. main.salesforce.Account,main.salesforce.Contact
  sfzb.current_state.scd_type  1 (one row per record, the default) or 2 (every version, with
                               __START_AT and __END_AT)
  sfzb.current_state.deletes   remove (the default) or mark (is_deleted true)
Each source `<catalog>.<schema>.<Object>` gives `<object>_current` in the pipeline's schema:
`org_id`, `Id`, a column per field, `is_deleted`, `gap`, and the last change's `change_type`,
`commit_timestamp`, `replay_id`. What each change sets is in sfzb_current_state.py: an UPDATE
only the fields it changed or nulled, so its unchanged (null) fields keep their values.

A gap event (GAP_CREATE, GAP_UPDATE, GAP_UNDELETE) carries no field: the pipeline cannot read
the record from Salesforce, so it sets `gap` true and the record's next full change (a snapshot
after a GAP_OVERFLOW, an undelete) sets it false; read such records again if they matter.
After Salesforce adds a field, start an update: the new column is added from the change table.
"""

from pyspark import cloudpickle
from pyspark import pipelines as dp
from pyspark.sql.functions import col
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

import sfzb_current_state as cs

# mapInArrow runs `cs.changes` on the workers, which do not have the pipeline's files.
cloudpickle.register_pickle_by_value(cs)

conf = spark.conf  # noqa: F821 (the pipeline's SparkSession)
TABLES, SCD_TYPE, DELETES = cs.settings(
    conf.get("sfzb.current_state.tables", ""),
    conf.get("sfzb.current_state.scd_type", "1"),
    conf.get("sfzb.current_state.deletes", "remove"),
)


def define_current_state(source):
    name = cs.current_table(source)
    view = f"{name}_changes"
    arrow = cs.output_schema(to_arrow_schema(spark.read.table(source).schema))  # noqa: F821
    deletes = DELETES

    @dp.temporary_view(name=view, comment=f"The changes of {source}, one row per record")
    def changes():
        return spark.readStream.table(source).mapInArrow(  # noqa: F821
            lambda batches: (cs.changes(b, deletes) for b in batches), from_arrow_schema(arrow)
        )

    dp.create_streaming_table(
        name=name, comment=f"The current state of each record of {source}, by sfzb-host"
    )
    dp.create_auto_cdc_flow(
        target=name,
        source=view,
        keys=list(cs.KEYS),
        sequence_by=col(cs.SEQUENCE),
        columns_to_update=col(cs.COLUMNS_TO_UPDATE),
        apply_as_deletes=col(cs.DELETE),
        except_column_list=list(cs.INTERNAL),
        stored_as_scd_type=SCD_TYPE,
    )


for table in TABLES:
    define_current_state(table)
