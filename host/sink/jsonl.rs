//! JSON Lines files: one object per line, for debugging, piping to other tools, and tests.
//! At least once: rows written after the last checkpoint are written again after a crash.

use std::collections::HashMap;
use std::io::SeekFrom;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::sink::typed::TypedTable;
use crate::sink::{JsonlTarget, Layout, Misfits, RouteKind, Row, SinkError};

enum Output {
    /// Written with blocking `std::fs` calls: tokio's `File` reports a failed background
    /// write only on the next operation, so a full disk would pass one flush unnoticed.
    File {
        file: std::sync::Arc<std::fs::File>,
        regular: bool,
    },
    Stdout(tokio::io::Stdout),
    Stderr(tokio::io::Stderr),
}

pub struct JsonlSink {
    target: JsonlTarget,
    out: Output,
    buffer: Vec<u8>,
    /// The columns of this file's typed rows so far (typed layout; taken while a batch
    /// is written).
    typed: Option<TypedTable>,
}

impl JsonlSink {
    pub async fn open(target: JsonlTarget) -> Result<JsonlSink, SinkError> {
        let out = match &target {
            JsonlTarget::Stdout => Output::Stdout(tokio::io::stdout()),
            JsonlTarget::Stderr => Output::Stderr(tokio::io::stderr()),
            JsonlTarget::File(path) => {
                let io = |source| SinkError::Io {
                    target: path.display().to_string(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir).await.map_err(io)?;
                }
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(io)?;
                let regular = file.metadata().await.map_err(io)?.is_file();
                if regular {
                    drop_torn_line(&mut file).await.map_err(io)?;
                }
                Output::File {
                    file: std::sync::Arc::new(file.into_std().await),
                    regular,
                }
            }
        };
        Ok(JsonlSink {
            target,
            out,
            buffer: Vec::with_capacity(1 << 20),
            typed: None,
        })
    }

    fn name(&self) -> String {
        match &self.target {
            JsonlTarget::Stdout => "standard output".into(),
            JsonlTarget::Stderr => "standard error".into(),
            JsonlTarget::File(p) => p.display().to_string(),
        }
    }

    pub async fn write<T: Serialize>(&mut self, items: &[T]) -> Result<(), SinkError> {
        if items.is_empty() {
            return Ok(());
        }
        self.buffer.clear();
        for item in items {
            serde_json::to_writer(&mut self.buffer, item).map_err(|e| SinkError::Io {
                target: self.name(),
                source: e.into(),
            })?;
            self.buffer.push(b'\n');
        }
        self.write_buffer().await
    }

