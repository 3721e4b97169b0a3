//! PostgreSQL peers: a throw-away database on the machine's server
//! (127.0.0.1:5432, trust auth; `$PG_TEST_ADMIN_URL` overrides), and a
//! private cluster (`initdb` + `pg_ctl` in a temp dir on a free loopback
//! port) for tests that stop the server. A missing server or missing
//! PostgreSQL binaries fail the test loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A connection whose timestamps print in UTC, whatever the server's zone.
async fn connect_utc(url: &str) -> Result<PgConnection, String> {
    let mut c = PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    sqlx::raw_sql("SET TIME ZONE 'UTC'")
        .execute(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// A database created for one test and dropped (forcefully) after it.
pub struct Db {
    /// `postgres://…/<name>` to put in the gateway's config.
    pub url: String,
    pub name: String,
    admin: String,
}

impl Db {
    /// A new database on the machine's server.
    pub fn create() -> Db {
        let admin = std::env::var("PG_TEST_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        Self::create_on(&admin)
    }

    /// A new database on the server `admin` (a URL to its `postgres` database).
    pub fn create_on(admin: &str) -> Db {
        let name = format!(
            "gw_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            fastrand::u32(..)
        );
        let sql = format!("CREATE DATABASE {name}");
        runtime().block_on(async {
            let mut c = PgConnection::connect(admin).await.unwrap_or_else(|e| {
                panic!("PostgreSQL must be running at {admin} (the machine's server, trust auth): {e}")
            });
            sqlx::raw_sql(&sql)
                .execute(&mut c)
                .await
                .expect("CREATE DATABASE");
        });
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Db {
            url: format!("{base}/{name}"),
            name,
            admin: admin.to_string(),
        }
    }

    /// Runs one statement; `Err(message)` when the server rejects it.
    pub fn exec(&self, sql: &str) -> Result<u64, String> {
        let url = self.url.clone();
        runtime().block_on(async move {
            let mut c = connect_utc(&url).await?;
            sqlx::raw_sql(sql)
                .execute(&mut c)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string())
        })
    }

    /// The rows of `sql` as JSON objects (via `json_agg`).
    pub fn rows(&self, sql: &str) -> Vec<Value> {
        self.try_rows(sql)
            .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"))
    }

    pub fn try_rows(&self, sql: &str) -> Result<Vec<Value>, String> {
        let url = self.url.clone();
        let q = format!("SELECT coalesce(json_agg(gw_row), '[]'::json) FROM ({sql}) gw_row");
        runtime().block_on(async move {
            let mut c = connect_utc(&url).await?;
            let v: Value = sqlx::query_scalar(&q)
                .fetch_one(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            Ok(v.as_array().cloned().unwrap_or_default())
        })
    }

    /// The single integer `sql` returns.
    pub fn count(&self, sql: &str) -> i64 {
        let rows = self.rows(sql);
        let v = rows
            .first()
            .and_then(|r| r.as_object())
            .and_then(|o| o.values().next())
            .cloned()
            .unwrap_or(Value::Null);
        v.as_i64().unwrap_or_else(|| panic!("{sql} returned {v}"))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin = self.admin.clone();
        let _ = runtime().block_on(async move {
            let mut c = PgConnection::connect(&admin).await?;
            sqlx::raw_sql(&sql).execute(&mut c).await
        });
    }
}

/// A private PostgreSQL cluster on a free loopback port, owned by the
/// `postgres` OS user when the tests run as root (initdb refuses root).
/// Stopped and deleted on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    running: bool,
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries must be installed (/usr/lib/postgresql/<version>/bin)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    pub fn init() -> Cluster {
        let bin = pg_bin_dir();
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("gw-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of {} to postgres failed", dir.display());
        }
        let c = Cluster {
            dir,
            port,
            bin,
            running: false,
        };
        let data = c.data();
        let out = c
            .as_owner(&c.bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n\
             shared_buffers = 16MB\nmax_connections = 20\nlogging_collector = off\n",
            c.dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        c
    }

    /// Makes the (stopped) cluster accept TLS connections only: a CA and a
    /// server certificate for `IP:127.0.0.1` are generated with openssl,
    /// `ssl = on`, and pg_hba.conf allows `hostssl` only. Returns the CA
    /// certificate's path (for `ssl_root_cert`).
    pub fn require_tls(&mut self) -> PathBuf {
        let d = self.data();
        let ca = self.dir.join("ca.crt");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .output()
                .expect("openssl must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=gateway-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "data/server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            self.dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "data/server.crt",
        ]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .unwrap();
        std::fs::write(
            d.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown failed");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        ca
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// The admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        self.as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    pub fn start(&mut self) {
        let log = self.dir.join("server.log");
        let log = log.display().to_string();
        let out = self.pg_ctl(&["-l", &log, "-w", "-t", "60", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "private PostgreSQL does not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast: open connections are cut).
    pub fn stop(&mut self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
