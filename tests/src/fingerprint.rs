//! What a restore must bring back, in one comparable value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::postgres::{Postgres, quote_ident};

/// A database's contents and everything around them that a dump/restore
/// must carry, read from the live server.
///
/// * Data: every leaf table (plain tables and the partitions of partitioned
///   tables; partitioned parents hold no rows themselves and are skipped)
///   and every materialized view, as row count plus an order-independent
///   digest of the rows' text (`md5(row::text)` of each row, summed as two
///   64-bit halves; no sort, constant memory, so it also works on the bulk
///   benchmark data).
/// * Sequences: `last_value` and `is_called`.
/// * Server-wide roles (not `pg_*`): attributes, password presence, a digest
///   of the password hash (not for the bootstrap superuser, whose password
///   differs per test server), settings and memberships.
/// * Owners of schemas, tables, views, sequences, types and functions, and
///   the ACLs of all of them (tables, columns, schemas, functions, types,
///   default privileges), outside PostgreSQL's own schemas and extensions.
/// * Definitions: columns, constraints, indexes, triggers, views, functions,
///   partition keys and bounds, sequence parameters; comments; extensions.
/// * The database itself: owner, ACL, comment, `ALTER DATABASE ... SET` and
///   `ALTER ROLE ... IN DATABASE ... SET` settings.
/// * TimescaleDB: each hypertable's dimensions and chunk count (chunks'
///   rows are in `tables`, as `_timescaledb_internal._hyper_*` tables).
///
/// Compare with [`Fingerprint::assert_same`] or [`assert_fingerprint_eq!`]:
/// they print only the differences ([`Fingerprint::diff`]). (`assert_eq!`
/// works but its message shows two one-line summaries.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub schemas: BTreeSet<String>,
    /// `name version (schema)`.
    pub extensions: BTreeSet<String>,
    /// `schema.table` of leaf tables.
    pub tables: BTreeMap<String, TableData>,
    /// `schema.view`.
    pub materialized_views: BTreeMap<String, TableData>,
    /// `schema.sequence`.
    pub sequences: BTreeMap<String, SequenceState>,
    pub roles: BTreeMap<String, Role>,
    /// `<kind> <schema>.<name>` (functions with their argument types) to
    /// owner.
    pub owners: BTreeMap<String, String>,
    /// `<kind> <name>` to the ACL as PostgreSQL prints it; only objects with
    /// explicit privileges appear.
    pub acls: BTreeMap<String, String>,
    /// `<kind> <name>` to its definition as PostgreSQL prints it.
    pub definitions: BTreeMap<String, String>,
    /// `<kind> <name>` to its comment.
    pub comments: BTreeMap<String, String>,
    /// `owner`, `acl`, `comment`, `settings`, `settings of <role>` of the
    /// database itself.
    pub database: BTreeMap<String, String>,
    /// `hypertable <schema>.<table>` to its dimensions and chunk count.
    pub hypertables: BTreeMap<String, String>,
}

/// Contents of one table or materialized view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    pub rows: u64,
    /// Digest of all rows, independent of their physical order; `"not
    /// populated"` for a materialized view created `WITH NO DATA`.
    pub digest: String,
}

/// A sequence's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceState {
    pub last_value: i64,
    pub is_called: bool,
}

/// A role's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub login: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connection_limit: i32,
    pub valid_until: Option<String>,
    pub has_password: bool,
    /// md5 of the stored hash, so changed passwords show; `None` for the
    /// bootstrap superuser.
    pub password_digest: Option<String>,
    /// `ALTER ROLE ... SET` settings, sorted.
    pub settings: Vec<String>,
    /// Roles this one is a member of, `name` or `name (admin option)`.
    pub member_of: Vec<String>,
}

/// Every fingerprint query runs with this search path.
const PINNED_SEARCH_PATH: &str = "SET search_path TO pg_catalog;\n";