    /// Writes the lines in `buffer` out.
    async fn write_buffer(&mut self) -> Result<(), SinkError> {
        let result = match &mut self.out {
            Output::File { file, .. } => {
                let (file, buffer) = (file.clone(), std::mem::take(&mut self.buffer));
                let (result, buffer) = tokio::task::spawn_blocking(move || {
                    (std::io::Write::write_all(&mut &*file, &buffer), buffer)
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                self.buffer = buffer;
                result
            }
            Output::Stdout(s) => {
                async {
                    s.write_all(&self.buffer).await?;
                    s.flush().await
                }
                .await
            }
            Output::Stderr(s) => {
                async {
                    s.write_all(&self.buffer).await?;
                    s.flush().await
                }
                .await
            }
        };
        result.map_err(|source| SinkError::Io {
            target: self.name(),
            source,
        })
    }

    pub async fn flush(&mut self) -> Result<(), SinkError> {
        // Devices and pipes (/dev/null, a FIFO) have nothing to sync.
        if let Output::File {
            file,
            regular: true,
        } = &mut self.out
        {
            let file = file.clone();
            tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                .map_err(|source| SinkError::Io {
                    target: self.name(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The configured file and the sibling files of routed tables.
pub struct JsonlTables {
    main: JsonlSink,
    target: JsonlTarget,
    routed: HashMap<String, JsonlSink>,
    layout: Layout,
    /// A file per object: the configured file is the dead-letter file.
    per_object: bool,
}

impl JsonlTables {
    pub async fn open(
        target: JsonlTarget,
        layout: Layout,
        per_object: bool,
    ) -> Result<JsonlTables, SinkError> {
        Ok(JsonlTables {
            main: JsonlSink::open(target.clone()).await?,
            target,
            routed: HashMap::new(),
            layout,
            per_object,
        })
    }

    /// The file of `table` (`None`: the configured one), opened on first use.
    async fn output(&mut self, table: Option<&str>) -> Result<&mut JsonlSink, SinkError> {
        let Some(table) = table else {
            return Ok(&mut self.main);
        };
        if !self.routed.contains_key(table) {
            let JsonlTarget::File(path) = &self.target else {
                // Standard streams have no siblings: routed rows share the stream.
                return Ok(&mut self.main);
            };
            let sibling = path.with_file_name(format!("{table}.jsonl"));
            let sink = JsonlSink::open(JsonlTarget::File(sibling)).await?;
            self.routed.insert(table.to_string(), sink);
        }
        Ok(self.routed.get_mut(table).expect("opened above"))
    }

    /// Rows in the sink's layout; in the typed layout, a row whose fields changed type
    /// in its file is left out and returned.
    pub async fn write_rows(
        &mut self,
        table: Option<&str>,
        rows: &[Row],
    ) -> Result<Misfits, SinkError> {
        let layout = self.layout;
        let out = self.output(table).await?;
        if layout == Layout::Reference {
            out.write(rows).await?;
            return Ok(Vec::new());
        }
        let mut typed = out.typed.take().unwrap_or_default();
        let mut misfits = Vec::new();
        let mut planned = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            match typed.plan(&row.event.schema) {
                Ok(plan) => planned.push((plan, row)),
                Err(misfit) => misfits.push((i, misfit)),
            }
        }
        // A JSON line needs no stored schema: the new columns are simply there.
        typed.take_added();
        out.buffer.clear();
        for (plan, row) in &planned {
            typed.write_json(plan, row, &mut out.buffer);
            out.buffer.push(b'\n');
        }
        out.typed = Some(typed);
        if planned.is_empty() {
            return Ok(misfits);
        }
        out.write_buffer().await.map(|()| misfits)
    }

    /// A route to the file's own stem, or to its dead-letter file's; standard streams have
    /// no siblings.
    pub fn route_kind(&self, table: &str) -> RouteKind {
        let JsonlTarget::File(path) = &self.target else {
            return RouteKind::Other;
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if table == stem {
            RouteKind::Own
        } else if table == format!("{stem}_dead_letter") {
            RouteKind::DeadLetter
        } else {
            RouteKind::Other
        }
    }

    /// Dead letters go to `<stem>_dead_letter.jsonl` next to a file (with a file per
    /// object, to the configured file: `dead_letter.jsonl`), to standard error for
    /// standard output.
    pub async fn write_dead_letters<T: Serialize>(&mut self, items: &[T]) -> Result<(), SinkError> {
        match &self.target {
            JsonlTarget::File(_) if self.per_object => self.main.write(items).await,
            JsonlTarget::File(path) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.output(Some(&format!("{stem}_dead_letter")))
                    .await?
                    .write(items)
                    .await
            }
            _ => {
                if !self.routed.contains_key("") {
                    let sink = JsonlSink::open(JsonlTarget::Stderr).await?;
                    self.routed.insert(String::new(), sink);
                }
                match self.routed.get_mut("") {
                    Some(sink) => sink.write(items).await,
                    None => Ok(()),
                }
            }
        }
    }

    pub async fn flush(&mut self) -> Result<(), SinkError> {
        self.main.flush().await?;
        for sink in self.routed.values_mut() {
            sink.flush().await?;
        }
        Ok(())
    }
}

/// A crash mid-write can leave half a line at the end; cut it so the file stays valid
/// JSON Lines (the rows it held are after the checkpoint and will be written again).
async fn drop_torn_line(file: &mut tokio::fs::File) -> std::io::Result<()> {
    let len = file.metadata().await?.len();
    if len == 0 {
        return Ok(());
    }
    let mut keep = len;
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let start = keep.saturating_sub(block.len() as u64);
        let n = (keep - start) as usize;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut block[..n]).await?;
        if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        if start == 0 {
            keep = 0;
            break;
        }
        keep = start;
    }
    if keep != len {
        tracing::warn!(
            cut_bytes = len - keep,
            "Cut a torn last line left by an interrupted write."
        );
        file.set_len(keep).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn torn_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let mut sink = JsonlSink::open(JsonlTarget::File(path.clone()))
            .await
            .unwrap();
        sink.write(&[serde_json::json!({"a": 3})]).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[tokio::test]
    async fn a_file_without_newline_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "garbage").unwrap();
        JsonlSink::open(JsonlTarget::File(path.clone()))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
