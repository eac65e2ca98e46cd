//! `herald deliveries`.

use serde_json::json;

use super::Connection;
use super::api::*;
use super::args::*;
use super::output::*;
use crate::service::deliveries::RetriedWaiting;

pub fn deliveries(conn: Connection, mut cmd: DeliveriesCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let org = cmd.org_mut();
    *org = api.org_id(org)?;
    let org = org.clone();
    api.resolve_webhooks(&org, cmd.webhook_mut().into_iter().collect())?;
    let cols = &[
        "id",
        "event_type",
        "state",
        "attempt_count",
        "last_status",
        "next_attempt_at",
        "last_error",
    ];
    match cmd {
        DeliveriesCommand::List {
            org,
            webhook,
            state,
            event_type,
            limit,
            cursor,
        } => {
            let path = api_path(&["v1", "orgs", &org, "webhooks", &webhook, "deliveries"])?;
            let query = [
                ("state", state),
                ("event_type", event_type),
                ("cursor", cursor),
            ];
            show_page(&conn, &api.get(&page_path(&path, limit, query))?, cols, "");
        }
        DeliveriesCommand::Get { org, id } => {
            let d = api.get(&api_path(&["v1", "orgs", &org, "deliveries", &id])?)?;
            // One delivery, with where it belongs: its event and its webhook.
            let fields: Vec<&str> = ["id", "event_id", "webhook_id"]
                .into_iter()
                .chain(cols[1..].iter().copied())
                .collect();
            show_record(&conn, &d, &fields);
            if !conn.json {
                if let Some(why) = d["last_error"]
                    .as_str()
                    .and_then(herald_core::delivery::explain_last_error)
                {
                    out!("\n{why}");
                }
                out!();
                show(
                    &conn,
                    &json!({ "data": d["attempts"] }),
                    &[
                        "number",
                        "started_at",
                        "duration_ms",
                        "status",
                        "error",
                        "error_message",
                    ],
                );
                // What the endpoint said last, often the reason it refused.
                if let Some(body) = d["attempts"]
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(|a| a["response_body"].as_str())
                    .filter(|b| !b.is_empty())
                {
                    // The endpoint's text, not the terminal's: control characters are shown, not
                    // played (an escape sequence could rewrite what is on screen).
                    let body = herald_core::shown_safely(body);
                    out!("\nThe last answer's body (first KiB):\n{body}");
                }
            }
        }
        DeliveriesCommand::Retry { org, id, no_wait } => {
            let sent = api.post(
                &api_path(&["v1", "orgs", &org, "deliveries", &id, "retry"])?,
                json!({}),
            )?;
            if no_wait {
                show(&conn, &sent, cols);
            } else {
                // The answer shows the delivery as it was sent, before this attempt.
                let before = sent["attempts"].as_array().map_or(0, Vec::len);
                super::webhooks::show_attempt_outcome(&api, &conn, &org, &id, before)?;
            }
        }
        DeliveriesCommand::RetryWaiting { org, webhook } => {
            let answer = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &webhook, "retry"])?,
                json!({}),
            )?;
            if conn.json {
                print_json(&answer);
            } else {
                let done: RetriedWaiting = serde_json::from_value(answer).map_err(|e| {
                    anyhow::anyhow!(
                        "the server's answer could not be read ({e}); is the server a Herald \
                         as new as this command?"
                    )
                })?;
                match done.summary() {
                    None => out!(
                        "No delivery of {webhook} is waiting for a retry: any pending ones are \
                         queued or under way. Failed ones are sent again by `herald deliveries \
                         recover --org {org} --webhook {webhook} --since 1d`."
                    ),
                    Some(summary) => out!(
                        "{summary} See how they go with `herald deliveries list --org {org} \
                         --webhook {webhook}`."
                    ),
                }
            }
        }
        DeliveriesCommand::Recover {
            org,
            webhook,
            since,
            include_skipped,
        } => {
            let body = if include_skipped {
                json!({ "since": since, "include_skipped": true })
            } else {
                json!({ "since": since })
            };
            let answer = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &webhook, "recover"])?,
                body,
            )?;
            if conn.json {
                print_json(&answer);
            } else {
                let n = answer["recovered"].as_u64().unwrap_or(0);
                let circuit_open_until = answer["circuit_open_until"].as_str();
                let what = match (n, circuit_open_until) {
                    (0, _) => "there were none to send again".to_owned(),
                    (_, None) => {
                        "they are sent again now, each with a new retry schedule".to_owned()
                    }
                    // Its latest requests failed: what was recovered waits for a probe.
                    (_, Some(until)) => format!(
                        "each has a new retry schedule, but the endpoint's latest requests \
                         failed, so they wait until {until} for a probe. Fixed it? `herald \
                         deliveries retry-waiting --org {org} --webhook {webhook}` sends one now \
                         as the probe, and the rest follow if it succeeds"
                    ),
                };
                out!(
                    "Recovered {n} failed{} {} since {since}: {what}.",
                    if include_skipped { " or skipped" } else { "" },
                    if n == 1 { "delivery" } else { "deliveries" },
                );
            }
        }
    }
    Ok(())
}
