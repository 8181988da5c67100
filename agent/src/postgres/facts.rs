//! What pg_dump leaves out without `--create` and a restore must bring back:
//! the database's own settings (`ALTER DATABASE ... SET`), its owner, its
//! grants, its comment, and roles' settings in it (`ALTER ROLE ... IN
//! DATABASE ... SET`).
//!
//! They are read at backup time and written at the end of the payload as
//! statements on `current_database()`, so they land on whatever database the
//! dump is loaded into: the agent's new database (renamed live at the swap,
//! settings and all), or the empty database an operator pipes
//! `decrypt | gunzip | psql` into.

use mesbak_interface::Error;
use serde::Deserialize;

use super::{Server, quote_ident, quote_literal};

/// The database-level facts of one database.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DatabaseFacts {
    pub owner: String,
    pub comment: Option<String>,
    /// `None`: the default privileges (PostgreSQL stores no ACL).
    pub acl: Option<Vec<Grant>>,
    #[serde(default)]
    pub settings: Vec<RoleSettings>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Grant {
    /// `None`: PUBLIC.
    pub grantee: Option<String>,
    pub privilege: String,
    pub grantable: bool,
}

/// `name=value` settings for the database (role `None`) or for one role in it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RoleSettings {
    pub role: Option<String>,
    pub config: Vec<String>,
}

/// Settings that describe a moment, not the database: never carried.
const TRANSIENT_SETTINGS: &[&str] = &["timescaledb.restoring"];

/// Settings whose value is a list of names, quoted element by element (as
/// pg_dump's `variable_is_guc_list_quote`).
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// Reads the facts of `database`.
pub async fn read(server: &Server, database: &str) -> Result<DatabaseFacts, Error> {
    server.query_value(database, QUERY).await
}

/// The current database's facts as JSON: one value, so that it can go
/// into a larger query.
pub const QUERY: &str = "SELECT pg_catalog.json_build_object(\
     'owner', pg_catalog.pg_get_userbyid(d.datdba), \
     'comment', pg_catalog.shobj_description(d.oid, 'pg_database'), \
     'acl', CASE WHEN d.datacl IS NULL THEN NULL ELSE \
              (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_object(\
                       'grantee', CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END, \
                       'privilege', a.privilege_type, 'grantable', a.is_grantable) \
                     ORDER BY a.n), '[]'::json) \
               FROM pg_catalog.aclexplode(d.datacl) WITH ORDINALITY \
                    AS a(grantor, grantee, privilege_type, is_grantable, n)) END, \
     'settings', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_object(\
                       'role', CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole) END, \
                       'config', s.setconfig) ORDER BY s.setrole), '[]'::json) \
                  FROM pg_catalog.pg_db_role_setting s WHERE s.setdatabase = d.oid)) \
     FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()";

impl DatabaseFacts {
    /// SQL that applies the facts to the current database. Each statement
    /// runs through `format(..., current_database())`; the database name is
    /// never written into the payload.
    pub fn to_sql(&self) -> String {
        const DB: &str = "\u{0}DB\u{0}";
        let mut statements = vec![format!(
            "ALTER DATABASE {DB} OWNER TO {}",
            quote_ident(&self.owner)
        )];
        if let Some(acl) = &self.acl {
            statements.push(format!("REVOKE ALL ON DATABASE {DB} FROM PUBLIC"));
            for grant in acl {
                statements.push(format!(
                    "GRANT {} ON DATABASE {DB} TO {}{}",
                    grant.privilege,
                    grant
                        .grantee
                        .as_deref()
                        .map_or_else(|| "PUBLIC".to_owned(), quote_ident),
                    if grant.grantable {
                        " WITH GRANT OPTION"
                    } else {
                        ""
                    }
                ));
            }
        }
        for settings in &self.settings {
            let target = match &settings.role {
                None => format!("DATABASE {DB}"),
                Some(role) => format!("ROLE {} IN DATABASE {DB}", quote_ident(role)),
            };
            for entry in &settings.config {
                let Some((name, value)) = entry.split_once('=') else {
                    continue;
                };
                if TRANSIENT_SETTINGS.contains(&name) {
                    continue;
                }
                statements.push(format!(
                    "ALTER {target} SET {} TO {}",
                    quote_ident(name),
                    setting_value(name, value)
                ));
            }
        }
        if let Some(comment) = &self.comment {
            statements.push(format!(
                "COMMENT ON DATABASE {DB} IS {}",
                quote_literal(comment)
            ));
        }
        let mut body = String::new();
        for statement in statements {
            let template = statement.replace('%', "%%").replace(DB, "%I");
            body.push_str(&format!(
                "    EXECUTE pg_catalog.format({}, pg_catalog.current_database());\n",
                quote_literal(&template)
            ));
        }
        let mut tag = "mesbak".to_owned();
        while body.contains(&format!("${tag}$")) {
            tag.push('_');
        }
        format!(
            "\n--\n{MARKER}\n\
             -- (pg_dump leaves them out without --create); applied to the database\n\
             -- this is loaded into.\n--\n\nDO ${tag}$\nBEGIN\n{body}END\n${tag}$;\n"
        )
    }
}