/// Objects outside PostgreSQL's own schemas.
const USER_NS: &str = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'";

impl Fingerprint {
    /// Reads the fingerprint of `db` on `pg` (two psql runs).
    pub fn of(pg: &Postgres, db: &str) -> Result<Fingerprint> {
        // Names print as the session's search_path makes them (a database's
        // own `SET search_path` changes format_type's output): fix it.
        let catalog = pg.try_psql(db, &format!("{PINNED_SEARCH_PATH}{}", catalog_sql()))?;
        let catalog: Catalog = serde_json::from_str(&catalog)
            .with_context(|| format!("parsing the catalog query's output: {catalog}"))?;

        let mut data_sql = String::new();
        for rel in &catalog.relations {
            let qualified = format!("{}.{}", quote_ident(&rel.schema), quote_ident(&rel.name));
            let key = format!("{}.{}", rel.schema, rel.name);
            let key = crate::postgres::quote_literal(&key);
            match rel.kind.as_str() {
                "S" => data_sql.push_str(&format!(
                    "SELECT json_build_array('S', {key}, last_value, is_called) FROM {qualified};\n"
                )),
                "m" if !rel.populated => data_sql.push_str(&format!(
                    "SELECT json_build_array('m', {key}, 0, 'not populated');\n"
                )),
                kind => data_sql.push_str(&format!(
                    "SELECT json_build_array('{kind}', {key}, count(*), \
                     md5(coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text \
                     || ':' || coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text)) \
                     FROM (SELECT md5(_fp_row::text) AS h FROM ONLY {qualified} AS _fp_row) AS _fp;\n"
                )),
            }
        }
        let mut tables = BTreeMap::new();
        let mut materialized_views = BTreeMap::new();
        let mut sequences = BTreeMap::new();
        if !data_sql.is_empty() {
            for line in pg
                .try_psql(db, &format!("{PINNED_SEARCH_PATH}{data_sql}"))?
                .lines()
            {
                let value: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("parsing data line {line}"))?;
                let field = |i: usize| value.get(i).cloned().unwrap_or_default();
                let name = field(1).as_str().unwrap_or_default().to_owned();
                match field(0).as_str() {
                    Some("S") => {
                        sequences.insert(
                            name,
                            SequenceState {
                                last_value: field(2).as_i64().context("last_value")?,
                                is_called: field(3).as_bool().context("is_called")?,
                            },
                        );
                    }
                    Some(kind) => {
                        let data = TableData {
                            rows: field(2).as_u64().context("count")?,
                            digest: field(3).as_str().context("digest")?.to_owned(),
                        };
                        if kind == "m" {
                            materialized_views.insert(name, data);
                        } else {
                            tables.insert(name, data);
                        }
                    }
                    None => bail!("unexpected data line {line}"),
                }
            }
        }

        let hypertables = if catalog
            .extensions
            .iter()
            .any(|e| e.starts_with("timescaledb "))
        {
            let text = pg.try_psql(db, &format!("{PINNED_SEARCH_PATH}{HYPERTABLES_SQL}"))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing the hypertable query's output: {text}"))?
        } else {
            BTreeMap::new()
        };

