//! The PostgreSQL store (`checkpoint-store = "postgres"`): a table of checkpoints in
//! PostgreSQL or Databricks Lakebase, created if missing, written by one upsert statement
//! per commit (every changed key as arrays, through `unnest`), so ten thousand
//! subscriptions cost one round trip per interval. One connection per process, opened on
//! first use and again after it broke.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::SslMode;

use super::{CheckpointError, CheckpointKey, Rows, Stored};
use crate::event::ReplayId;

/// Where the table is.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// A libpq connection string or URL; it holds the password, so it is never printed.
    pub url: SecretString,
    /// The table, `name` or `schema.name`.
    pub table: String,
}

impl PostgresSettings {
    /// Checks the connection string and names it without its password, for the plan.
    pub fn describe(url: &str) -> Result<String, String> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Ok(format!(
            "{}@{}:{port}/{}",
            config.get_user().unwrap_or("(user)"),
            hosts.join(","),
            config.get_dbname().unwrap_or("(database)")
        ))
    }
}

/// How long connecting or one statement may take before the commit fails (and is tried
/// again at the next interval).
const TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct PostgresStore {
    settings: PostgresSettings,
    /// The table as a quoted identifier.
    table: String,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    rows: Rows,
}

impl PostgresStore {
    pub(super) fn new(settings: PostgresSettings) -> PostgresStore {
        PostgresStore {
            table: quote_ident(&settings.table),
            settings,
            client: tokio::sync::Mutex::new(None),
            rows: Rows::new(),
        }
    }

    pub(super) async fn load(
        &self,
        key: &CheckpointKey,
    ) -> Result<Option<ReplayId>, CheckpointError> {
        let replay = self.rows.get(&key.id(), || self.read_all()).await?;
        match replay {
            None => Ok(None),
            Some(hex) => ReplayId::from_hex(&hex)
                .map(Some)
                .map_err(|e| CheckpointError::Corrupt {
                    path: format!(
                        "PostgreSQL table {} (channel {})",
                        self.settings.table, key.channel
                    )
                    .into(),
                    detail: format!("replay_id: {e}"),
                }),
        }
    }

    async fn read_all(&self) -> Result<HashMap<String, String>, CheckpointError> {
        let statement = format!(
            "SELECT org_id, channel, target, replay_id FROM {}",
            self.table
        );
        let rows = self
            .with_client("read the checkpoints", |client| {
                let statement = statement.clone();
                async move { client.query(&statement, &[]).await }
            })
            .await?;
        // A table made by hand with other types or NULLs is an error, not a panic.
        let text = |row: &tokio_postgres::Row, i| {
            row.try_get::<_, String>(i)
                .map_err(|e| CheckpointError::Postgres {
                    action: "read the checkpoints",
                    detail: format!(
                        "{e}; the table needs text columns org_id, channel, target, replay_id"
                    ),
                })
        };
        rows.iter()
            .map(|row| {
                let id = super::id(&text(row, 0)?, &text(row, 1)?, &text(row, 2)?);
                Ok((id, text(row, 3)?))
            })
            .collect()
    }

