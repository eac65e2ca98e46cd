//! `herald keys`.

use serde_json::json;

use super::Connection;
use super::api::*;
use super::args::*;
use super::output::*;

pub fn keys(conn: Connection, cmd: KeysCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let cols = &["id", "name", "prefix", "role", "created_at"];
    let (KeysCommand::List { org }
    | KeysCommand::Create { org, .. }
    | KeysCommand::Delete { org, .. }) = &cmd;
    let org = api.org_id(org)?;
    match cmd {
        KeysCommand::List { .. } => {
            let path = api_path(&["v1", "orgs", &org, "api-keys"])?;
            show(&conn, &api.get(&path)?, cols);
        }
        KeysCommand::Create { name, role, .. } => {
            let path = api_path(&["v1", "orgs", &org, "api-keys"])?;
            let created = api.post(&path, json!({ "name": name, "role": role }))?;
            show(&conn, &created, cols);
            if !conn.json {
                out!(
                    "\nKey (shown once): {}",
                    created["key"].as_str().unwrap_or_default()
                );
            }
        }
        KeysCommand::Delete { mut id, .. } => {
            api.resolve_api_keys(&org, vec![&mut id])?;
            let path = api_path(&["v1", "orgs", &org, "api-keys", &id])?;
            api.call(reqwest::Method::DELETE, &path, None)?;
            deleted(&conn, &id, &format!("Deleted {id}."));
        }
    }
    Ok(())
}
