//! TLS to a real PostgreSQL: the test switches the server's TLS on (its own
//! CA and certificate, `ALTER SYSTEM`, a reload), connects a store that
//! verifies the certificate, then requires a client certificate for its
//! database (`pg_hba.conf`) and connects with one, and switches it all off
//! again.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TestDb, admin_url, connect};
use sagaflow_proto::v1::HistoryEvent;
use sagaflow_store::{Commit, Store};
use sagaflow_store_postgres::PostgresStore;
use tokio_postgres::Client;

/// A CA, and (for the first) a server certificate it signed for this host.
struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        Self { issuer: rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap() }
    }

    /// The server's certificate and key, in PEM.
    fn server(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }

    /// A client's certificate and key, in PEM, for the database user `user`
    /// (PostgreSQL's `cert` method maps the common name to the user).
    fn client(&self, user: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, user);
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// The server's TLS, on while this lives: its files in the data directory,
/// owned as the server wants them.
struct ServerTls {
    admin: Client,
    dir: PathBuf,
    /// `pg_hba.conf` and what it held before this changed it.
    hba: Option<(PathBuf, String)>,
}

impl ServerTls {
    /// `None` when the server's files are not on this machine (a server
    /// elsewhere, whose TLS is not ours to switch).
    async fn switch_on(ca: &Authority) -> Option<Self> {
        let admin = connect(&admin_url()).await;
        let data_dir: String = admin.query_one("SHOW data_directory", &[]).await.unwrap().get(0);
        let owner = std::fs::metadata(&data_dir).ok()?;
        let dir = Path::new(&data_dir).join(format!("sagaflow-test-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = ca.server();
        for (name, text) in [("server.crt", cert), ("server.key", key), ("root.crt", ca.issuer.pem())] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            // The server refuses a key others may read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        for setting in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            // The CA that client certificates must chain to.
            format!("ALTER SYSTEM SET ssl_ca_file = '{}'", dir.join("root.crt").display()),
            "ALTER SYSTEM SET ssl = on".to_owned(),
        ] {
            admin.batch_execute(&setting).await.unwrap();
        }
        let tls = Self { admin, dir, hba: None };
        tls.reload("on").await;
        Some(tls)
    }

    /// Reloads the configuration and waits until new sessions see `ssl`.
    async fn reload(&self, ssl: &str) {
        self.admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        for _ in 0..200 {
            let now: String = connect(&admin_url()).await.query_one("SHOW ssl", &[]).await.unwrap().get(0);
            if now == ssl {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server's ssl setting did not become {ssl} within 10 s of a reload");
    }

    /// From now on, a session to `database` must come over TLS with a
    /// client certificate (a line ahead of the others in `pg_hba.conf`).
    async fn require_client_certificates(&mut self, database: &str) {
        let path: String = self.admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
        let before = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            format!("hostssl {database} all all cert\nhostnossl {database} all all reject\n{before}"),
        )
        .unwrap();
        self.hba = Some((PathBuf::from(path), before));
        self.admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    }

    async fn switch_off(self) {
        if let Some((path, before)) = &self.hba {
            std::fs::write(path, before).unwrap();
        }
        for setting in [
            "ALTER SYSTEM RESET ssl",
            "ALTER SYSTEM RESET ssl_cert_file",
            "ALTER SYSTEM RESET ssl_key_file",
            "ALTER SYSTEM RESET ssl_ca_file",
        ] {
            self.admin.batch_execute(setting).await.unwrap();
        }
        self.reload("off").await;
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

fn with_params(url: &str, params: &str) -> String {
    format!("{url}{}{params}", if url.contains('?') { '&' } else { '?' })
}

#[tokio::test]
async fn a_store_over_tls_verifies_the_database_and_can_prove_itself_with_a_client_certificate() {
    let (ca, rogue) = (Authority::new("sagaflow test CA"), Authority::new("someone else's CA"));
    let Some(mut server_tls) = ServerTls::switch_on(&ca).await else {
        assert!(std::env::var_os("CI").is_none(), "CI runs its own PostgreSQL, on this machine");
        eprintln!(
            "SKIPPED: the PostgreSQL of SAGAFLOW_TEST_POSTGRES is not on this machine; its TLS is not ours to switch on"
        );
        return;
    };
    let user = admin_url().parse::<tokio_postgres::Config>().unwrap().get_user().unwrap_or("postgres").to_owned();
    let files = tempfile::tempdir().unwrap();
    let (ca_file, rogue_file) = (files.path().join("ca.pem"), files.path().join("rogue.pem"));
    std::fs::write(&ca_file, ca.issuer.pem()).unwrap();
    std::fs::write(&rogue_file, rogue.issuer.pem()).unwrap();

    // Everything that may fail runs before the server's TLS is switched off again.
    let db = TestDb::create().await;
    let verified = with_params(&db.url, &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()));
    let outcome = async {
        let store = PostgresStore::connect(&verified).await.map_err(|e| e.to_string())?;
        let commit = Commit {
            workflow_id: "wf".into(),
            events: vec![HistoryEvent { seq: 1, time_ms: 1, ..Default::default() }],
            ..Default::default()
        };
        store.commit(commit).await.map_err(|e| e.to_string())?.wait().await.map_err(|e| e.to_string())?;
        let last_seq = store.last_seq("wf").await.map_err(|e| e.to_string())?;
        let sessions: Vec<bool> = sessions_of(&server_tls.admin, &db.name, "ssl").await?;
        drop(store);
        let rogue_url = with_params(&db.url, &format!("sslmode=require&sslrootcert={}", rogue_file.display()));
        let refused = PostgresStore::connect(&rogue_url).await.err().map(|e| e.to_string());

        // A client certificate, where the database requires one.
        server_tls.require_client_certificates(&db.name).await;
        let without = wait_until_refused(&verified).await?;
        let (cert, key) = ca.client(&user);
        let (cert_file, key_file) = (files.path().join("client.pem"), files.path().join("client.key"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let with_cert =
            with_params(&verified, &format!("sslcert={}&sslkey={}", cert_file.display(), key_file.display()));
        let store = PostgresStore::connect(&with_cert).await.map_err(|e| format!("with a client certificate: {e}"))?;
        let client_seq = store.last_seq("wf").await.map_err(|e| e.to_string())?;
        let client_dns: Vec<Option<String>> = sessions_of(&server_tls.admin, &db.name, "client_dn").await?;
        drop(store);
        Ok::<_, String>((last_seq, sessions, refused, without, client_seq, client_dns))
    }
    .await;
    drop(db);
    server_tls.switch_off().await;

    let (last_seq, sessions, refused, without, client_seq, client_dns) = outcome.unwrap();
    println!("without a client certificate: {without}; client DNs: {client_dns:?}");
    assert!(without.contains("certificate"), "the refusal says a certificate is needed: {without}");
    assert_eq!(client_seq, 1, "a store with a client certificate reads what was written");
    let expected = format!("/CN={user}");
    assert!(
        client_dns.len() >= 2 && client_dns.iter().all(|dn| dn.as_deref() == Some(expected.as_str())),
        "every session proved itself as {expected}: {client_dns:?}"
    );
    println!("sessions encrypted: {sessions:?}; another CA: {refused:?}");
    assert_eq!(last_seq, 1, "the commit went through the encrypted connection");
    assert!(sessions.len() >= 2 && sessions.iter().all(|ssl| *ssl), "every session encrypted: {sessions:?}");
    let refused = refused.expect("a server whose certificate another CA signed must be refused");
    assert!(refused.to_lowercase().contains("certificate"), "the refusal says why: {refused}");
}

/// The error a store without a client certificate gets, once the server
/// reloaded `pg_hba.conf` (a reload is a signal: sessions opened before it
/// is read still get the old rules).
async fn wait_until_refused(url: &str) -> Result<String, String> {
    for _ in 0..200 {
        match PostgresStore::connect(url).await {
            Err(e) => return Ok(e.to_string()),
            Ok(store) => drop(store),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("a session without a client certificate was still let in 10 s after the reload".into())
}

/// `column` of `pg_stat_ssl` for each session to `database`.
async fn sessions_of<T>(admin: &Client, database: &str, column: &str) -> Result<Vec<T>, String>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let sql = format!("SELECT s.{column} FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1");
    let rows = admin.query(&sql, &[&database]).await.map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
