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

/// An Arrow batch of typed rows with a column per table column, each typed as the writer
/// has it, and whether it has columns the writer does not have yet (it must widen).
pub(super) fn typed_batch(
    writer: &ArrowSchema,
    columns: &[TypedColumn],
    rows: &[(Arc<Plan>, &Row)],
) -> Result<(RecordBatch, bool), deltalake::arrow::error::ArrowError> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    let mut widens = false;
    for (i, column) in columns.iter().enumerate() {
        let array = typed_array(rows, i, column.storage);
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

/// Column `i` of typed rows, stored as `storage`.
fn typed_array(rows: &[(Arc<Plan>, &Row)], i: usize, storage: Storage) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            for (plan, row) in rows {
                match plan.cell(row, i) {
                    TypedCell::$variant(v) => b.append_value(v),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match storage {
        Storage::Text => build!(StringBuilder::new(), Text),
        Storage::Int => build!(Int32Builder::new(), Int),
        Storage::Long => build!(Int64Builder::new(), Long),
        Storage::Double => build!(Float64Builder::new(), Double),
        Storage::Bool => build!(BooleanBuilder::new(), Bool),
        Storage::Bytes => build!(BinaryBuilder::new(), Bytes),
        Storage::Date => build!(Date32Builder::new(), Date),
        Storage::Timestamp => {
            let b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            build!(b, Timestamp)
        }
        Storage::TextList => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for (plan, row) in rows {
                match plan.cell(row, i) {
                    TypedCell::TextList(list) => {
                        list.iter().for_each(|v| b.values().append_value(v));
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
    }
}