/// The comment line that opens the facts in a payload (the dump reader
/// looks for it).
pub const MARKER: &str =
    "-- mesbak: owner, privileges, settings and comment of the database itself";

/// A setting's value as SQL: list settings element by element.
fn setting_value(name: &str, value: &str) -> String {
    if LIST_SETTINGS.contains(&name) {
        let elements = split_guc_list(value);
        if elements.is_empty() {
            return "''".into();
        }
        elements
            .iter()
            .map(|e| quote_literal(e))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(value)
    }
}

/// Splits a list setting as PostgreSQL stores it (`"$user", public`) into
/// its elements, double quotes removed (as `SplitGUCList`).
fn split_guc_list(value: &str) -> Vec<String> {
    let mut elements = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut element = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        element.push('"');
                    } else {
                        break;
                    }
                } else {
                    element.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                element.push(c);
                chars.next();
            }
            element = element.trim_end().to_owned();
        }
        elements.push(element);
        if chars.next().is_none() {
            break;
        }
    }
    elements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_are_split_like_postgres() {
        assert_eq!(
            split_guc_list("mes_core, public, \"$user\""),
            vec!["mes_core", "public", "$user"]
        );
        assert_eq!(split_guc_list("\"a,b\"\"c\""), vec!["a,b\"c"]);
        assert_eq!(split_guc_list(""), Vec::<String>::new());
        assert_eq!(
            setting_value("search_path", "mes_core, \"$user\""),
            "'mes_core', '$user'"
        );
        assert_eq!(setting_value("work_mem", "8MB"), "'8MB'");
    }

    #[test]
    fn facts_become_statements_on_the_current_database() {
        let facts = DatabaseFacts {
            owner: "mes owner".into(),
            comment: Some("50% of 'Werk Süd'".into()),
            acl: Some(vec![
                Grant {
                    grantee: None,
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
                Grant {
                    grantee: Some("mes_owner".into()),
                    privilege: "CREATE".into(),
                    grantable: true,
                },
            ]),
            settings: vec![
                RoleSettings {
                    role: None,
                    config: vec![
                        "search_path=mes_core, \"$user\"".into(),
                        "timescaledb.restoring=on".into(),
                    ],
                },
                RoleSettings {
                    role: Some("mes_report".into()),
                    config: vec!["statement_timeout=45s".into()],
                },
            ],
        };
        let sql = facts.to_sql();
        assert!(sql.contains("pg_catalog.format('ALTER DATABASE %I OWNER TO \"mes owner\"', pg_catalog.current_database())"), "{sql}");
        assert!(
            sql.contains("'REVOKE ALL ON DATABASE %I FROM PUBLIC'"),
            "{sql}"
        );
        assert!(
            sql.contains("'GRANT CONNECT ON DATABASE %I TO PUBLIC'"),
            "{sql}"
        );
        assert!(
            sql.contains("'GRANT CREATE ON DATABASE %I TO \"mes_owner\" WITH GRANT OPTION'"),
            "{sql}"
        );
        assert!(
            sql.contains("'ALTER DATABASE %I SET \"search_path\" TO ''mes_core'', ''$user'''"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "'ALTER ROLE \"mes_report\" IN DATABASE %I SET \"statement_timeout\" TO ''45s'''"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("'COMMENT ON DATABASE %I IS ''50%% of ''''Werk Süd'''''''"),
            "{sql}"
        );
        assert!(!sql.contains("restoring"), "{sql}");
        assert!(sql.contains("DO $mesbak$"));
    }
}
