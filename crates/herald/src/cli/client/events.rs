//! `herald events`.

use std::io::Read;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::Connection;
use super::api::*;
use super::args::*;
use super::output::*;

pub fn events(conn: Connection, cmd: EventsCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    match cmd {
        EventsCommand::Types { org } => show(
            &conn,
            &api.get(&api_path(&[
                "v1",
                "orgs",
                &api.org_id(&org)?,
                "event-types",
            ])?)?,
            &["name", "channel", "source", "description"],
        ),
        EventsCommand::Catalog { name } => {
            let answer = api.get("/v1/event-types")?;
            let catalogs = answer["catalogs"].as_array().cloned().unwrap_or_default();
            let known: Vec<&str> = catalogs
                .iter()
                .filter_map(|c| c["catalog"].as_str())
                .collect();
            if let Some(name) = &name
                && !known.contains(&name.as_str())
            {
                bail!("no catalog '{name}'; the catalogs are {}", known.join(", "));
            }
            let rows: Vec<Value> = catalogs
                .iter()
                .filter(|c| name.as_deref().is_none_or(|n| c["catalog"] == n))
                .flat_map(|c| {
                    let catalog = c["catalog"].clone();
                    c["types"].as_array().cloned().unwrap_or_default().into_iter().map(
                        move |t| json!({ "catalog": catalog, "name": t["name"], "channel": t["channel"], "description": t["description"] }),
                    )
                })
                .collect();
            let shown = if conn.json {
                // The API's answer, with only the catalog asked for.
                json!({ "catalogs": catalogs
                    .iter()
                    .filter(|c| name.as_deref().is_none_or(|n| c["catalog"] == n))
                    .collect::<Vec<_>>() })
            } else {
                json!({ "data": rows })
            };
            show(
                &conn,
                &shown,
                &["catalog", "name", "channel", "description"],
            );
        }
        EventsCommand::Register {
            org,
            name,
            channel,
            description,
            schema,
            example,
        } => {
            let mut body = json!({ "name": name });
            if let Some(channel) = channel {
                body["channel"] = json!(channel);
            }
            if let Some(description) = description {
                body["description"] = json!(description);
            }
            if let Some(file) = schema {
                body["schema"] = read_json_input(&file, "give --schema a JSON Schema")?;
            }
            if let Some(example) = example {
                body["example"] = serde_json::from_str(&example)
                    .context("--example must be JSON, e.g. '{\"invoice\": {\"id\": \"in_1\"}}'")?;
            }
            let org = api.org_id(&org)?;
            let answer = api.post(&api_path(&["v1", "orgs", &org, "event-types"])?, body)?;
            show(&conn, &answer, &["name", "channel", "description"]);
        }
        EventsCommand::Unregister { org, name } => {
            let org = api.org_id(&org)?;
            api.call(
                reqwest::Method::DELETE,
                &api_path(&["v1", "orgs", &org, "event-types", &name])?,
                None,
            )?;
            deleted(&conn, &name, &format!("Deleted the event type {name}."));
        }
        EventsCommand::Send(args) => super::send::send(conn, args)?,
        EventsCommand::List {
            org,
            event_type,
            since,
            limit,
            cursor,
        } => {
            let org = api.org_id(&org)?;
            let path = api_path(&["v1", "orgs", &org, "events"])?;
            // `--since 1h` is a time by now: the next page keeps the same one.
            let also = since
                .as_deref()
                .map(|t| format!(" --since {t}"))
                .unwrap_or_default();
            let query = [("type", event_type), ("since", since), ("cursor", cursor)];
            let cols = &["id", "type", "occurred_at", "received_at", "correlation_id"];
            show_page(
                &conn,
                &api.get(&page_path(&path, limit, query))?,
                cols,
                &also,
            );
        }
        EventsCommand::Get { org, id } => {
            let org = api.org_id(&org)?;
            let answer = api.get(&api_path(&["v1", "orgs", &org, "events", &id])?)?;
            if conn.json {
                print_json(&answer);
            } else {
                show_record(
                    &conn,
                    &answer["event"],
                    &["id", "type", "occurred_at", "received_at", "correlation_id"],
                );
                // As JSON, with what could rewrite or reorder the terminal escaped.
                let data =
                    serde_json::to_string_pretty(&answer["event"]["data"]).unwrap_or_default();
                out!("data:\n{}", herald_core::shown_safely(&data));
                out!();
                let deliveries = answer["deliveries"].as_array().map_or(0, Vec::len);
                if deliveries == 0 {
                    out!("No delivery: no enabled webhook wanted it when it arrived.");
                } else {
                    let mut rows = answer["deliveries"].clone();
                    name_webhooks(&api, &org, &mut rows);
                    show(
                        &conn,
                        &json!({ "data": rows }),
                        &[
                            "id",
                            "webhook",
                            "state",
                            "attempt_count",
                            "last_status",
                            "next_attempt_at",
                            "last_error",
                        ],
                    );
                    if answer["truncated"] == true {
                        out!("(the first {deliveries} shown: it went to more webhooks)");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Gives each delivery a `webhook` column: its webhook's name, as the CLI takes it, or the id
/// where the name is shared, the webhook was deleted, or the list could not be read.
fn name_webhooks(api: &Api, org: &str, deliveries: &mut Value) {
    let listed = api_path(&["v1", "orgs", org, "webhooks"])
        .and_then(|path| api.get_all(&format!("{path}?limit=200")))
        .map(|page| page["data"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let name_of = |id: &str| {
        let name = listed
            .iter()
            .find(|w| w["id"].as_str() == Some(id))?
            .get("name")?
            .as_str()?;
        let shared = listed
            .iter()
            .filter(|w| w["name"].as_str() == Some(name))
            .count()
            > 1;
        // A name the CLI would read back as an id (an old one, kept as it was) is not shown.
        let like_an_id = herald_core::WebhookId::parse(name).is_ok();
        (!shared && !like_an_id).then(|| name.to_owned())
    };
    for delivery in deliveries.as_array_mut().into_iter().flatten() {
        let id = delivery["webhook_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        delivery["webhook"] = json!(name_of(&id).unwrap_or(id));
    }
}

/// The JSON in `file` (`-`: standard input); `wanted` says what it should hold, for the
/// message when it is not JSON.
pub(super) fn read_json_input(file: &str, wanted: &str) -> anyhow::Result<Value> {
    let (text, source) = read_input(file)?;
    // As the server does, a byte-order mark (some editors write one) is passed over.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::from_str(text).with_context(|| format!("{source} is not JSON: {wanted}"))
}

/// The text in `file` (`-`: standard input), and how to name where it came from.
pub(super) fn read_input(file: &str) -> anyhow::Result<(String, String)> {
    Ok(if file == "-" {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() {
            // Nothing piped in: say why the command waits, and how to end it.
            note!("Reading JSON from standard input (nothing is piped in); end it with Ctrl-D.");
        }
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("could not read standard input")?;
        (input, "standard input".to_owned())
    } else {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("could not read {file}"))?;
        (text, file.to_owned())
    })
}
