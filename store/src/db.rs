//! The store database: SQLite with the Guix/Nix schema (guix-spec §6.3) plus Nix's `ultimate`,
//! `sigs` and `ca` columns.
//!
//! - `ValidPaths(id, path UNIQUE, hash "sha256:<hex>", registrationTime, deriver, narSize,
//!   ultimate, sigs, ca)`; `Refs(referrer, reference)` with `ON DELETE CASCADE` for the referrer
//!   and `ON DELETE RESTRICT` for the reference, indexes `IndexReferrer` / `IndexReference`, the
//!   `DeleteSelfRefs` trigger; `DerivationOutputs` with `IndexDerivationOutputs`. This is the
//!   layout Nix's schema 10 and Guix's schema 7 share, so the same queries read all three.
//! - ferry's own database is opened read-write, in WAL mode with `synchronous = FULL`, foreign
//!   keys on and a 30 s busy timeout. A Nix or Guix database is opened **read-only**; columns it
//!   lacks (Guix has no `sigs`/`ca`/`ultimate`) read as empty. (Reading a WAL-mode database,
//!   as Nix's is, makes SQLite create its `-wal`/`-shm` side files when they are missing; the
//!   database file itself is never written, which the Nix interop test checks.)
//! - Registration ([`Database::register`]) takes infos in topological order (references first) inside
//!   one transaction; every reference must be valid already or earlier in the batch.
//! - Closures ([`Database::closure_graph`]): up to [`SCAN_LIMIT`] rows, by one ordered scan of
//!   `Refs` (its primary-key index) into a compressed adjacency array, a breadth-first walk in
//!   memory, and one scan of `ValidPaths`; beyond that, by one recursive query inside SQLite.
//!   Either way a 100,000-path closure costs a few statements, not 100,000, and comes back
//!   with its edges as indexes, ready for validation without hashing paths.
//!
//! A file that is not an SQLite database, or lacks the tables, is reported as
//! [`DbError::Corrupt`] naming the file and SQLite's reason.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nar_core::hash::Sha256Hash;
use nar_core::store_path::{StoreDir, StorePath};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use crate::layout::DbKind;
use closure::{IndexedGraph, PathInfo};

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    // (Errors are part of the messages, not `source`s: printed with its causes, the reason
    // would show twice.)
    #[error("cannot open store database {path:?}: {error}")]
    Open { path: PathBuf, error: rusqlite::Error },
    #[error("store database {path:?} is corrupt or not a store database: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot create directory {path:?} for the store database: {error}")]
    CreateDir { path: PathBuf, error: std::io::Error },
    #[error("store database {path:?}: {error}")]
    Sqlite { path: PathBuf, error: rusqlite::Error },
    #[error("store database {db:?} has an invalid entry {path:?}: {reason}")]
    BadRow { db: PathBuf, path: String, reason: String },
    #[error("path {0} is not valid")]
    NotValid(String),
    #[error("cannot register {path}: its reference {reference} is not valid")]
    ReferenceNotValid { path: String, reference: String },
    #[error("cannot delete {path}: still referenced by {referrer}")]
    StillReferenced { path: String, referrer: String },
    #[error("the {kind:?} database {path:?} is opened read-only; ferry never writes to it")]
    ReadOnly { kind: DbKind, path: PathBuf },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ValidPaths (
    id               INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    path             TEXT UNIQUE NOT NULL,
    hash             TEXT NOT NULL,
    registrationTime INTEGER NOT NULL,
    deriver          TEXT,
    narSize          INTEGER,
    ultimate         INTEGER,
    sigs             TEXT,
    ca               TEXT
);
CREATE TABLE IF NOT EXISTS Refs (
    referrer  INTEGER NOT NULL,
    reference INTEGER NOT NULL,
    PRIMARY KEY (referrer, reference),
    FOREIGN KEY (referrer) REFERENCES ValidPaths(id) ON DELETE CASCADE,
    FOREIGN KEY (reference) REFERENCES ValidPaths(id) ON DELETE RESTRICT
);
CREATE INDEX IF NOT EXISTS IndexReferrer ON Refs(referrer);
CREATE INDEX IF NOT EXISTS IndexReference ON Refs(reference);
CREATE TRIGGER IF NOT EXISTS DeleteSelfRefs BEFORE DELETE ON ValidPaths
  BEGIN DELETE FROM Refs WHERE referrer = old.id AND reference = old.id; END;
