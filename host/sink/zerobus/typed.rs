//! Typed tables through Zerobus: the table's columns as a protobuf descriptor generated at
//! run time, rows encoded against it, and the table created and widened through the SQL
//! Statement API before any row with a new column is sent.
//!
//! A table's columns are shared by every subscription of the process that writes it
//! ([`Shared`], one per table): they plan their rows against the same columns, and each
//! widening bumps its generation, so a stream opened with an older descriptor is replaced
//! before a row with the new columns goes out. Columns only grow and keep their protobuf
//! tag (position + 1), so a row planned earlier is valid on any newer stream.

use std::sync::Arc;

use prost::encoding::{WireType, encode_key, encode_varint};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};

use crate::sink::Row;
use crate::sink::typed::{Plan, Storage, TypedCell, TypedColumn, TypedTable};
use crate::sql::{Outcome, SqlClient, SqlError, SqlSettings, ident};

/// The message name of typed rows' descriptors.
pub const MESSAGE: &str = "TypedRow";

/// The descriptor of a typed table's rows: a proto2 field per column, named as the column,
/// tagged by its position + 1; dates as int32 days, timestamps as int64 microseconds, as
/// Zerobus maps DATE and TIMESTAMP.
pub fn descriptor(columns: &[TypedColumn]) -> DescriptorProto {
    let field = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (label, ty) = proto_type(c.storage);
            FieldDescriptorProto {
                name: Some(c.name.to_string()),
                number: Some(i as i32 + 1),
                label: Some(label as i32),
                r#type: Some(ty as i32),
                ..Default::default()
            }
        })
        .collect();
    DescriptorProto {
        name: Some(MESSAGE.into()),
        field,
        ..Default::default()
    }
}

fn proto_type(storage: Storage) -> (Label, Type) {
    match storage {
        Storage::Text => (Label::Optional, Type::String),
        Storage::Int | Storage::Date => (Label::Optional, Type::Int32),
        Storage::Long | Storage::Timestamp => (Label::Optional, Type::Int64),
        Storage::Double => (Label::Optional, Type::Double),
        Storage::Bool => (Label::Optional, Type::Bool),
        Storage::Bytes => (Label::Optional, Type::Bytes),
        Storage::TextList => (Label::Repeated, Type::String),
    }
}

/// A typed row as the protobuf message of [`descriptor`]; nulls are absent fields.
pub fn encode(plan: &Plan, row: &Row, columns: usize, buf: &mut Vec<u8>) {
    use prost::encoding::{bool, double, int32, int64};
    let bytes = |tag: u32, value: &[u8], buf: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    };
    // Fields in the header's order, then the schema's: a parser takes them in any order.
    plan.cells(row, |i, cell| {
        if i >= columns {
            return;
        }
        let tag = i as u32 + 1;
        match cell {
            TypedCell::Null => {}
            TypedCell::Text(v) => bytes(tag, v.as_bytes(), buf),
            TypedCell::Int(v) | TypedCell::Date(v) => int32::encode(tag, &v, buf),
            TypedCell::Long(v) | TypedCell::Timestamp(v) => int64::encode(tag, &v, buf),
            TypedCell::Double(v) => double::encode(tag, &v, buf),
            TypedCell::Bool(v) => bool::encode(tag, &v, buf),
            TypedCell::Bytes(v) => bytes(tag, v, buf),
            TypedCell::TextList(list) => list.iter().for_each(|v| bytes(tag, v.as_bytes(), buf)),
        }
    });
}

fn column_list(columns: &[TypedColumn]) -> String {
    columns
        .iter()
        .map(|c| format!("  {} {}", ident(&c.name), c.storage.sql()))
        .collect::<Vec<_>>()
        .join(",\n")
}

/// `CREATE TABLE` of a typed table, with row tracking off as Zerobus needs.
pub fn create_table_sql(table: &str, columns: &[TypedColumn]) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n) USING DELTA\nTBLPROPERTIES (\n  'delta.enableRowTracking' = 'false'\n) COMMENT 'Salesforce Change Data Capture events, a column per field (sfzb-host, typed layout)'",
        ident(table),
        column_list(columns)
    )
}

/// `ALTER TABLE … ADD COLUMNS` for the columns of new fields.
pub fn add_columns_sql(table: &str, columns: &[TypedColumn]) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMNS (\n{}\n)",
        ident(table),
        column_list(columns)
    )
}

/// A column type as `DESCRIBE TABLE` shows it, with the names Databricks also takes for
/// the same type; `None` for a type sfzb-host does not write.
fn storage_of_sql(text: &str) -> Option<Storage> {
    let text = text.trim().to_ascii_uppercase();
    let text = match text.as_str() {
        "INTEGER" => "INT",
        "LONG" => "BIGINT",
        "BOOL" => "BOOLEAN",
        "TIMESTAMP_LTZ" => "TIMESTAMP",
        other if other.starts_with("VARCHAR(") || other.starts_with("CHAR(") => "STRING",
        other => other,
    };
    Storage::ALL.into_iter().find(|s| s.sql() == text)
}

