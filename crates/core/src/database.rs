//! Where precis keeps what outlives a process (the result cache, batch
//! jobs): an embedded SQLite file, the default for one machine, or a
//! PostgreSQL server that several replicas and workers share.
//!
//! This module holds what both stores need of an engine: which database a
//! setting names ([`Database`]); connections to it ([`Pool`]: one SQLite
//! connection, or a PostgreSQL pool on a runtime of its own, so that
//! model worker threads, the CLI and the job runner all use it alike);
//! one small interface the stores write their SQL against, once for both
//! engines ([`Sql`]); and versioned migrations applied at start
//! ([`migrate`]).
//!
//! **Secrets.** A URL's password is never shown: [`Database`]'s `Display`
//! (what logs, errors and `precis cache stats` print) leaves it out.
//!
//! **TLS.** A connection negotiates TLS with rustls as the URL's `sslmode`
//! says, with libpq's meanings: `disable`; `prefer` (the default) and
//! `require` encrypt without checking the server's certificate, unless
//! `sslrootcert=FILE` names a root certificate; `verify-ca` and
//! `verify-full` check it (chain and host name) against the web's root
//! certificates and those of `sslrootcert` (a private CA, as managed
//! databases use).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use precis_backend::Cause;

/// The database a setting names.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file on this machine.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by its `postgres://` URL.
    Postgres(PostgresUrl),
}

/// A `postgres://` (or `postgresql://`) URL, password included; shown
/// without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl Database {
    /// The database `text` names: a `postgres://` or `postgresql://` URL,
    /// or an SQLite file (`sqlite://PATH`, `sqlite:PATH` or a plain path).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            // Parsed now so that a typo is refused at start, not at first use.
            PostgresUrl::config(text)?;
            return Ok(Self::Postgres(PostgresUrl(text.to_string())));
        }
        let path = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
            .unwrap_or(text);
        if path.is_empty() {
            return Err(
                "the database is empty: give a postgres://user@host/db URL or an SQLite file path"
                    .into(),
            );
        }
        if path.contains("://") {
            return Err(format!(
                "`{}` is not a database precis can use: give a postgres://user@host/db URL or an SQLite file path",
                redact(text)
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// The SQLite file, when it is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(p) => Some(p),
            Self::Postgres(_) => None,
        }
    }
}