    /// Every changed checkpoint in one statement.
    pub(super) async fn write(&self, changed: &[Stored]) -> Result<(), CheckpointError> {
        let column = |f: fn(&Stored) -> &str| changed.iter().map(f).collect::<Vec<&str>>();
        let (orgs, channels, targets, replays) = (
            column(|s| &s.org_id),
            column(|s| &s.channel),
            column(|s| &s.target),
            column(|s| &s.replay_id),
        );
        let statement = format!(
            "INSERT INTO {} (org_id, channel, target, replay_id, updated_at) \
             SELECT o, c, t, r, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(o, c, t, r) \
             ON CONFLICT (org_id, channel, target) DO UPDATE SET replay_id = EXCLUDED.replay_id, updated_at = EXCLUDED.updated_at",
            self.table
        );
        self.with_client("write the checkpoints", |client| {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&orgs, &channels, &targets, &replays];
            let statement = statement.clone();
            async move { client.execute(&statement, &params).await }
        })
        .await?;
        // Read again at the next load: a subscription restarting after this commit
        // resumes from it, not from the rows read before.
        self.rows.forget().await;
        Ok(())
    }

    /// Runs `work` on the connection (opened first if there is none or it broke), within
    /// [`TIMEOUT`].
    async fn with_client<T, F, Fut>(
        &self,
        action: &'static str,
        work: F,
    ) -> Result<T, CheckpointError>
    where
        F: FnOnce(Arc<tokio_postgres::Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let failed = |detail: String| CheckpointError::Postgres { action, detail };
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            // The whole of it: TCP, TLS, login and the table, not only the TCP connect.
            let connected = tokio::time::timeout(TIMEOUT, self.connect())
                .await
                .map_err(|_| CheckpointError::Postgres {
                    action: "connect",
                    detail: format!("no answer within {} s", TIMEOUT.as_secs()),
                })??;
            *slot = Some(Arc::new(connected));
        }
        let client = slot.clone().expect("connected above");
        match tokio::time::timeout(TIMEOUT, work(client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(failed(error_text(&e))),
            Err(_) => {
                // A connection that stopped answering is not used again.
                *slot = None;
                Err(failed(format!("no answer within {} s", TIMEOUT.as_secs())))
            }
        }
    }

    /// Connects (TLS unless `sslmode=disable`) and creates the table if it is missing.
    async fn connect(&self) -> Result<tokio_postgres::Client, CheckpointError> {
        let failed = |detail: String| CheckpointError::Postgres {
            action: "connect",
            detail,
        };
        let mut config: tokio_postgres::Config = self
            .settings
            .url
            .expose_secret()
            .parse()
            .map_err(|e: tokio_postgres::Error| failed(error_text(&e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        config.application_name("sfzb-host");
        // libpq's default, prefer, falls back to plaintext when the server declines TLS:
        // the password could cross in the clear. TLS unless sslmode=disable says otherwise.
        if config.get_ssl_mode() == SslMode::Prefer {
            config.ssl_mode(SslMode::Require);
        }
        let client = if config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| failed(error_text(&e)))?;
            tokio::spawn(watch(connection));
            client
        } else {
            let (client, connection) = config
                .connect(tls())
                .await
                .map_err(|e| failed(error_text(&e)))?;
            tokio::spawn(watch(connection));
            client
        };
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (org_id text NOT NULL, channel text NOT NULL, target text NOT NULL, replay_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (org_id, channel, target))",
            self.table
        );
        match client.batch_execute(&create).await {
            Ok(()) => {}
            // Two processes creating it at once: the other one won.
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_TABLE) => {}
            Err(e) => {
                return Err(CheckpointError::Postgres {
                    action: "create the checkpoint table",
                    detail: error_text(&e),
                });
            }
        }
        tracing::info!(table = %self.settings.table, "Connected to the PostgreSQL checkpoint store.");
        Ok(client)
    }
}

/// Drives the connection; its end is the next statement's error (and a reconnect).
async fn watch<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        tracing::warn!(error = %error_text(&error), "PostgreSQL checkpoint store connection ended; the next commit reconnects.");
    }
}

/// The server's message with its detail, or the client's error with its cause.
fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// rustls with the ring provider (the one the rest of the host uses) and the system's
/// roots: Lakebase and managed PostgreSQL services present publicly trusted certificates.
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// `schema.table` as `"schema"."table"` (a quote inside is doubled): no name can change a
/// statement.
fn quote_ident(table: &str) -> String {
    table
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_the_password_is_never_described() {
        assert_eq!(quote_ident("sfzb.checkpoints"), "\"sfzb\".\"checkpoints\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let described =
            PostgresSettings::describe("postgres://sfzb:hunter2@db.example:6543/state").unwrap();
        assert_eq!(described, "sfzb@db.example:6543/state");
        let described =
            PostgresSettings::describe("host=127.0.0.1 user=u password=hunter2 dbname=d").unwrap();
        assert!(!described.contains("hunter2"), "{described}");
        assert!(PostgresSettings::describe("postgres://[::1").is_err());
    }
}