/// One typed table of the process: its columns and plans, the generation of its
/// descriptor, and whether the table exists yet.
pub struct Shared {
    pub table: TypedTable,
    pub generation: u64,
    /// Shared, not copied, by every write: a stream copies it only when it opens.
    pub descriptor: Arc<DescriptorProto>,
    exists: bool,
}

impl Shared {
    /// The table as the workspace has it (`DESCRIBE TABLE`), or a new one to be created
    /// with the columns of its first rows.
    pub async fn load(sql: &SqlSettings, table: &str) -> Result<Shared, SqlError> {
        let mut client = SqlClient::new(sql.clone());
        let statement = format!("DESCRIBE TABLE {}", ident(table));
        let (columns, foreign, exists) = match client.execute(&statement).await? {
            Outcome::Rows(rows) => {
                // Column rows come first; a partitioning section starts with `#`.
                let described: Vec<(String, String)> = rows
                    .iter()
                    .map_while(|row| {
                        let name = row.first()?.as_deref()?;
                        (!name.is_empty() && !name.starts_with('#')).then_some(row)
                    })
                    .filter_map(|row| {
                        Some((
                            row.first()?.clone()?,
                            row.get(1)?.clone().unwrap_or_default(),
                        ))
                    })
                    .collect();
                // Every column is kept: one of a type sfzb-host does not write stays known,
                // so its field is a misfit with the reason, not a column to add forever.
                let (mut columns, mut foreign) = (Vec::new(), Vec::new());
                for (name, sql) in described {
                    match storage_of_sql(&sql) {
                        Some(storage) => columns.push(TypedColumn {
                            name: name.as_str().into(),
                            storage,
                        }),
                        None => foreign.push((name, sql)),
                    }
                }
                (columns, foreign, true)
            }
            Outcome::Error { code, message }
                if code.contains("NOT_FOUND") || message.contains("TABLE_OR_VIEW_NOT_FOUND") =>
            {
                (Vec::new(), Vec::new(), false)
            }
            Outcome::Error { message, .. } => return Err(SqlError::Failed { statement, message }),
        };
        let typed = TypedTable::with_columns(columns).with_foreign(foreign);
        if exists
            && let Some(missing) = crate::sink::typed::HEADER
                .iter()
                .find(|(name, storage, _)| {
                    !typed
                        .columns()
                        .iter()
                        .any(|c| &*c.name == *name && c.storage == *storage)
                })
        {
            return Err(SqlError::Failed {
                statement,
                message: format!(
                    "table {table} is not a typed table (its column {} is missing or not {}): write the typed layout to a new table, or set layout = \"reference\"",
                    missing.0,
                    missing.1.sql()
                ),
            });
        }
        Ok(Shared {
            descriptor: Arc::new(descriptor(typed.columns())),
            table: typed,
            generation: 0,
            exists,
        })
    }

    /// Creates the table or adds the columns its plans added, then moves to a new
    /// descriptor generation; nothing when no column was added.
    pub async fn widen(&mut self, sql: &SqlSettings, table: &str) -> Result<(), SqlError> {
        let added = self.table.take_added();
        if added.is_empty() && self.exists {
            return Ok(());
        }
        let statement = match self.exists {
            false => create_table_sql(table, self.table.columns()),
            true => add_columns_sql(table, &added),
        };
        SqlClient::new(sql.clone()).run(&statement).await?;
        let names: Vec<&str> = added.iter().map(|c| &*c.name).collect();
        tracing::info!(table, columns = %names.join(","), created = !self.exists, "Widened typed table for a new writer schema.");
        self.exists = true;
        self.generation += 1;
        self.descriptor = Arc::new(descriptor(self.table.columns()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_and_descriptor_follow_the_columns() {
        let table = TypedTable::default();
        let ddl = create_table_sql("main.sf.Account", table.columns());
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS `main`.`sf`.`Account` (\n  `change_type` STRING,\n  `commit_timestamp` TIMESTAMP,"), "{ddl}");
        assert!(ddl.contains("'delta.enableRowTracking' = 'false'"));
        let added = [TypedColumn {
            name: "Sim_Tier__c".into(),
            storage: Storage::Text,
        }];
        assert_eq!(
            add_columns_sql("main.sf.Account", &added),
            "ALTER TABLE `main`.`sf`.`Account` ADD COLUMNS (\n  `Sim_Tier__c` STRING\n)"
        );
        let d = descriptor(table.columns());
        assert_eq!(d.field.len(), table.columns().len());
        assert_eq!(d.field[1].name(), "commit_timestamp");
        assert_eq!(d.field[1].number(), 2);
        assert_eq!(d.field[1].r#type(), Type::Int64);
        assert_eq!(d.field[7].label(), Label::Repeated);
        assert_eq!(storage_of_sql("array<string>"), Some(Storage::TextList));
        assert_eq!(storage_of_sql("int"), Some(Storage::Int));
    }
}
