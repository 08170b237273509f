//! Rows as Arrow record batches, a column at a time, typed by the one column table.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, BinaryBuilder, Int64Builder, ListBuilder, StringBuilder};
use deltalake::arrow::datatypes::Schema as ArrowSchema;
use deltalake::arrow::record_batch::RecordBatch;

use crate::sink::columns::{Cell, Cells, Type};

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
