//! Test databases: a fresh SQLite file or a fresh PostgreSQL database per test,
//! removed when the test ends.

#![allow(dead_code)]

use std::time::Duration;

use onepd_adapters::store::postgres::{create_database, drop_database};
use onepd_adapters::{EventLog, MasterKey, StoreConfig};
use onepd_domain::{AppendRequest, EventId, ExpectedVersion, NewEvent, StreamId, WorkspaceId};
use serde_json::json;
use uuid::Uuid;

/// The server the PostgreSQL half of the suite runs against.
pub fn postgres_admin_url() -> String {
    std::env::var("ONEPD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Which backend a conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One fresh database, dropped (or deleted) when this is dropped.
pub struct TestDb {
    pub url: String,
    pub master: MasterKey,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("onepd.db").display());
                TestDb { url, master: MasterKey::generate(), _dir: Some(dir), pg_name: None }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!("onepd_test_{}", Uuid::new_v4().simple());
                let url = create_database(&admin, &name).await.unwrap_or_else(|err| {
                    panic!("PostgreSQL at {admin} is required for the PostgreSQL half of the suite: {err}")
                });
                TestDb { url, master: MasterKey::generate(), _dir: None, pg_name: Some(name) }
            }
        }
    }

    pub fn config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(self.url.clone(), Some(self.master.clone()));
        config.poll_interval = Duration::from_millis(200);
        config
    }

    pub async fn open(&self) -> EventLog {
        EventLog::open(self.config()).await.expect("open event log")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside any runtime guarantee, so use a thread with its own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let _ = runtime.block_on(drop_database(&postgres_admin_url(), &name));
            })
            .join();
        }
    }
}

pub fn workspace(n: u128) -> WorkspaceId {
    WorkspaceId(Uuid::from_u128(n))
}

pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("stream id")
}

/// A track-like event of `workspace` with a fresh id.
pub fn event(workspace_id: WorkspaceId, name: &str) -> NewEvent {
    NewEvent {
        event_id: EventId(Uuid::now_v7()),
        workspace_id,
        event_type: "MessageAccepted".into(),
        schema_version: 1,
        data: json!({ "type": "track", "event": name }),
        metadata: json!({ "source": "test" }),
        subject: None,
    }
}

pub fn request(stream_id: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest { stream_id: stream(stream_id), expected, events }
}

/// Stamps out each named behaviour (an `async fn(Backend)` of the test file)
/// as two tests, `sqlite::<name>` and `postgres::<name>`.
#[allow(unused_macros)]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}
