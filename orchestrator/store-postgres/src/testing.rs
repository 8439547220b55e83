//! For tests (feature `testing`): a database of its own for each test, on
//! the server that `SAGAFLOW_TEST_POSTGRES` names (a superuser URL; `cargo
//! xtask test` starts a PostgreSQL and sets it). The store's own tests and
//! the end-to-end tests of the server share it.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::PostgresStore;
use sagaflow_store::Store;
use tokio_postgres::{Client, NoTls};

pub fn admin_url() -> String {
    // Never skipped: a suite that passes without a database tests nothing.
    std::env::var("SAGAFLOW_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!("set SAGAFLOW_TEST_POSTGRES=postgres://… (cargo xtask test starts a PostgreSQL and sets it)")
    })
}

/// A connection for a test's own checks.
pub async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// `url` with its database replaced by `name`, keeping its parameters.
fn with_database(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        panic!("SAGAFLOW_TEST_POSTGRES must be a URL (postgres://user@host:port/db), not {url:?}");
    };
    let path_start = url[scheme_end..].find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let query = url[path_start..].find('?').map_or("", |i| &url[path_start + i..]);
    format!("{}/{name}{query}", &url[..path_start])
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh database, dropped with this guard.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = admin_url();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("sagaflow_test_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        // A linguistic default collation (ICU's en-US sorts "a" before "B"
        // before "_") where the server has ICU: the store must page in byte
        // order whatever the database's default, and this makes sure it does.
        let admin_client = connect(&admin).await;
        let icu = format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
             LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
        );
        if let Err(icu_error) = admin_client.batch_execute(&icu).await {
            let plain = format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'");
            admin_client
                .batch_execute(&plain)
                .await
                .unwrap_or_else(|e| panic!("creating database {name}: {e:?} (with ICU: {icu_error:?})"));
        }
        Self { url: with_database(&admin, &name), name, admin }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // The test's runtime may be the one running this drop, and cannot
        // block on itself: a thread with a runtime of its own. FORCE ends
        // the store's connections, which the test may still hold.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                connect(&admin).await.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// A store on a fresh database: the conformance suite's factory.
pub async fn fresh_store() -> (Arc<dyn Store>, TestDb) {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(&db.url).await.unwrap_or_else(|e| panic!("connecting the store: {e}"));
    (Arc::new(store), db)
}

#[cfg(test)]
#[test]
fn the_database_is_replaced_and_parameters_kept() {
    assert_eq!(with_database("postgres://u@h:5433/postgres", "t1"), "postgres://u@h:5433/t1");
    assert_eq!(with_database("postgres://u@h:5433", "t1"), "postgres://u@h:5433/t1");
    assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "t1"), "postgres://u@h/t1?sslmode=disable");
}