CREATE TABLE IF NOT EXISTS DerivationOutputs (
    drv  INTEGER NOT NULL,
    id   TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (drv, id),
    FOREIGN KEY (drv) REFERENCES ValidPaths(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS IndexDerivationOutputs ON DerivationOutputs(path);
";

/// Databases with at most this many paths and references compute closures by scanning
/// ([`Database::closure`]); larger ones with a recursive query.
pub const SCAN_LIMIT: i64 = 8_000_000;

/// `PRAGMA application_id` of a ferry database ("ferr").
const APPLICATION_ID: i64 = 0x6665_7272;

/// The connection settings of ferry's own database: WAL, full sync, foreign keys.
fn set_up(conn: &Connection) -> Result<(), rusqlite::Error> {
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
}

/// An open store database.
#[derive(Debug)]
pub struct Database {
    conn: Connection,
    path: PathBuf,
    kind: DbKind,
    store_dir: StoreDir,
    /// Select list for `ValidPaths` rows, with NULLs for the columns this database lacks.
    columns: String,
}

impl Database {
    /// Open (creating it and its directory if needed) ferry's read-write database.
    pub fn open_ferry(path: &Path, store_dir: StoreDir) -> Result<Self, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| DbError::CreateDir { path: dir.to_owned(), error: source })?;
        }
        let conn = Connection::open(path)
            .map_err(|source| DbError::Open { path: path.to_owned(), error: source })?;
        let corrupt =
            |e: rusqlite::Error| DbError::Corrupt { path: path.to_owned(), reason: e.to_string() };
        conn.busy_timeout(Duration::from_secs(30)).map_err(corrupt)?;
        // The first statement that reads the file: "file is not a database" surfaces here.
        let app_id: i64 =
            conn.query_row("PRAGMA application_id", [], |row| row.get(0)).map_err(corrupt)?;
        if app_id == 0 {
            // A Nix or Guix database has no application id but has tables: never write to it.
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |row| {
                    row.get(0)
                })
                .map_err(corrupt)?;
            if tables > 0 {
                return Err(DbError::Corrupt {
                    path: path.to_owned(),
                    reason: "it is not ferry's database (a Nix or Guix one?), and ferry never \
                             writes to those: read it with --store nix or --store guix"
                        .into(),
                });
            }
            set_up(&conn).map_err(corrupt)?;
            // The tables and the mark that makes them ferry's, in one transaction: a crash
            // leaves an empty file or a whole ferry database, never tables without the mark
            // (which would read as a Nix or Guix database, refused above).
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA}; PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
            ))
            .map_err(corrupt)?;
        } else if app_id != APPLICATION_ID {
            return Err(DbError::Corrupt {
                path: path.to_owned(),
                reason: format!("application id {app_id:#x} is not ferry's ({APPLICATION_ID:#x})"),
            });
        } else {
            set_up(&conn).map_err(corrupt)?;
        }
        Self::finish(conn, path, DbKind::Ferry, store_dir)
    }

    /// Open an existing database read-only (any of the three kinds).
    pub fn open_read_only(path: &Path, kind: DbKind, store_dir: StoreDir) -> Result<Self, DbError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|source| DbError::Open { path: path.to_owned(), error: source })?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| DbError::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
        Self::finish(conn, path, kind, store_dir)
    }

    fn finish(
        conn: Connection,
        path: &Path,
        kind: DbKind,
        store_dir: StoreDir,
    ) -> Result<Self, DbError> {
        let corrupt = |reason: String| DbError::Corrupt { path: path.to_owned(), reason };
        let mut present = BTreeSet::new();
        {
            let mut stmt = conn
                .prepare("SELECT name FROM pragma_table_info('ValidPaths')")
                .map_err(|e| corrupt(e.to_string()))?;
            let rows = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(|e| corrupt(e.to_string()))?;
            for name in rows {
                present.insert(name.map_err(|e| corrupt(e.to_string()))?);
            }
        }
        for required in ["id", "path", "hash", "registrationTime", "deriver", "narSize"] {
            if !present.contains(required) {
                return Err(corrupt(format!("table ValidPaths lacks the column {required}")));
            }
        }
        let has_refs: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'Refs'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(|e| corrupt(e.to_string()))?
            > 0;
        if !has_refs {
            return Err(corrupt("the table Refs is missing".into()));
        }
        let opt = |c: &str| if present.contains(c) { format!("v.{c}") } else { "NULL".into() };
        let columns = format!(
            "v.id, v.path, v.hash, v.registrationTime, v.deriver, v.narSize, {}, {}, {}",
            opt("ultimate"),
            opt("sigs"),
            opt("ca")
        );
        Ok(Database { conn, path: path.to_owned(), kind, store_dir, columns })
    }

    /// Which kind of database this is.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The logical store dir the paths are printed with.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn sql(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite { path: self.path.clone(), error: source }
    }

    fn check_writable(&self) -> Result<(), DbError> {
        if self.kind == DbKind::Ferry {
            Ok(())
        } else {
            Err(DbError::ReadOnly { kind: self.kind, path: self.path.clone() })
        }
    }

    /// Run `f` inside a `BEGIN IMMEDIATE` transaction (the write lock is held from the start),
    /// committing when it returns `Ok`.
    pub fn with_write_transaction<T, E: From<DbError>>(
        &mut self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.check_writable()?;
        let path = self.path.clone();
        let store_dir = self.store_dir.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| DbError::Sqlite { path: path.clone(), error: source })?;
        let mut txn = WriteTxn { tx, path: path.clone(), store_dir };
        let value = f(&mut txn)?;
        txn.tx.commit().map_err(|source| DbError::Sqlite { path, error: source })?;
        Ok(value)
    }

    /// Register a batch of paths (references first) in one transaction.
    pub fn register(&mut self, infos: &[PathInfo]) -> Result<(), DbError> {
        self.with_write_transaction(|txn| txn.register(infos))
    }

    /// Is `path` valid?
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        self.path_id(path).map(|id| id.is_some())
    }

    /// Add Nix signatures to a valid path in one transaction (see
    /// [`WriteTxn::add_signatures`]); returns the path's signatures after the change.
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &[String],
    ) -> Result<Vec<String>, DbError> {
        self.with_write_transaction(|txn| txn.add_signatures(path, sigs))
    }

    fn path_id(&self, path: &StorePath) -> Result<Option<i64>, DbError> {
        path_id(&self.conn, &self.store_dir, path).map_err(|e| self.sql(e))
    }

    /// The subset of `paths` that is valid: the agent side of the one-round-trip diff.
    pub fn query_valid<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<BTreeSet<StorePath>, DbError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM ValidPaths WHERE path = ?1")
            .map_err(|e| self.sql(e))?;
        let mut out = BTreeSet::new();
        for p in paths {
            if stmt.exists([p.to_absolute(&self.store_dir)]).map_err(|e| self.sql(e))? {
                out.insert(p.clone());
            }
        }
        Ok(out)
    }

    /// Everything known about `path`, or `None` when it is not valid.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, DbError> {
        let sql = format!("SELECT {} FROM ValidPaths v WHERE v.path = ?1", self.columns);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.sql(e))?;
        let row = stmt
            .query_row([path.to_absolute(&self.store_dir)], RawRow::read)
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some(row) = row else { return Ok(None) };
        let (id, mut info) = self.convert(row)?;
        info.references = self.references_of_id(Some(id))?;
        Ok(Some(info))
    }

    fn references_of_id(&self, id: Option<i64>) -> Result<BTreeSet<StorePath>, DbError> {
        let Some(id) = id else { return Ok(BTreeSet::new()) };
        self.paths_for_id(
            "SELECT v.path FROM Refs r JOIN ValidPaths v ON r.reference = v.id \
             WHERE r.referrer = ?1",
            id,
        )
    }

    /// The store paths a one-column query over the row id `id` returns.
    fn paths_for_id(&self, sql: &str, id: i64) -> Result<BTreeSet<StorePath>, DbError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([id], |row| row.get::<_, String>(0)).map_err(|e| self.sql(e))?;
        let mut out = BTreeSet::new();
        for text in rows {
            out.insert(self.parse(&text.map_err(|e| self.sql(e))?)?);
        }
        Ok(out)
    }

    /// The valid paths that refer to `path` (including itself when self-referencing).
    pub fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let id = self.path_id(path)?.ok_or_else(|| self.not_valid(path))?;
        self.paths_for_id(
            "SELECT v.path FROM Refs r JOIN ValidPaths v ON r.referrer = v.id \
             WHERE r.reference = ?1",
            id,
        )
    }

    /// Every valid path.
    pub fn all_valid_paths(&self) -> Result<Vec<StorePath>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path FROM ValidPaths ORDER BY path")
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0)).map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for text in rows {
            out.push(self.parse(&text.map_err(|e| self.sql(e))?)?);
        }
        Ok(out)
    }

    /// Every valid path with its info (one pass over both tables).
    pub fn all_path_infos(&self) -> Result<Vec<PathInfo>, DbError> {
        Ok(self.infos_where("SELECT id FROM ValidPaths", &[])?.infos)
    }

    /// The closure of `roots` under references: every path info reachable, with references
    /// filled, in no particular order. Errors when a root is not valid.
    pub fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>, DbError> {
        Ok(self.closure_graph(roots)?.infos)
    }

    /// The closure of `roots` with its edges as indexes into the infos (references other than
    /// self), so it can be validated and ordered without hashing paths.
    pub fn closure_graph(&self, roots: &[StorePath]) -> Result<IndexedGraph, DbError> {
        let mut ids = Vec::with_capacity(roots.len());
        for root in roots {
            ids.push(self.path_id(root)?.ok_or_else(|| self.not_valid(root))?);
        }
        let max = |sql: &str| -> Result<i64, DbError> {
            self.conn.query_row(sql, [], |row| row.get(0)).map_err(|e| self.sql(e))
        };
        // Both are O(log n): the last rowid of each table.
        let max_id = max("SELECT coalesce(max(id), 0) FROM ValidPaths")?;
        let max_ref = max("SELECT coalesce(max(rowid), 0) FROM Refs")?;
        if max_id <= SCAN_LIMIT && max_ref <= SCAN_LIMIT {
            self.closure_by_scan(&ids, max_id)
        } else {
            self.closure_by_query(&ids)
        }
    }

    /// The closure with one recursive query inside SQLite (any database size).
    pub(crate) fn closure_by_query(&self, root_ids: &[i64]) -> Result<IndexedGraph, DbError> {
        let seed =
            format!("[{}]", root_ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(","));
        let cte = "WITH RECURSIVE closure(id) AS (
                SELECT value FROM json_each(?1)
                UNION
                SELECT r.reference FROM Refs r JOIN closure c ON r.referrer = c.id
            ) SELECT id FROM closure";
        self.infos_where(cte, &[&seed])
    }

    /// The closure from two sequential scans (Refs through its primary-key index, then
    /// ValidPaths) and a breadth-first walk in memory: for databases up to [`SCAN_LIMIT`] rows,
    /// several times faster than the recursive query for large closures.
    fn closure_by_scan(&self, root_ids: &[i64], max_id: i64) -> Result<IndexedGraph, DbError> {
        let n = usize::try_from(max_id).unwrap_or(0) + 1;
        // Adjacency in compressed-row form; Refs' primary key index yields rows by referrer.
        let mut offsets = vec![0u32; n + 1];
        let mut targets: Vec<u32> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT referrer, reference FROM Refs ORDER BY referrer")
                .map_err(|e| self.sql(e))?;
            let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
            let mut last = 0usize;
            while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
                let from: i64 = row.get(0).map_err(|e| self.sql(e))?;
                let to: i64 = row.get(1).map_err(|e| self.sql(e))?;
                let (from, to) = match (usize::try_from(from), u32::try_from(to)) {
                    (Ok(f), Ok(t)) if f < n && (t as usize) < n => (f, t),
                    _ => return Err(self.dangling(from, to)),
                };
                while last < from {
                    last += 1;
                    offsets[last] = targets.len() as u32;
                }
                targets.push(to);
            }
            while last < n {
                last += 1;
                offsets[last] = targets.len() as u32;
            }
        }
        let refs_of = |id: usize| &targets[offsets[id] as usize..offsets[id + 1] as usize];
        let mut seen = vec![false; n];
        let mut queue: Vec<usize> = Vec::new();
        for &id in root_ids {
            let id = id as usize;
            if !seen[id] {
                seen[id] = true;
                queue.push(id);
            }
        }
        let mut head = 0;
        while head < queue.len() {
            let id = queue[head];
            head += 1;
            for &r in refs_of(id) {
                if !seen[r as usize] {
                    seen[r as usize] = true;
                    queue.push(r as usize);
                }
            }
        }
        let sql = format!("SELECT {} FROM ValidPaths v", self.columns);
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        let mut position = vec![u32::MAX; n];
        let mut infos = Vec::with_capacity(queue.len());
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let id: i64 = row.get(0).map_err(|e| self.sql(e))?;
            if !usize::try_from(id).is_ok_and(|i| i < n && seen[i]) {
                continue;
            }
            let (id, info) = self.convert(RawRow::read(row).map_err(|e| self.sql(e))?)?;
            position[id as usize] = infos.len() as u32;
            infos.push(info);
        }
        let mut edges = vec![Vec::new(); infos.len()];
        let mut refs = Vec::new();
        for &id in &queue {
            let from = position[id] as usize;
            refs.clear();
            for &r in refs_of(id) {
                let to = position[r as usize];
                if to == u32::MAX || from == u32::MAX as usize {
                    return Err(self.dangling(id as i64, i64::from(r)));
                }
                refs.push(infos[to as usize].path.clone());
                if to as usize != from {
                    edges[from].push(to);
                }
            }
            // Bulk-built from a sorted list: cheaper than inserting one by one.
            refs.sort_unstable();
            infos[from].references = refs.drain(..).collect();
        }
        Ok(IndexedGraph { infos, edges })
    }

    fn dangling(&self, referrer: i64, reference: i64) -> DbError {
        DbError::Corrupt {
            path: self.path.clone(),
            reason: format!("Refs row ({referrer}, {reference}) points at no ValidPaths row"),
        }
    }

    /// Infos for the ids `id_query` selects, with references, in two queries.
    fn infos_where(
        &self,
        id_query: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<IndexedGraph, DbError> {
        let rows_sql = format!(
            "WITH sel(id) AS MATERIALIZED ({id_query}) \
             SELECT {} FROM ValidPaths v JOIN sel ON v.id = sel.id",
            self.columns
        );
        let mut stmt = self.conn.prepare(&rows_sql).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map(args, RawRow::read).map_err(|e| self.sql(e))?;
        let mut infos = Vec::new();
        let mut index = HashMap::new();
        for row in rows {
            let (id, info) = self.convert(row.map_err(|e| self.sql(e))?)?;
            index.insert(id, infos.len());
            infos.push(info);
        }
        let edges_sql = format!(
            "WITH sel(id) AS MATERIALIZED ({id_query}) \
             SELECT r.referrer, r.reference FROM Refs r JOIN sel ON r.referrer = sel.id"
        );
        let mut stmt = self.conn.prepare(&edges_sql).map_err(|e| self.sql(e))?;
        let mut rows = stmt.query(args).map_err(|e| self.sql(e))?;
        let mut edges = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let referrer: i64 = row.get(0).map_err(|e| self.sql(e))?;
            let reference: i64 = row.get(1).map_err(|e| self.sql(e))?;
            edges.push((referrer, reference));
        }
        let mut graph = vec![Vec::new(); infos.len()];
        for (referrer, reference) in edges {
            let (Some(&from), Some(&to)) = (index.get(&referrer), index.get(&reference)) else {
                return Err(DbError::Corrupt {
                    path: self.path.clone(),
                    reason: format!(
                        "Refs row ({referrer}, {reference}) points at no ValidPaths row"
                    ),
                });
            };
            let target = infos[to].path.clone();
            infos[from].references.insert(target);
            if to != from {
                graph[from].push(to as u32);
            }
        }
        Ok(IndexedGraph { infos, edges: graph })
    }

    /// Delete `path` from the database; fails when another valid path still refers to it.
    pub fn delete(&mut self, path: &StorePath) -> Result<(), DbError> {
        self.with_write_transaction(|txn| txn.delete(path))
    }

    /// `PRAGMA integrity_check` and `PRAGMA foreign_key_check`: problems found, empty when sound.
    pub fn check_integrity(&self) -> Result<Vec<String>, DbError> {
        let mut problems = Vec::new();
        let mut stmt = self.conn.prepare("PRAGMA integrity_check").map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0)).map_err(|e| self.sql(e))?;
        for row in rows {
            let row = row.map_err(|e| self.sql(e))?;
            if row != "ok" {
                problems.push(format!("integrity: {row}"));
            }
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.referrer, r.reference FROM Refs r \
                 WHERE NOT EXISTS (SELECT 1 FROM ValidPaths v WHERE v.id = r.reference) \
                 OR NOT EXISTS (SELECT 1 FROM ValidPaths v WHERE v.id = r.referrer)",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (a, b) = row.map_err(|e| self.sql(e))?;
            problems.push(format!("dangling reference row ({a}, {b})"));
        }
        Ok(problems)
    }

    fn not_valid(&self, path: &StorePath) -> DbError {
        DbError::NotValid(path.to_absolute(&self.store_dir))
    }

    fn parse(&self, text: &str) -> Result<StorePath, DbError> {
        self.store_dir.parse_path(text).map_err(|e| DbError::BadRow {
            db: self.path.clone(),
            path: text.to_owned(),
            reason: e.to_string(),
        })
    }

    fn convert(&self, row: RawRow) -> Result<(i64, PathInfo), DbError> {
        let bad = |reason: String| DbError::BadRow {
            db: self.path.clone(),
            path: row.path.clone(),
            reason,
        };
        let path = self.parse(&row.path)?;
        let nar_hash = Sha256Hash::parse(&row.hash).map_err(|e| bad(e.to_string()))?;
        let nar_size = match row.nar_size {
            Some(n) if n >= 0 => n as u64,
            Some(n) => return Err(bad(format!("negative narSize {n}"))),
            None => 0,
        };
        let deriver = match row.deriver.as_deref() {
            None | Some("") => None,
            Some(d) => Some(self.parse(d)?),
        };
        let sigs = row
            .sigs
            .as_deref()
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let info = PathInfo {
            path,
            nar_hash,
            nar_size,
            references: BTreeSet::new(),
            deriver,
            sigs,
            ca: row.ca.filter(|c| !c.is_empty()),
            registration_time: row.registration_time,
            ultimate: row.ultimate.unwrap_or(0) != 0,
        };
        Ok((row.id, info))
    }
}