impl FromStr for Database {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Database({self})")
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

/// `url` with the password of its user-info part replaced by `***`, and
/// a `password=` query parameter's value likewise.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => authority.to_string(),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

impl PostgresUrl {
    /// The URL as given, password included: for handing it to another
    /// process, never for showing.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The driver's configuration and the CA file the URL names, if any
    /// (`sslrootcert` is ours: the driver does not know it).
    fn config(url: &str) -> Result<(tokio_postgres::Config, Tls), String> {
        let mut root_cert = None;
        let mut mode = "prefer".to_string();
        let url = match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| match p.split_once('=') {
                        Some(("sslrootcert", file)) => {
                            root_cert = Some(PathBuf::from(file));
                            false
                        }
                        Some(("sslmode", m)) => {
                            mode = m.to_string();
                            false
                        }
                        _ => true,
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        };
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| format!("the database URL {} is not valid: {e}", redact(&url)))?;
        use tokio_postgres::config::SslMode;
        // libpq's modes: `prefer` and `require` encrypt without checking
        // the certificate unless a root certificate is named; the `verify`
        // modes check it (chain and host name).
        let (ssl, verify) = match mode.as_str() {
            "disable" => (SslMode::Disable, false),
            "allow" | "prefer" => (SslMode::Prefer, root_cert.is_some()),
            "require" => (SslMode::Require, root_cert.is_some()),
            "verify-ca" | "verify-full" => (SslMode::Require, true),
            other => {
                return Err(format!(
                    "sslmode `{other}` in the database URL is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        };
        config.ssl_mode(ssl);
        if config.get_application_name().is_none() {
            config.application_name("precis");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok((config, Tls { verify, root_cert }))
    }
}

/// How a connection's TLS is checked.
struct Tls {
    /// Whether the server's certificate must chain to a trusted root and
    /// name the host.
    verify: bool,
    /// PEM certificates trusted besides the web's roots.
    root_cert: Option<PathBuf>,
}

/// The runtime every PostgreSQL connection of the process lives on: its
/// own worker thread, so that synchronous callers (model worker threads,
/// the CLI without a runtime) and asynchronous ones share one pool.
fn runtime() -> Result<&'static tokio::runtime::Runtime, Cause> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("precis-db")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the database runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| Cause::from(e.clone()))
}

/// Most connections one process keeps to the server.
const POOL_SIZE: usize = 8;

/// How long a statement may wait for a free connection, or for a new
/// one to be made, before it fails.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Connections to one database, either engine: a single SQLite connection
/// behind a lock, or a pool of PostgreSQL connections (see the module's
/// documentation). The stores write their statements once, against
/// [`Sql`], and run them through [`Pool::with`].
pub struct Pool {
    connections: Connections,
    database: Database,
}

enum Connections {
    Sqlite(std::sync::Mutex<rusqlite::Connection>),
    Postgres(deadpool_postgres::Pool),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.database)
    }
}

/// The process's PostgreSQL pool for `url`: made on first use, then shared
/// (the cache and the job store use one pool, [`POOL_SIZE`] connections).
fn postgres_pool(url: &PostgresUrl) -> Result<deadpool_postgres::Pool, Cause> {
    static POOLS: OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, deadpool_postgres::Pool>>,
    > = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| cause("the pool registry's lock is poisoned"))?;
    if let Some(pool) = pools.get(&url.0) {
        return Ok(pool.clone());
    }
    let (config, tls) = PostgresUrl::config(&url.0)?;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&tls)?);
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .build()
        .map_err(cause)?;
    pools.insert(url.0.clone(), pool.clone());
    Ok(pool)
}

/// The error of a statement or of getting a connection, as a cause.
fn cause(e: impl std::fmt::Display) -> Cause {
    Cause::from(e.to_string())
}

/// An error with the causes under it, each said once: "error connecting
/// to server: Connection refused", or the driver's "db error" followed by
/// what the server said.
fn with_sources(e: &dyn std::error::Error) -> Cause {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = s.source();
    }
    Cause::from(text)
}

impl Pool {
    /// Opens `database`: an SQLite file (created, with its folder, when
    /// missing; see [`open_sqlite`]), or a PostgreSQL pool with one
    /// connection made now, so that a wrong host, user or password is an
    /// error at start.
    pub fn open(database: &Database) -> Result<Self, Cause> {
        let connections = match database {
            Database::Sqlite(path) => {
                Connections::Sqlite(std::sync::Mutex::new(open_sqlite(path)?))
            }
            Database::Postgres(url) => Connections::Postgres(postgres_pool(url)?),
        };
        let pool = Self {
            connections,
            database: database.clone(),
        };
        pool.with(|_| Ok(()))?;
        Ok(pool)
    }

    /// The database, shown without a password by its `Display`.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs `f` on a connection and gives what it gives; this thread waits
    /// (call it from synchronous code, or from async code through
    /// `spawn_blocking`). On PostgreSQL `f` runs on a blocking thread of
    /// the database runtime with a pooled connection; a connection the
    /// server closed (it restarted) is replaced, since the pool checks each
    /// one it hands out.
    pub fn with<T, F>(&self, f: F) -> Result<T, Cause>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Sql) -> Result<T, Cause> + Send + 'static,
    {
        let pool = match &self.connections {
            Connections::Sqlite(conn) => {
                let mut conn = conn
                    .lock()
                    .map_err(|_| cause("the connection's lock is poisoned"))?;
                return f(&mut *conn);
            }
            Connections::Postgres(pool) => pool.clone(),
        };
        let runtime = runtime()?;
        let handle = runtime.handle().clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn_blocking(move || {
            let done = handle
                .block_on(pool.get())
                .map_err(|e| with_sources(&e))
                .and_then(|client| {
                    let mut conn = PgSql {
                        client,
                        runtime: handle,
                    };
                    f(&mut conn)
                });
            let _ = tx.send(done);
        });
        rx.recv()
            .map_err(|_| cause("the database runtime stopped"))?
    }
}