        Ok(Fingerprint {
            database: catalog.database,
            hypertables,
            schemas: catalog.schemas,
            extensions: catalog.extensions,
            tables,
            materialized_views,
            sequences,
            roles: catalog.roles,
            owners: catalog.owners,
            acls: catalog.acls,
            definitions: catalog.definitions,
            comments: catalog.comments,
        })
    }

    /// Row counts of the leaf tables, `schema.table` to rows.
    pub fn table_rows(&self) -> BTreeMap<String, u64> {
        self.tables
            .iter()
            .map(|(name, data)| (name.clone(), data.rows))
            .collect()
    }

    /// Rows in all leaf tables together.
    pub fn total_rows(&self) -> u64 {
        self.tables.values().map(|t| t.rows).sum()
    }

    /// The differences from `other`, one readable line each (empty when
    /// equal). `self` is "left", `other` "right".
    pub fn diff(&self, other: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        diff_sets("schema", &self.schemas, &other.schemas, &mut out);
        diff_sets("extension", &self.extensions, &other.extensions, &mut out);
        diff_maps("table", &self.tables, &other.tables, &mut out);
        diff_maps(
            "materialized view",
            &self.materialized_views,
            &other.materialized_views,
            &mut out,
        );
        diff_maps("sequence", &self.sequences, &other.sequences, &mut out);
        diff_maps("role", &self.roles, &other.roles, &mut out);
        diff_maps("owner of", &self.owners, &other.owners, &mut out);
        diff_maps("ACL of", &self.acls, &other.acls, &mut out);
        diff_maps(
            "definition of",
            &self.definitions,
            &other.definitions,
            &mut out,
        );
        diff_maps("comment on", &self.comments, &other.comments, &mut out);
        diff_maps("database", &self.database, &other.database, &mut out);
        diff_maps("", &self.hypertables, &other.hypertables, &mut out);
        out
    }

    /// Panics with the differences, readably, unless `self == expected`.
    #[track_caller]
    pub fn assert_same(&self, expected: &Fingerprint, what: &str) {
        let diff = self.diff(expected);
        if !diff.is_empty() {
            panic!(
                "{what}: the database differs from what was expected \
                 (left = actual, right = expected), {} difference(s):\n  {}",
                diff.len(),
                diff.join("\n  ")
            );
        }
    }

    /// A one-line summary: counts of tables, rows, roles and so on.
    pub fn summary(&self) -> String {
        format!(
            "{} schemas, {} tables with {} rows, {} materialized views, {} sequences, {} roles, {} owned objects, {} ACLs, {} definitions, {} database facts, {} hypertables",
            self.schemas.len(),
            self.tables.len(),
            self.total_rows(),
            self.materialized_views.len(),
            self.sequences.len(),
            self.roles.len(),
            self.owners.len(),
            self.acls.len(),
            self.definitions.len(),
            self.database.len(),
            self.hypertables.len()
        )
    }
}

/// `{:?}` prints the one-line summary (a full dump of hundreds of entries
/// would bury the point); `{:#?}` prints everything, as pretty JSON. To
/// compare, use [`Fingerprint::assert_same`] or [`assert_fingerprint_eq!`],
/// which print only the differences.
impl Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            let json = serde_json::to_string_pretty(self).map_err(|_| fmt::Error)?;
            f.write_str(&json)
        } else {
            write!(f, "Fingerprint({})", self.summary())
        }
    }
}

/// Asserts two [`Fingerprint`]s are equal, printing only their differences:
/// `assert_fingerprint_eq!(actual, expected)` or with a format message.
#[macro_export]
macro_rules! assert_fingerprint_eq {
    ($actual:expr, $expected:expr $(,)?) => {
        $crate::Fingerprint::assert_same(&$actual, &$expected, "fingerprints differ")
    };
    ($actual:expr, $expected:expr, $($arg:tt)+) => {
        $crate::Fingerprint::assert_same(&$actual, &$expected, &format!($($arg)+))
    };
}

fn diff_sets(what: &str, left: &BTreeSet<String>, right: &BTreeSet<String>, out: &mut Vec<String>) {
    for only in left.difference(right) {
        out.push(format!("{what} {only}: only left"));
    }
    for only in right.difference(left) {
        out.push(format!("{what} {only}: only right"));
    }
}

fn diff_maps<T: PartialEq + Debug>(
    what: &str,
    left: &BTreeMap<String, T>,
    right: &BTreeMap<String, T>,
    out: &mut Vec<String>,
) {
    for (key, l) in left {
        match right.get(key) {
            None => out.push(format!("{what} {key}: only left: {l:?}")),
            Some(r) if r != l => out.push(format!("{what} {key}: left {l:?} != right {r:?}")),
            Some(_) => {}
        }
    }
    for (key, r) in right {
        if !left.contains_key(key) {
            out.push(format!("{what} {key}: only right: {r:?}"));
        }
    }
}

