//! Rows as Arrow record batches, a column at a time, typed by the one column table (or,
//! for a typed table, by its columns).

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{Field, Schema as ArrowSchema};
use deltalake::arrow::record_batch::RecordBatch;

use crate::sink::Row;
use crate::sink::columns::{Cell, Cells, Type};
use crate::sink::typed::{Plan, Storage, TypedCell, TypedColumn};

fn cast(
    array: ArrayRef,
    schema: &ArrowSchema,
    index: usize,
) -> Result<ArrayRef, deltalake::arrow::error::ArrowError> {
    let target = schema.field(index).data_type();
    if array.data_type() == target {
        Ok(array)
    } else {
        deltalake::arrow::compute::cast(&array, target)
    }
}

/// An Arrow batch of `rows`, a column at a time.
pub(super) fn batch<T: Cells>(
    schema: &Arc<ArrowSchema>,
    rows: &[&T],
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let arrays = T::COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| cast(array(rows, i, column.ty), schema, i))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), arrays)
}

/// Column `i` of `rows`, whose type is `ty`.
fn array<T: Cells>(rows: &[&T], i: usize, ty: Type) -> ArrayRef {
    let wrong =
        |cell: Cell<'_>| -> ! { unreachable!("column {i} is {ty:?}, the row gave {cell:?}") };
    match ty {
        Type::Text => {
            let mut b = StringBuilder::new();
            for row in rows {
                match row.cell(i) {
                    Cell::Text(v) => b.append_value(v),
                    other => wrong(other),
                }
            }
            Arc::new(b.finish())
        }
        Type::Long => {
            let mut b = Int64Builder::new();
            for row in rows {
                match row.cell(i) {
                    Cell::Long(v) => b.append_value(v),
                    other => wrong(other),
                }
            }
            Arc::new(b.finish())
        }
        Type::TextList => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for row in rows {
                match row.cell(i) {
                    Cell::TextList(list) => list.iter().for_each(|v| b.values().append_value(v)),
                    Cell::Names(list) => list.iter().for_each(|v| b.values().append_value(v)),
                    other => wrong(other),
                }
                b.append(true);
            }
            Arc::new(b.finish())
        }
        Type::Bytes => {
            let mut b = BinaryBuilder::new();
            for row in rows {
                match row.cell(i) {
                    Cell::Bytes(v) => b.append_value(v),
                    other => wrong(other),
                }
            }
            Arc::new(b.finish())
        }
    }
}

/// Typed rows gathered until the next flush, a builder per table column, written to
/// Parquet as one batch: a write per flush rather than per fetch keeps Parquet's per-column
/// work (levels, statistics, pages) off every hundred events of a ~100-column table.
#[derive(Default)]
pub(super) struct TypedRows {
    builders: Vec<TypedBuilder>,
    len: usize,
}

impl TypedRows {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds a row; `columns` are the table's columns now: those new since the last row are
    /// null in the rows before.
    pub(super) fn push(&mut self, columns: &[TypedColumn], plan: &Plan, row: &Row) {
        let new = columns.iter().skip(self.builders.len());
        self.builders
            .extend(new.map(|column| TypedBuilder::new(column.storage)));
        let r = self.len;
        // The row's cells that have a value (a few of the columns); the rows a column has no
        // value for (those before it was added too) are nulls, padded when the next value
        // or the end comes.
        plan.cells(row, |i, cell| {
            if let Some(builder) = self.builders.get_mut(i) {
                builder.append_nulls(r - builder.len());
                builder.append(cell);
            }
        });
        self.len += 1;
    }

    /// The rows as an Arrow batch, each column typed as the writer has it, and whether it has
    /// columns the writer does not have yet (it must widen). Leaves no rows behind.
    pub(super) fn finish(
        &mut self,
        writer: &ArrowSchema,
        columns: &[TypedColumn],
    ) -> Result<(RecordBatch, bool), deltalake::arrow::error::ArrowError> {
        let TypedRows { builders, len } = std::mem::take(self);
        let mut fields = Vec::with_capacity(builders.len());
        let mut arrays = Vec::with_capacity(builders.len());
        let mut widens = false;
        for (i, (column, mut builder)) in columns.iter().zip(builders).enumerate() {
            builder.append_nulls(len - builder.len());
            let array = builder.finish();
            // The writer has the table's columns in the table's order: look by position first.
            let known = match writer.fields().get(i) {
                Some(field) if field.name() == &*column.name => Some(field.as_ref()),
                _ => writer.field_with_name(&column.name).ok(),
            };
            match known {
                Some(field) => {
                    arrays.push(if array.data_type() == field.data_type() {
                        array
                    } else {
                        deltalake::arrow::compute::cast(&array, field.data_type())?
                    });
                    fields.push(field.clone());
                }
                None => {
                    widens = true;
                    fields.push(Field::new(&*column.name, array.data_type().clone(), true));
                    arrays.push(array);
                }
            }
        }
        let batch = RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays)?;
        Ok((batch, widens))
    }
}