/// Opens (creating it and its folder when missing) an SQLite database
/// file: WAL journal, so that a commit survives the process being killed
/// and readers do not block the writer, and a wait of up to 10 s for
/// another process's lock.
pub fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, Cause> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    Ok(conn)
}

/// Brings `component`'s tables to `steps.len()`: runs each step after the
/// version recorded in `schema_versions`, in one transaction (under an
/// advisory lock on PostgreSQL, so replicas starting together migrate
/// once), and records the version. Refused, changing nothing, when the
/// database was migrated by a newer precis than this one.
pub fn migrate(c: &mut dyn Sql, component: &str, steps: &[&str]) -> Result<(), Cause> {
    let known = steps.len() as i64;
    c.transaction(|tx| {
        if tx.dialect() == Dialect::Postgres {
            tx.execute("SELECT pg_advisory_xact_lock(7256120613)", &[])?;
        }
        tx.batch(
            "CREATE TABLE IF NOT EXISTS schema_versions (
                 component TEXT PRIMARY KEY,
                 version BIGINT NOT NULL
             )",
        )?;
        let version = tx
            .one(
                "SELECT version FROM schema_versions WHERE component = $1",
                &[component.into()],
            )?
            .int()
            .unwrap_or(0);
        if version > known {
            return Err(format!(
                "its {component} tables were written by a newer precis (schema {version}, this one knows {known}): run that version of precis, or give another database"
            )
            .into());
        }
        for step in &steps[version.max(0) as usize..] {
            tx.batch(step)?;
        }
        tx.execute(
            "INSERT INTO schema_versions (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[component.into(), known.into()],
        )?;
        Ok(())
    })
}

/// A value a statement takes or gives: the three kinds precis stores
/// (numbers are 64-bit, `BIGINT` in PostgreSQL, `INTEGER` in SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL's NULL.
    Null,
    /// A whole number.
    Int(i64),
    /// Text.
    Text(String),
}

