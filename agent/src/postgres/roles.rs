//! The roles a database needs, carried inside its backup: `pg_dumpall
//! --roles-only` turned into SQL that creates only what is missing.

use std::collections::BTreeMap;

use super::{quote_literal, split_ident};

/// Turns `pg_dumpall --roles-only` output into SQL that creates each role
/// only where it is missing (with its attributes, password and settings) and
/// then grants memberships: safe to run on a server that has the roles (it
/// changes nothing there) and complete on one that has none.
pub fn roles_prelude(dumpall: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut statements: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut grants = Vec::new();
    for line in dumpall.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("CREATE ROLE ") {
            if let Some((name, _)) = split_ident(rest) {
                order.push(name.clone());
                statements.entry(name).or_default().push(line.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("ALTER ROLE ") {
            // Per-database settings name a database the target may lack.
            if line.contains(" IN DATABASE ") {
                continue;
            }
            if let Some((name, _)) = split_ident(rest) {
                statements.entry(name).or_default().push(line.to_owned());
            }
        } else if line.starts_with("GRANT ") && line.ends_with(';') {
            // The grantor may not exist on the target server; the restoring
            // superuser grants instead.
            let statement = match line.find(" GRANTED BY ") {
                Some(at) => format!("{};", &line[..at]),
                None => line.to_owned(),
            };
            grants.push(statement);
        }
    }
    let body: String = order
        .iter()
        .flat_map(|name| statements.get(name))
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let mut tag = "mesbak".to_owned();
    while body.contains(&format!("${tag}$")) {
        tag.push('_');
    }
    let mut out = String::from(
        "--\n-- mesbak: roles this database uses (from pg_dumpall --roles-only),\n\
         -- created only where missing; existing roles are left as they are.\n--\n\n",
    );
    for name in &order {
        out.push_str(&format!(
            "DO ${tag}$\nBEGIN\n  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {}) THEN\n",
            quote_literal(name)
        ));
        for statement in &statements[name] {
            out.push_str("    EXECUTE ");
            out.push_str(&quote_literal(statement.trim_end_matches(';')));
            out.push_str(";\n");
        }
        out.push_str(&format!("  END IF;\nEND\n${tag}$;\n\n"));
    }
    for grant in grants {
        out.push_str(&grant);
        out.push('\n');
    }
    out.push_str("\n-- mesbak: end of roles\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMPALL: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict abc

SET default_transaction_read_only = off;

--
-- Roles
--

CREATE ROLE admin;
ALTER ROLE admin WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:abc=$def=:ghi=';
CREATE ROLE "Line ""Operator""";
ALTER ROLE "Line ""Operator""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'it''s';
ALTER ROLE "Line ""Operator""" SET search_path TO 'mes_core';
CREATE ROLE mes_owner;
ALTER ROLE mes_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;

--
-- Role memberships
--

GRANT mes_owner TO "Line ""Operator""" GRANTED BY admin;

\unrestrict abc
"#;

    #[test]
    fn roles_are_created_only_where_missing() {
        let prelude = roles_prelude(DUMPALL);
        assert!(!prelude.contains("\\restrict"), "{prelude}");
        assert!(!prelude.contains("GRANTED BY"), "{prelude}");
        assert!(prelude.contains("GRANT mes_owner TO \"Line \"\"Operator\"\"\";"));
        assert!(
            prelude.contains("WHERE rolname = 'Line \"Operator\"'"),
            "{prelude}"
        );
        assert!(
            prelude.contains("EXECUTE 'ALTER ROLE \"Line \"\"Operator\"\"\" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD ''it''''s''';"),
            "{prelude}"
        );
        assert_eq!(prelude.matches("IF NOT EXISTS").count(), 3);
        // Settings belong to their role's block.
        let operator_block = prelude
            .split("DO $mesbak$")
            .find(|block| block.contains("rolname = 'Line"))
            .unwrap();
        assert!(operator_block.contains("SET search_path"));
    }
}