/// A typed column being built: a value of another form than the column's (never given: a
/// plan's cells take their column's form) is appended as null.
enum TypedBuilder {
    Text(StringBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    TextList(ListBuilder<StringBuilder>, usize),
}

impl TypedBuilder {
    fn new(storage: Storage) -> Self {
        match storage {
            Storage::Text => Self::Text(StringBuilder::new()),
            Storage::Int => Self::Int(Int32Builder::new()),
            Storage::Long => Self::Long(Int64Builder::new()),
            Storage::Double => Self::Double(Float64Builder::new()),
            Storage::Bool => Self::Bool(BooleanBuilder::new()),
            Storage::Bytes => Self::Bytes(BinaryBuilder::new()),
            Storage::Date => Self::Date(Date32Builder::new()),
            Storage::Timestamp => {
                Self::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            Storage::TextList => Self::TextList(ListBuilder::new(StringBuilder::new()), 0),
        }
    }

    fn len(&self) -> usize {
        use deltalake::arrow::array::ArrayBuilder;
        match self {
            Self::Text(b) => b.len(),
            Self::Int(b) => b.len(),
            Self::Long(b) => b.len(),
            Self::Double(b) => b.len(),
            Self::Bool(b) => b.len(),
            Self::Bytes(b) => b.len(),
            Self::Date(b) => b.len(),
            Self::Timestamp(b) => b.len(),
            Self::TextList(_, len) => *len,
        }
    }

    fn append_nulls(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            Self::Text(b) => b.append_nulls(n),
            Self::Int(b) => b.append_nulls(n),
            Self::Long(b) => b.append_nulls(n),
            Self::Double(b) => b.append_nulls(n),
            Self::Bool(b) => b.append_nulls(n),
            Self::Bytes(b) => b.append_nulls(n),
            Self::Date(b) => b.append_nulls(n),
            Self::Timestamp(b) => b.append_nulls(n),
            Self::TextList(b, len) => {
                (0..n).for_each(|_| b.append(false));
                *len += n;
            }
        }
    }

    fn append(&mut self, cell: TypedCell<'_>) {
        match (self, cell) {
            (Self::Text(b), TypedCell::Text(v)) => b.append_value(v),
            (Self::Int(b), TypedCell::Int(v)) => b.append_value(v),
            (Self::Long(b), TypedCell::Long(v)) => b.append_value(v),
            (Self::Double(b), TypedCell::Double(v)) => b.append_value(v),
            (Self::Bool(b), TypedCell::Bool(v)) => b.append_value(v),
            (Self::Bytes(b), TypedCell::Bytes(v)) => b.append_value(v),
            (Self::Date(b), TypedCell::Date(v)) => b.append_value(v),
            (Self::Timestamp(b), TypedCell::Timestamp(v)) => b.append_value(v),
            (Self::TextList(b, len), TypedCell::TextList(list)) => {
                list.iter().for_each(|v| b.values().append_value(v));
                b.append(true);
                *len += 1;
            }
            (builder, _) => builder.append_nulls(1),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Text(mut b) => Arc::new(b.finish()),
            Self::Int(mut b) => Arc::new(b.finish()),
            Self::Long(mut b) => Arc::new(b.finish()),
            Self::Double(mut b) => Arc::new(b.finish()),
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::Bytes(mut b) => Arc::new(b.finish()),
            Self::Date(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish()),
            Self::TextList(mut b, _) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::salesforce::schema::{EventMeta, decode_event};
    use crate::sim::catalog::{ADDED_FIELD, Entity};
    use crate::sim::generator::{Position, generate};
    use crate::sink::typed::{Layout, TypedTable};
    use deltalake::arrow::array::Array;

    #[test]
    fn rows_gathered_across_a_schema_change_leave_the_new_column_null_before_it() {
        let entity = Entity::load("Account").unwrap().unwrap();
        let row = |schema: &Arc<crate::event::EventSchema>, seq: u64| {
            let generated = generate(&entity, schema, 7, Position { index: seq, seq }, false);
            let meta = EventMeta {
                org_id: "00Dorg".into(),
                channel: "/data/AccountChangeEvent".into(),
                replay_id: crate::event::ReplayId::new(bytes::Bytes::from(vec![0, seq as u8])),
                event_id: generated.event_id.clone(),
            };
            let event = decode_event(schema, meta, generated.payload).unwrap();
            Row::with_layout(event, 0, Layout::Typed)
        };
        let mut table = TypedTable::default();
        let mut rows = TypedRows::default();
        for seq in 0..2 {
            let row = row(&entity.schema, seq);
            let plan = table.plan(&row.event.schema).unwrap();
            rows.push(table.columns(), &plan, &row);
        }
        // The writer has the table as it was before the change.
        let writer = ArrowSchema::new(
            table
                .columns()
                .iter()
                .map(|c| {
                    let ty = TypedBuilder::new(c.storage).finish().data_type().clone();
                    Field::new(&*c.name, ty, true)
                })
                .collect::<Vec<_>>(),
        );
        let mut changed = row(&entity.changed_schema, 2);
        let by = Arc::from("test");
        let tier = crate::event::Value::Text("Gold".into());
        assert!(changed.event.set(ADDED_FIELD, tier, &by));
        let plan = table.plan(&changed.event.schema).unwrap();
        rows.push(table.columns(), &plan, &changed);
        assert_eq!(rows.len(), 3);

        let (batch, widens) = rows.finish(&writer, table.columns()).unwrap();
        assert!(widens, "the added column is not in the writer's schema");
        assert_eq!(rows.len(), 0, "finishing leaves no rows behind");
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.num_columns(), table.columns().len());
        let added = batch.column_by_name(ADDED_FIELD).expect("the added column");
        assert!(
            added.is_null(0) && added.is_null(1),
            "rows before the change"
        );
        let replay = batch.column_by_name("replay_id").unwrap();
        let replay = replay
            .as_any()
            .downcast_ref::<deltalake::arrow::array::StringArray>()
            .unwrap();
        assert_eq!(
            (0..3).map(|i| replay.value(i)).collect::<Vec<_>>(),
            ["0000", "0001", "0002"],
            "rows in the order they came"
        );
    }
}