impl Value {
    /// The number, when it is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The text, when it is some.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// One connection, either engine, used synchronously: the statements a
/// store writes once for both. Placeholders are `$1`, `$2`, ... (SQLite
/// numbers them the same way); write SQL both engines read (`BIGINT`,
/// `ON CONFLICT`, `RETURNING`, casts with `CAST(x AS BIGINT)`).
pub trait Sql {
    /// Which database engine's SQL this speaks, for the few statements
    /// that differ.
    fn dialect(&self) -> Dialect;
    /// Runs a statement; gives the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Cause>;
    /// Runs a query; gives its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, Cause>;
    /// Runs statements without parameters.
    fn batch(&mut self, sql: &str) -> Result<(), Cause>;
}

/// The SQL of the two database engines (not to be confused with the
/// model [`Engine`](crate::engine::Engine)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl dyn Sql + '_ {
    /// The first row of a query, if any.
    pub fn row(&mut self, sql: &str, params: &[Value]) -> Result<Option<Vec<Value>>, Cause> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first column of the first row, or `Null`.
    pub fn one(&mut self, sql: &str, params: &[Value]) -> Result<Value, Cause> {
        Ok(self
            .row(sql, params)?
            .and_then(|r| r.into_iter().next())
            .unwrap_or(Value::Null))
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled
    /// back otherwise. SQLite takes its write lock at the start, so what
    /// `f` reads is not changed by another process before it commits.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, Cause>,
    ) -> Result<T, Cause> {
        self.batch(match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl Sql for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Cause> {
        let params = rusqlite::params_from_iter(params.iter().map(sqlite_value));
        Ok(rusqlite::Connection::execute(self, &numbered(sql), params)? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, Cause> {
        let mut stmt = self.prepare_cached(&numbered(sql))?;
        let width = stmt.column_count();
        let params = rusqlite::params_from_iter(params.iter().map(sqlite_value));
        let rows = stmt.query_map(params, |row| {
            (0..width)
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                        rusqlite::types::ValueRef::Real(v) => Value::Int(v as i64),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            Value::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    })
                })
                .collect::<rusqlite::Result<Vec<Value>>>()
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn batch(&mut self, sql: &str) -> Result<(), Cause> {
        Ok(self.execute_batch(sql)?)
    }
}

/// `sql` with PostgreSQL's `$N` placeholders written as SQLite's `?N`:
/// SQLite reads `$1` as a *named* parameter, numbered by first appearance,
/// which binds wrongly when a statement uses `$2` before `$1`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

/// A pooled PostgreSQL connection driven synchronously from a blocking
/// thread of the database runtime.
struct PgSql {
    client: deadpool_postgres::Object,
    runtime: tokio::runtime::Handle,
}

impl tokio_postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(tokio_postgres::types::IsNull::Yes),
            Self::Int(i) => i.to_sql(ty, out),
            Self::Text(t) => t.to_sql(ty, out),
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <i64 as tokio_postgres::types::ToSql>::accepts(ty)
            || <String as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

impl PgSql {
    fn params(params: &[Value]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect()
    }
}

impl Sql for PgSql {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Cause> {
        let params = Self::params(params);
        self.runtime
            .block_on(self.client.execute(sql, &params))
            .map_err(|e| with_sources(&e))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, Cause> {
        use tokio_postgres::types::Type;
        let params = Self::params(params);
        let rows = self
            .runtime
            .block_on(self.client.query(sql, &params))
            .map_err(|e| with_sources(&e))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_().clone();
                        Ok(if ty == Type::INT8 {
                            row.try_get::<_, Option<i64>>(i).map_err(cause)?.into()
                        } else if ty == Type::INT4 {
                            row.try_get::<_, Option<i32>>(i)
                                .map_err(cause)?
                                .map(i64::from)
                                .into()
                        } else if ty == Type::BOOL {
                            row.try_get::<_, Option<bool>>(i)
                                .map_err(cause)?
                                .map(i64::from)
                                .into()
                        } else if ty == Type::VOID {
                            Value::Null
                        } else {
                            row.try_get::<_, Option<String>>(i)
                                .map_err(|e| cause(format!("column {i} ({ty}): {e}")))?
                                .into()
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), Cause> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| with_sources(&e))
    }
}

/// rustls' client settings for `tls`: the web's roots and the certificates
/// of its root file; without verification, a verifier that checks the
/// handshake's signatures and accepts any certificate (libpq's `require`).
fn tls_config(tls: &Tls) -> Result<rustls::ClientConfig, Cause> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = &tls.root_cert {
        let certs = CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("cannot read sslrootcert {}: {e}", file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {}: {e}", file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(cause)?;
    let config = if tls.verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
    };
    Ok(config.with_no_client_auth())
}

/// Accepts any server certificate, checking only that the server holds its
/// key (the handshake's signatures): libpq's `prefer` and `require`.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The PostgreSQL server the tests of both engines use, from
/// `PRECIS_TEST_DATABASE_URL` (`scripts/throwaway-postgres.sh` starts one,
/// as `.ci/run` does); `None` when unset. Each call makes a schema of its
/// own, named after `test` and a random suffix, and gives a URL whose
/// connections work in it: tests running at once share nothing.
pub fn test_database(test: &str) -> Option<Database> {
    let url = std::env::var("PRECIS_TEST_DATABASE_URL").ok()?;
    let Ok(Database::Postgres(url)) = Database::parse(&url) else {
        panic!("PRECIS_TEST_DATABASE_URL is not a postgres:// URL");
    };
    let schema: String = format!("t_{}_{}", test, uuid_like())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let db = Pool::open(&Database::Postgres(url.clone()))
        .expect("PRECIS_TEST_DATABASE_URL cannot be reached");
    let create = format!("CREATE SCHEMA {schema}");
    db.with(move |c| c.batch(&create))
        .expect("cannot create a test schema");
    let joiner = if url.0.contains('?') { '&' } else { '?' };
    let scoped = format!("{}{joiner}options=-c%20search_path%3D{schema}", url.0);
    Some(Database::Postgres(PostgresUrl(scoped)))
}

/// 16 random hex digits (from the standard library's hasher keys).
fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_sqlite_files_or_postgres_urls() {
        assert_eq!(
            Database::parse("/var/cache/p.sqlite3").unwrap(),
            Database::Sqlite("/var/cache/p.sqlite3".into())
        );
        assert_eq!(
            Database::parse("sqlite:///var/p.sqlite3").unwrap(),
            Database::Sqlite("/var/p.sqlite3".into())
        );
        assert!(matches!(
            Database::parse("postgresql://u:secret@db:5432/precis?sslmode=require").unwrap(),
            Database::Postgres(_)
        ));
        assert!(Database::parse("mysql://u@db/precis").is_err());
        assert!(Database::parse("").is_err());
        let e = Database::parse("postgres://u:secret@db:notaport/x").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn placeholders_bind_by_number_on_both_engines() {
        assert_eq!(
            numbered("VALUES ($1, $2, $5) -- $x"),
            "VALUES (?1, ?2, ?5) -- $x"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut databases = vec![Database::Sqlite(dir.path().join("t.sqlite3"))];
        databases.extend(test_database("placeholders"));
        for database in databases {
            let pool = Pool::open(&database).unwrap();
            let row = pool
                .with(|c| {
                    c.row(
                        "SELECT CAST($2 AS TEXT), CAST($1 AS BIGINT), CAST($1 AS BIGINT) + 1",
                        &[7.into(), "b".into()],
                    )
                })
                .unwrap()
                .unwrap();
            assert_eq!(
                row,
                vec!["b".into(), Value::Int(7), Value::Int(8)],
                "{database}"
            );
        }
    }

    #[test]
    fn tls_is_negotiated_and_the_server_verified_when_the_url_asks() {
        let (Some(Database::Postgres(url)), Ok(ca)) = (
            test_database("tls"),
            std::env::var("PRECIS_TEST_POSTGRES_CA"),
        ) else {
            eprintln!("no test PostgreSQL with TLS (PRECIS_TEST_POSTGRES_CA): skipped");
            return;
        };
        let with = |extra: &str| Database::parse(&format!("{}&{extra}", url.0)).unwrap();
        let ssl = |database: &Database| {
            Pool::open(database)?.with(|c| {
                c.one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
            })
        };
        // The cluster's CA named: TLS, the certificate checked.
        let verified = with(&format!("sslmode=verify-full&sslrootcert={ca}"));
        assert_eq!(ssl(&verified).unwrap(), Value::Int(1));
        // Verification asked without the CA: the certificate is not trusted.
        assert!(ssl(&with("sslmode=verify-full")).is_err());
        // libpq's defaults: encrypted, the certificate not checked.
        assert_eq!(ssl(&with("sslmode=require")).unwrap(), Value::Int(1));
        assert_eq!(ssl(&with("sslmode=prefer")).unwrap(), Value::Int(1));
        assert_eq!(ssl(&with("sslmode=disable")).unwrap(), Value::Int(0));
    }

    #[test]
    fn passwords_are_never_shown() {
        let url = Database::parse(
            "postgres://app:s3cr%40t@db.internal:5432/precis?sslmode=require&password=other",
        )
        .unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("other"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db.internal:5432/precis"),
            "{shown}"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn sslmode_and_sslrootcert_mean_what_they_mean_to_libpq() {
        use tokio_postgres::config::SslMode;
        let (config, tls) =
            PostgresUrl::config("postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca.pem")
                .unwrap();
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(tls.verify, "require with a root certificate verifies");
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        let (config, tls) = PostgresUrl::config("postgres://u@h/db?sslmode=verify-full").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert!(tls.verify);
        let (config, tls) = PostgresUrl::config("postgres://u@h/db").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
        assert!(!tls.verify);
        assert!(PostgresUrl::config("postgres://u@h/db?sslmode=sometimes").is_err());
        let e = tls_config(&Tls {
            verify: true,
            root_cert: Some("/nonexistent/ca.pem".into()),
        })
        .unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }
}
