//! The schema: embedded, versioned migrations (`gateway/migrations/*.sql`,
//! compiled in with `include_str!`, applied and recorded in
//! `_sqlx_migrations` by sqlx's migrator) and the compatibility check that
//! runs before the store writes anything.
//!
//! (Not `sqlx::migrate!`: that macro needs sqlx's `macros` feature, whose
//! host-side dependencies change the feature set of RocksDB's bindgen and
//! so force a 25-minute RocksDB rebuild. A unit test keeps [`FILES`] and
//! the directory in step.)
//!
//! - Applying is idempotent: applied versions are skipped, their checksums
//!   verified; concurrent gateways serialise on sqlx's advisory lock.
//! - A database with a version this build does not know (a newer gateway
//!   migrated it) is refused, as is one whose applied migration differs
//!   from the embedded file or failed half-way.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};
use sqlx::PgPool;

/// Every migration this build knows: version, description, SQL.
pub const FILES: &[(i64, &str, &str)] = &[
    (
        1,
        "seed schema",
        include_str!("../../../migrations/0001_seed_schema.sql"),
    ),
    (
        2,
        "gateway extensions",
        include_str!("../../../migrations/0002_gateway_extensions.sql"),
    ),
];

/// [`FILES`] as sqlx migrations (each checksummed with SHA-384).
pub fn migrations() -> Vec<Migration> {
    FILES
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect()
}

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async { Ok(migrations()) })
    }
}

/// Why the store will not use a database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database schema is at version {found}, newer than this gateway knows (up to {known}); \
         upgrade the gateway (a newer one migrated this database)"
    )]
    TooNew { found: i64, known: i64 },
    #[error("migrations {0:?} are not applied and `migrate = false`; run `gateway db migrate`")]
    Pending(Vec<i64>),
    #[error("migration {0} was applied from a different file than this gateway embeds")]
    Modified(i64),
    #[error("migration {0} failed part-way in an earlier run; repair the database by hand")]
    Dirty(i64),
    #[error("migrating: {0}")]
    Migrate(#[from] MigrateError),
    #[error("{0}")]
    Db(#[from] sqlx::Error),
}

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// The migrations recorded in the database (none before the first run).
pub async fn applied(pool: &PgPool) -> Result<Vec<Applied>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String, bool, Vec<u8>)> = sqlx::query_as(
        "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, description, success, checksum)| Applied {
            version,
            description,
            success,
            checksum,
        })
        .collect())
}

/// The newest version this build knows.
pub fn known_version() -> i64 {
    FILES.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

/// Checks the database against the embedded migrations and, when
/// `migrate`, applies the pending ones. Returns the versions applied now.
pub async fn prepare(pool: &PgPool, migrate: bool) -> Result<Vec<i64>, SchemaError> {
    let done = applied(pool).await?;
    let known = known_version();
    if let Some(found) = done.iter().map(|a| a.version).filter(|v| *v > known).max() {
        return Err(SchemaError::TooNew { found, known });
    }
    if let Some(a) = done.iter().find(|a| !a.success) {
        return Err(SchemaError::Dirty(a.version));
    }
    let known_migrations = migrations();
    for m in &known_migrations {
        if let Some(a) = done.iter().find(|a| a.version == m.version) {
            if a.checksum != *m.checksum {
                return Err(SchemaError::Modified(m.version));
            }
        }
    }
    let pending: Vec<i64> = known_migrations
        .iter()
        .map(|m| m.version)
        .filter(|v| !done.iter().any(|a| a.version == *v))
        .collect();
    if pending.is_empty() {
        return Ok(pending);
    }
    if !migrate {
        return Err(SchemaError::Pending(pending));
    }
    Migrator::new(Embedded).await?.run(pool).await?;
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `gateway/migrations/` is embedded, with the version
    /// and description sqlx would derive from its name, in order.
    #[test]
    fn embedded_migrations_match_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let from_dir: Vec<(i64, String, String)> = names
            .iter()
            .map(|n| {
                let stem = n.strip_suffix(".sql").expect("only .sql files");
                let (v, d) = stem.split_once('_').expect("VERSION_description.sql");
                let sql = std::fs::read_to_string(dir.join(n)).unwrap();
                (v.parse().unwrap(), d.replace('_', " "), sql)
            })
            .collect();
        let embedded: Vec<(i64, String, String)> = FILES
            .iter()
            .map(|(v, d, s)| (*v, d.to_string(), s.to_string()))
            .collect();
        assert_eq!(embedded, from_dir);
        assert_eq!(known_version(), 2);
        let m = migrations();
        assert!(m.windows(2).all(|w| w[0].version < w[1].version));
        assert!(m.iter().all(|m| m.checksum.len() == 48), "SHA-384 checksums");
    }
}