#[derive(Deserialize)]
struct Catalog {
    schemas: BTreeSet<String>,
    extensions: BTreeSet<String>,
    relations: Vec<Relation>,
    roles: BTreeMap<String, Role>,
    owners: BTreeMap<String, String>,
    acls: BTreeMap<String, String>,
    definitions: BTreeMap<String, String>,
    comments: BTreeMap<String, String>,
    database: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Relation {
    schema: String,
    name: String,
    /// `r` leaf table, `m` materialized view, `S` sequence.
    kind: String,
    populated: bool,
}

/// Hypertables with their dimensions and chunk counts, as a JSON object.
const HYPERTABLES_SQL: &str = r#"
SELECT coalesce(json_object_agg(format('hypertable %s.%s', h.hypertable_schema, h.hypertable_name),
                                format('dimensions %s; %s chunks',
                                       (SELECT string_agg(format('%s %s%s', d.column_name, d.dimension_type,
                                                                 coalesce(' ' || d.time_interval::text, '')
                                                                 || coalesce(' ' || d.num_partitions::text || ' partitions', '')),
                                                          ', ' ORDER BY d.dimension_number)
                                        FROM timescaledb_information.dimensions d
                                        WHERE d.hypertable_schema = h.hypertable_schema
                                          AND d.hypertable_name = h.hypertable_name),
                                       h.num_chunks)
                                ORDER BY h.hypertable_schema, h.hypertable_name), '{}')
FROM timescaledb_information.hypertables h;
"#;

/// One query returning the catalog side of the fingerprint as a JSON object.
fn catalog_sql() -> String {
    format!(
        r#"
WITH
rel AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.relowner, c.relacl, c.relispopulated,
           CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                          WHEN 'f' THEN 'foreign table' WHEN 'c' THEN 'type' END AS kind,
           format('%s.%s', n.nspname, c.relname) AS qname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {USER_NS}
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
),
typ AS (
    SELECT t.oid, format('%s.%s', n.nspname, t.typname) AS qname, t.typowner, t.typacl,
           t.typtype, t.typnotnull, t.typbasetype, t.typtypmod
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE {USER_NS}
      AND (t.typtype IN ('e', 'd', 'r', 'm')
           OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                      AND d.objid = t.oid AND d.deptype = 'e')
),
fn AS (
    SELECT p.oid, format('%s.%s(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS qname,
           p.proowner, p.proacl, p.prokind
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE {USER_NS}
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
),
ns AS (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n WHERE {USER_NS}
),
owners(k, v) AS (
    SELECT 'schema ' || nspname, pg_get_userbyid(nspowner) FROM ns
    UNION ALL SELECT kind || ' ' || qname, pg_get_userbyid(relowner) FROM rel WHERE relkind <> 'c'
    UNION ALL SELECT 'type ' || qname, pg_get_userbyid(typowner) FROM typ
    UNION ALL SELECT 'function ' || qname, pg_get_userbyid(proowner) FROM fn
),
acls(k, v) AS (
    SELECT 'schema ' || nspname, nspacl::text FROM ns WHERE nspacl IS NOT NULL
    UNION ALL SELECT kind || ' ' || qname, relacl::text FROM rel WHERE relacl IS NOT NULL
    UNION ALL SELECT 'column ' || rel.qname || '.' || a.attname, a.attacl::text
              FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid
              WHERE a.attacl IS NOT NULL AND NOT a.attisdropped
    UNION ALL SELECT 'type ' || qname, typacl::text FROM typ WHERE typacl IS NOT NULL
    UNION ALL SELECT 'function ' || qname, proacl::text FROM fn WHERE proacl IS NOT NULL
    UNION ALL SELECT format('default privileges of %s in %s on %s', pg_get_userbyid(d.defaclrole),
                            coalesce(n.nspname, '(all schemas)'), d.defaclobjtype),
                     d.defaclacl::text
              FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
),
defs(k, v) AS (
    SELECT 'columns of ' || rel.kind || ' ' || rel.qname,
           string_agg(format('%s %s%s%s%s%s', quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
                             CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                             CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                                WHEN 'd' THEN ' generated by default as identity' ELSE '' END,
                             CASE WHEN a.attgenerated = 's' THEN ' generated as ' ELSE '' END
                             || coalesce(CASE WHEN a.attgenerated = 's' THEN '' ELSE ' default ' END
                                         || pg_get_expr(ad.adbin, ad.adrelid), ''),
                             CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                                  THEN ' collate ' || a.attcollation::regcollation::text ELSE '' END),
                      ', ' ORDER BY a.attnum)
    FROM rel
    JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE rel.relkind <> 'S'
    GROUP BY rel.kind, rel.qname
    UNION ALL SELECT 'constraint ' || rel.qname || '.' || co.conname, pg_get_constraintdef(co.oid)
              FROM pg_constraint co JOIN rel ON rel.oid = co.conrelid
    UNION ALL SELECT 'constraint ' || typ.qname || '.' || co.conname, pg_get_constraintdef(co.oid)
              FROM pg_constraint co JOIN typ ON typ.oid = co.contypid
    UNION ALL SELECT 'index ' || rel.qname || '.' || ic.relname, pg_get_indexdef(i.indexrelid)
              FROM pg_index i JOIN rel ON rel.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
    UNION ALL SELECT 'trigger ' || rel.qname || '.' || tg.tgname,
                     pg_get_triggerdef(tg.oid) || CASE tg.tgenabled WHEN 'D' THEN ' (disabled)' ELSE '' END
              FROM pg_trigger tg JOIN rel ON rel.oid = tg.tgrelid WHERE NOT tg.tgisinternal
    UNION ALL SELECT 'query of ' || kind || ' ' || qname, pg_get_viewdef(oid) FROM rel WHERE relkind IN ('v', 'm')
    UNION ALL SELECT 'partition key of ' || qname, pg_get_partkeydef(oid) FROM rel WHERE relkind = 'p'
    UNION ALL SELECT 'partition bound of ' || rel.qname, pg_get_expr(c.relpartbound, c.oid)
              FROM rel JOIN pg_class c ON c.oid = rel.oid WHERE c.relispartition
    UNION ALL SELECT 'function ' || qname, pg_get_functiondef(oid) FROM fn WHERE prokind IN ('f', 'p', 'w')
    UNION ALL SELECT 'sequence ' || rel.qname,
                     format('%s start %s increment %s min %s max %s cache %s%s', format_type(s.seqtypid, NULL),
                            s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
                            CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END)
              FROM pg_sequence s JOIN rel ON rel.oid = s.seqrelid
    UNION ALL SELECT 'type ' || qname,
                     CASE typtype
                         WHEN 'e' THEN (SELECT 'enum ' || string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                        FROM pg_enum e WHERE e.enumtypid = typ.oid)
                         WHEN 'd' THEN 'domain over ' || format_type(typbasetype, typtypmod)
                                       || CASE WHEN typnotnull THEN ' not null' ELSE '' END
                         ELSE typtype::text
                     END
              FROM typ
    UNION ALL SELECT 'owned-by of sequence ' || rel.qname,
                     (SELECT format('%s.%s', tc.relname, ta.attname) FROM pg_depend d
                      JOIN pg_class tc ON tc.oid = d.refobjid
                      JOIN pg_attribute ta ON ta.attrelid = d.refobjid AND ta.attnum = d.refobjsubid
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = rel.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1)
              FROM rel WHERE relkind = 'S'
),
comments(k, v) AS (
    SELECT 'schema ' || nspname, obj_description(oid, 'pg_namespace') FROM ns
    UNION ALL SELECT kind || ' ' || qname, obj_description(oid, 'pg_class') FROM rel
    UNION ALL SELECT 'column ' || rel.qname || '.' || a.attname, col_description(rel.oid, a.attnum)
              FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL SELECT 'type ' || qname, obj_description(oid, 'pg_type') FROM typ
    UNION ALL SELECT 'function ' || qname, obj_description(oid, 'pg_proc') FROM fn
),
dbfacts(k, v) AS (
    SELECT 'owner', pg_get_userbyid(d.datdba)::text FROM pg_database d WHERE d.datname = current_database()
    UNION ALL SELECT 'acl', (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(d.datacl) AS a)
              FROM pg_database d WHERE d.datname = current_database()
    UNION ALL SELECT 'comment', shobj_description(d.oid, 'pg_database') FROM pg_database d WHERE d.datname = current_database()
    UNION ALL SELECT CASE WHEN s.setrole = 0 THEN 'settings' ELSE 'settings of ' || pg_get_userbyid(s.setrole) END,
                     (SELECT string_agg(c, '; ' ORDER BY c) FROM unnest(s.setconfig) AS c)
              FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
              WHERE d.datname = current_database()
),
roles AS (
    SELECT r.rolname, json_build_object(
        'superuser', r.rolsuper, 'inherit', r.rolinherit, 'createrole', r.rolcreaterole,
        'createdb', r.rolcreatedb, 'login', r.rolcanlogin, 'replication', r.rolreplication,
        'bypassrls', r.rolbypassrls, 'connection_limit', r.rolconnlimit,
        'valid_until', r.rolvaliduntil::text,
        'has_password', a.rolpassword IS NOT NULL,
        'password_digest', CASE WHEN r.oid = 10 THEN NULL ELSE md5(a.rolpassword) END,
        'settings', coalesce((SELECT json_agg(s ORDER BY s) FROM unnest(r.rolconfig) AS s), '[]'),
        'member_of', coalesce((SELECT json_agg(g.rolname || CASE WHEN m.admin_option THEN ' (admin option)' ELSE '' END
                                                ORDER BY g.rolname)
                               FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                               WHERE m.member = r.oid), '[]')) AS info
    FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid
    WHERE r.rolname !~ '^pg_'
)
SELECT json_build_object(
    'schemas', (SELECT coalesce(json_agg(nspname ORDER BY nspname), '[]') FROM ns),
    'extensions', (SELECT coalesce(json_agg(format('%s %s (%s)', e.extname, e.extversion, n.nspname) ORDER BY e.extname), '[]')
                   FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace),
    'relations', (SELECT coalesce(json_agg(json_build_object('schema', nspname, 'name', relname,
                                                             'kind', relkind, 'populated', relispopulated)
                                           ORDER BY nspname, relname), '[]')
                  FROM rel WHERE relkind IN ('r', 'm', 'S')),
    'roles', (SELECT coalesce(json_object_agg(rolname, info ORDER BY rolname), '{{}}') FROM roles),
    'owners', (SELECT coalesce(json_object_agg(k, v ORDER BY k), '{{}}') FROM owners),
    'acls', (SELECT coalesce(json_object_agg(k, v ORDER BY k), '{{}}') FROM acls),
    'definitions', (SELECT coalesce(json_object_agg(k, coalesce(v, '') ORDER BY k), '{{}}') FROM defs),
    'comments', (SELECT coalesce(json_object_agg(k, v ORDER BY k), '{{}}') FROM comments WHERE v IS NOT NULL),
    'database', (SELECT coalesce(json_object_agg(k, v ORDER BY k), '{{}}') FROM dbfacts WHERE v IS NOT NULL)
);
"#
    )
}
