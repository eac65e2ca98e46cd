//! `herald orgs`.

use serde_json::json;

use super::Connection;
use super::api::*;
use super::args::*;
use super::output::*;

pub fn orgs(conn: Connection, cmd: OrgsCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let cols = &["id", "handle", "name", "catalogs"];
    match cmd {
        OrgsCommand::List => show(&conn, &api.get_all("/v1/orgs?limit=200")?, cols),
        OrgsCommand::Create {
            name,
            handle,
            catalogs,
            no_catalogs,
        } => {
            let mut body = json!({ "name": name, "handle": handle });
            if !catalogs.is_empty() || no_catalogs {
                body["catalogs"] = json!(catalogs);
            }
            let created = api.post("/v1/orgs", body)?;
            show(&conn, &created, cols);
            // A derived handle is numbered when taken: say so, since commands name it.
            let wanted = herald_core::org::OrgHandle::from_name(&name);
            if handle.is_none()
                && let Some(given) = created["handle"].as_str()
                && let Some(n) = given.strip_prefix(&format!("{}-", wanted.as_str()))
                && n.bytes().all(|b| b.is_ascii_digit())
            {
                note!(
                    "Note: the handle {} was taken; this organization's is {given}.",
                    wanted.as_str()
                );
            }
        }
        OrgsCommand::Get { id } => show(
            &conn,
            &api.get(&api_path(&["v1", "orgs", &api.org_id(&id)?])?)?,
            cols,
        ),
        OrgsCommand::Update {
            id,
            name,
            handle,
            catalogs,
            no_catalogs,
        } => {
            let mut body = json!({});
            for (key, value) in [("name", name), ("handle", handle)] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            if !catalogs.is_empty() || no_catalogs {
                body["catalogs"] = json!(catalogs);
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                return Err(CommandLineRefused::said(
                    "nothing to change; give --name, --handle, --catalog or --no-catalogs",
                ));
            }
            let path = api_path(&["v1", "orgs", &api.org_id(&id)?])?;
            show(
                &conn,
                &api.call(reqwest::Method::PATCH, &path, Some(body))?,
                cols,
            );
        }
        OrgsCommand::Purge {
            id: given,
            before,
            yes,
        } => {
            // Looked up first: a mistyped organization is said, not asked about.
            let id = api.org_id(&given)?;
            if !yes {
                return Err(CommandLineRefused::said(format!(
                    "purging deletes {given}'s finished history before {before} for good; run \
                     `herald orgs purge {given} --before {before} --yes` to go ahead"
                )));
            }
            let answer = api.post(
                &api_path(&["v1", "orgs", &id, "purge"])?,
                json!({ "before": before }),
            )?;
            if conn.json {
                print_json(&answer);
            } else {
                let n = |k: &str| answer["purged"][k].as_u64().unwrap_or(0);
                out!(
                    "Purged {}, {} and {} received before {before}.",
                    crate::counted(n("events"), "event", "events"),
                    crate::counted(n("deliveries"), "delivery", "deliveries"),
                    crate::counted(n("attempts"), "attempt", "attempts")
                );
            }
        }
        OrgsCommand::Delete { id: given, yes } => {
            let id = api.org_id(&given)?;
            if !yes {
                return Err(CommandLineRefused::said(format!(
                    "deleting {given} deletes its webhooks, event types, API keys, events and \
                     delivery history for good; run `herald orgs delete {given} --yes` to go ahead"
                )));
            }
            api.call(
                reqwest::Method::DELETE,
                &api_path(&["v1", "orgs", &id])?,
                None,
            )?;
            deleted(&conn, &id, &format!("Deleted {id}."));
        }
    }
    Ok(())
}
