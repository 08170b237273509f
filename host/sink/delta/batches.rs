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
        for column in columns.iter().skip(self.builders.len()) {
            let mut builder = TypedBuilder::new(column.storage);
            builder.append_nulls(self.len);
            self.builders.push(builder);
        }
        let r = self.len;
        // The row's cells that have a value (a few of the columns); the columns it leaves
        // out are padded with nulls when the next value or the end comes.
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