fn path_id(
    conn: &Connection,
    store_dir: &StoreDir,
    path: &StorePath,
) -> Result<Option<i64>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached("SELECT id FROM ValidPaths WHERE path = ?1")?;
    stmt.query_row([path.to_absolute(store_dir)], |row| row.get(0)).optional()
}

struct RawRow {
    id: i64,
    path: String,
    hash: String,
    registration_time: i64,
    deriver: Option<String>,
    nar_size: Option<i64>,
    ultimate: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
}

impl RawRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawRow {
            id: row.get(0)?,
            path: row.get(1)?,
            hash: row.get(2)?,
            registration_time: row.get(3)?,
            deriver: row.get(4)?,
            nar_size: row.get(5)?,
            ultimate: row.get(6)?,
            sigs: row.get(7)?,
            ca: row.get(8)?,
        })
    }
}

/// A write transaction (`BEGIN IMMEDIATE`) on ferry's database.
#[derive(Debug)]
pub struct WriteTxn<'c> {
    tx: Transaction<'c>,
    path: PathBuf,
    store_dir: StoreDir,
}

impl WriteTxn<'_> {
    fn sql(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite { path: self.path.clone(), error: source }
    }

    /// Is `path` valid (seen from inside the transaction)?
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        Ok(path_id(&self.tx, &self.store_dir, path).map_err(|e| self.sql(e))?.is_some())
    }

    /// Register infos in order; each reference must be valid or earlier in `infos` (or the path
    /// itself). Re-registering a valid path updates its row, as Guix's `register-valid-path`.
    pub fn register(&mut self, infos: &[PathInfo]) -> Result<(), DbError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for info in infos {
            let abs = info.path.to_absolute(&self.store_dir);
            let time = if info.registration_time > 0 { info.registration_time } else { now };
            let sigs = (!info.sigs.is_empty()).then(|| info.sigs.join(" "));
            let deriver = info.deriver.as_ref().map(|d| d.to_absolute(&self.store_dir));
            let nar_size = i64::try_from(info.nar_size).unwrap_or(i64::MAX);
            let existing =
                path_id(&self.tx, &self.store_dir, &info.path).map_err(|e| self.sql(e))?;
            let id = match existing {
                Some(id) => {
                    self.tx
                        .prepare_cached(
                            "UPDATE ValidPaths SET hash = ?2, registrationTime = ?3, deriver = ?4, \
                             narSize = ?5, ultimate = ?6, sigs = ?7, ca = ?8 WHERE id = ?1",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                id,
                                info.nar_hash.to_typed_hex(),
                                time,
                                deriver,
                                nar_size,
                                info.ultimate as i64,
                                sigs,
                                info.ca
                            ])
                        })
                        .map_err(|e| self.sql(e))?;
                    id
                }
                None => {
                    self.tx
                        .prepare_cached(
                            "INSERT INTO ValidPaths (path, hash, registrationTime, deriver, \
                             narSize, ultimate, sigs, ca) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                abs,
                                info.nar_hash.to_typed_hex(),
                                time,
                                deriver,
                                nar_size,
                                info.ultimate as i64,
                                sigs,
                                info.ca
                            ])
                        })
                        .map_err(|e| self.sql(e))?;
                    self.tx.last_insert_rowid()
                }
            };
            for reference in &info.references {
                let ref_id = if *reference == info.path {
                    id
                } else {
                    path_id(&self.tx, &self.store_dir, reference)
                        .map_err(|e| self.sql(e))?
                        .ok_or_else(|| DbError::ReferenceNotValid {
                            path: abs.clone(),
                            reference: reference.to_absolute(&self.store_dir),
                        })?
                };
                self.tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO Refs (referrer, reference) VALUES (?1, ?2)",
                    )
                    .and_then(|mut s| s.execute([id, ref_id]))
                    .map_err(|e| self.sql(e))?;
            }
        }
        Ok(())
    }

    /// Add Nix signatures (`name:base64`) to a valid path's `sigs` column, keeping those there
    /// and skipping duplicates; stored space-separated, as Nix stores them. Returns the
    /// signatures after the change.
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &[String],
    ) -> Result<Vec<String>, DbError> {
        let abs = path.to_absolute(&self.store_dir);
        let current: Option<Option<String>> = self
            .tx
            .query_row("SELECT sigs FROM ValidPaths WHERE path = ?1", [&abs], |row| row.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some(current) = current else { return Err(DbError::NotValid(abs)) };
        let mut all: Vec<String> =
            current.as_deref().unwrap_or("").split_whitespace().map(str::to_owned).collect();
        for sig in sigs {
            if !sig.is_empty() && !sig.contains(char::is_whitespace) && !all.contains(sig) {
                all.push(sig.clone());
            }
        }
        let joined = (!all.is_empty()).then(|| all.join(" "));
        self.tx
            .execute("UPDATE ValidPaths SET sigs = ?2 WHERE path = ?1", params![abs, joined])
            .map_err(|e| self.sql(e))?;
        Ok(all)
    }

    /// Delete one path's row (and its outgoing references); fails when another valid path
    /// refers to it.
    pub fn delete(&mut self, path: &StorePath) -> Result<(), DbError> {
        let abs = path.to_absolute(&self.store_dir);
        let id = path_id(&self.tx, &self.store_dir, path)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| DbError::NotValid(abs.clone()))?;
        let referrer: Option<String> = self
            .tx
            .query_row(
                "SELECT v.path FROM Refs r JOIN ValidPaths v ON r.referrer = v.id \
                 WHERE r.reference = ?1 AND r.referrer != ?1 LIMIT 1",
                [id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        if let Some(referrer) = referrer {
            return Err(DbError::StillReferenced { path: abs, referrer });
        }
        self.tx.execute("DELETE FROM ValidPaths WHERE id = ?1", [id]).map_err(|e| self.sql(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nar_core::hash::NarDigest;

    fn sp(i: u32, name: &str) -> StorePath {
        let mut d = [0u8; 20];
        d[..4].copy_from_slice(&i.to_le_bytes());
        StorePath::from_parts(d, name).unwrap()
    }

    fn info(p: &StorePath, refs: &[&StorePath]) -> PathInfo {
        PathInfo::new(
            p.clone(),
            NarDigest { hash: Sha256Hash::of(p.name().as_bytes()), size: 100 },
            refs.iter().map(|r| (*r).clone()).collect(),
        )
    }

    #[test]
    fn register_query_delete() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db/db.sqlite");
        let mut db = Database::open_ferry(&file, StoreDir::guix()).unwrap();
        let (a, b, c) = (sp(1, "a"), sp(2, "b"), sp(3, "c"));
        let err = db.register(&[info(&b, &[&a])]).unwrap_err();
        assert!(matches!(err, DbError::ReferenceNotValid { .. }), "{err}");
        assert!(!db.is_valid(&b).unwrap(), "the failed batch left nothing behind");
        db.register(&[info(&a, &[&a]), info(&b, &[&a, &b]), info(&c, &[&b])]).unwrap();
        let got = db.query_path_info(&b).unwrap().unwrap();
        assert_eq!(got.references, [a.clone(), b.clone()].into_iter().collect());
        assert_eq!(got.nar_size, 100);
        assert!(got.registration_time > 0);
        let closure = db.closure(std::slice::from_ref(&c)).unwrap();
        assert_eq!(closure.len(), 3);
        assert_eq!(db.query_referrers(&a).unwrap().len(), 2);
        assert!(matches!(db.delete(&a), Err(DbError::StillReferenced { .. })));
        db.delete(&c).unwrap();
        db.delete(&b).unwrap();
        db.delete(&a).unwrap();
        assert!(db.all_valid_paths().unwrap().is_empty());
        assert!(db.check_integrity().unwrap().is_empty());
        drop(db);
        // Reopen read-only.
        let db = Database::open_read_only(&file, DbKind::Ferry, StoreDir::guix()).unwrap();
        assert!(!db.is_valid(&a).unwrap());
    }

    #[test]
    fn add_signatures_merges_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.sqlite");
        let mut db = Database::open_ferry(&file, StoreDir::nix()).unwrap();
        let (a, b) = (sp(1, "a"), sp(2, "b"));
        db.register(&[info(&a, &[])]).unwrap();
        let s1 = "cache-1:AAAA".to_owned();
        let s2 = "cache-2:BBBB".to_owned();
        assert_eq!(db.add_signatures(&a, std::slice::from_ref(&s1)).unwrap(), vec![s1.clone()]);
        let all = db.add_signatures(&a, &[s2.clone(), s1.clone()]).unwrap();
        assert_eq!(all, [s1.clone(), s2.clone()], "kept, appended, no duplicate");
        assert_eq!(db.query_path_info(&a).unwrap().unwrap().sigs, [s1, s2]);
        assert!(matches!(db.add_signatures(&b, &[]), Err(DbError::NotValid(_))));
        drop(db);
        let db = Database::open_read_only(&file, DbKind::Ferry, StoreDir::nix()).unwrap();
        assert_eq!(db.query_path_info(&a).unwrap().unwrap().sigs.len(), 2);
    }

    #[test]
    fn scan_and_query_strategies_agree() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Database::open_ferry(&dir.path().join("db.sqlite"), StoreDir::guix()).unwrap();
        let paths: Vec<StorePath> = (0..300).map(|i| sp(i, &format!("p{i}"))).collect();
        let mut x = 12345u64;
        let infos: Vec<PathInfo> = (0..300usize)
            .map(|i| {
                let mut refs = vec![&paths[i]];
                for _ in 0..(i % 4) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    refs.push(&paths[(x >> 33) as usize % i]);
                }
                info(&paths[i], &refs)
            })
            .collect();
        db.register(&infos).unwrap();
        for root in [0usize, 17, 150, 299] {
            let id = db.path_id(&paths[root]).unwrap().unwrap();
            let mut a = db.closure(std::slice::from_ref(&paths[root])).unwrap();
            let mut b = db.closure_by_query(&[id]).unwrap().infos;
            a.sort_by(|x, y| x.path.cmp(&y.path));
            b.sort_by(|x, y| x.path.cmp(&y.path));
            assert_eq!(a, b, "closure of p{root}");
        }
    }

    #[test]
    fn reads_a_guix_schema_database() {
        // Guix's schema 7: no ultimate/sigs/ca columns; hashes as sha256:<hex>.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.sqlite");
        let conn = Connection::open(&file).unwrap();
        conn.execute_batch(
            "CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
               path TEXT UNIQUE NOT NULL, hash TEXT NOT NULL, registrationTime INTEGER NOT NULL,
               deriver TEXT, narSize INTEGER);
             CREATE TABLE Refs (referrer INTEGER NOT NULL, reference INTEGER NOT NULL,
               PRIMARY KEY (referrer, reference));",
        )
        .unwrap();
        let (a, b) = (sp(1, "a"), sp(2, "b"));
        let dir_g = StoreDir::guix();
        let h = Sha256Hash::of(b"x");
        for (id, p) in [(1, &a), (2, &b)] {
            conn.execute(
                "INSERT INTO ValidPaths VALUES (?1, ?2, ?3, 5, NULL, 120)",
                params![id, p.to_absolute(&dir_g), h.to_typed_hex()],
            )
            .unwrap();
        }
        conn.execute_batch("INSERT INTO Refs VALUES (2, 1), (2, 2)").unwrap();
        drop(conn);
        let before = std::fs::read(&file).unwrap();
        let mut db = Database::open_read_only(&file, DbKind::Guix, dir_g).unwrap();
        let info = db.query_path_info(&b).unwrap().unwrap();
        assert_eq!(info.references, [a.clone(), b.clone()].into_iter().collect());
        assert_eq!((info.nar_hash, info.nar_size, info.sigs.len(), info.ca), (h, 120, 0, None));
        assert_eq!(db.closure(std::slice::from_ref(&b)).unwrap().len(), 2);
        assert!(matches!(db.delete(&b), Err(DbError::ReadOnly { .. })));
        drop(db);
        assert_eq!(std::fs::read(&file).unwrap(), before, "never written");
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.sqlite");
        std::fs::write(&file, vec![0x5a; 8192]).unwrap();
        let err = Database::open_ferry(&file, StoreDir::guix()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DbError::Corrupt { .. }), "{text}");
        assert!(text.contains("db.sqlite") && text.contains("not a database"), "{text}");
        let err = Database::open_read_only(&file, DbKind::Nix, StoreDir::nix()).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err}");
    }
}
