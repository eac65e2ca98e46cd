//! `herald webhooks`, with a test event's outcome and WebSub subscriptions.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::Connection;
use super::api::*;
use super::args::*;
use super::output::*;

pub(super) const SUBSCRIPTION_COLUMNS: &[&str] = &["channel", "topic", "mode", "state", "reason"];

/// Shows a page of WebSub subscriptions; fails, after showing them, if any channel's endpoint
/// refused or did not answer, since no events go out on that channel until it verifies.
pub(super) fn show_subscriptions(
    conn: &Connection,
    page: &Value,
    webhook: (&str, &str),
) -> anyhow::Result<()> {
    show(conn, page, SUBSCRIPTION_COLUMNS);
    fail_on_unverified(page, webhook)
}

/// The longest a test or a retry waits for its attempt: the longest webhook timeout and a
/// margin.
pub(super) const ATTEMPT_WAIT: Duration = Duration::from_secs(65);

/// Waits for the delivery's attempt after the `attempts_before` it had when it was sent (a test
/// or a retry) and says how it went (with `--json`, the delivery as the server has it, attempts
/// and all); fails unless it succeeded.
pub(super) fn show_attempt_outcome(
    api: &Api,
    conn: &Connection,
    org: &str,
    delivery: &str,
    attempts_before: usize,
) -> anyhow::Result<()> {
    let path = api_path(&["v1", "orgs", org, "deliveries", delivery])?;
    let deadline = Instant::now() + ATTEMPT_WAIT;
    note!("Sent {delivery}; waiting for the endpoint's answer…");
    let detail = loop {
        let detail = api
            .get(&path)
            .with_context(|| format!("{delivery} was sent, but its outcome could not be read"))?;
        if detail["attempts"]
            .as_array()
            .is_some_and(|a| a.len() > attempts_before)
        {
            break detail;
        }
        // Finished without an attempt: the webhook was deleted (cancelled) meanwhile, say.
        if !matches!(detail["state"].as_str(), Some("pending") | None) {
            bail!(
                "{delivery} ended {} without being sent: {}",
                detail["state"].as_str().unwrap_or_default(),
                detail["last_error"]
                    .as_str()
                    .unwrap_or("no reason was given")
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "no answer recorded for {delivery} after {} s (behind an open circuit it waits \
                 for the next probe: its next_attempt_at says when); see `herald deliveries get \
                 --org {org} {delivery}`",
                ATTEMPT_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The latest attempt: a retry may already have followed a first one that failed.
    let attempts = detail["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let attempt = attempts.last().unwrap_or(&Value::Null);
    let took = attempt["duration_ms"].as_u64().unwrap_or_default();
    if conn.json {
        print_json(&detail);
    }
    if detail["state"] == "succeeded" {
        if conn.json {
            return Ok(());
        }
        out!(
            "Delivered {delivery}: the endpoint answered {} in {took} ms.",
            attempt["status"]
        );
        return Ok(());
    }
    // The attempt's own words say more than its status (a redirect: register the final URL).
    let answer = match (
        attempt["error_message"].as_str(),
        attempt["status"].as_u64(),
    ) {
        (Some(message), _) => message.to_owned(),
        (None, Some(status)) => format!("the endpoint answered {status}"),
        (None, None) => attempt["error"].as_str().unwrap_or("it failed").to_owned(),
    };
    let next = match detail["next_attempt_at"].as_str() {
        Some(at) => format!("Herald tries again at {at}"),
        None => "no attempt is left".to_owned(),
    };
    bail!("not delivered ({delivery}), after {took} ms: {answer}; {next}")
}

/// Fails if any channel of a page of WebSub subscriptions failed verification.
pub(super) fn fail_on_unverified(page: &Value, (org, id): (&str, &str)) -> anyhow::Result<()> {
    let failed = page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "failed")
        .count();
    if failed > 0 {
        let them = if failed == 1 {
            "it verifies"
        } else {
            "they verify"
        };
        bail!(
            "{} failed verification: no events go out on {} until {them}; once the endpoint \
             answers its challenge, run `herald webhooks verify --org {org} {id}`",
            crate::counted(failed as u64, "channel", "channels"),
            if failed == 1 { "it" } else { "them" }
        );
    }
    // Asked again and refused, with the lease given before still holding.
    let refused = page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "verified" && !s["reason"].is_null())
        .count();
    if refused > 0 {
        bail!(
            "the endpoint refused verification for {}; the lease it gave before still \
             holds, so their events go on until it runs out (`expires_at`); once the endpoint \
             answers its challenge, run `herald webhooks verify --org {org} {id}`",
            crate::counted(refused as u64, "channel", "channels")
        );
    }
    Ok(())
}

/// Reports the WebSub verification a change sent (the answer's `subscriptions`, when it sent
/// any). A channel that did not subscribe fails the command, since it gets no events until it
/// verifies; an unsubscribe the endpoint did not confirm is only noted: the webhook stopped
/// sending all the same.
fn report_verification(
    conn: &Connection,
    answer: &Value,
    (org, id): (&str, &str),
) -> anyhow::Result<()> {
    let Some(asked) = answer["subscriptions"].as_array() else {
        return Ok(());
    };
    let page = json!({ "data": asked });
    if asked.iter().any(|s| s["mode"] == "subscribe") {
        if conn.json {
            return fail_on_unverified(&page, (org, id));
        }
        out!();
        return show_subscriptions(conn, &page, (org, id));
    }
    let unconfirmed = asked.iter().filter(|s| s["state"] == "failed").count();
    if unconfirmed > 0 && !conn.json {
        out!();
        show(conn, &page, SUBSCRIPTION_COLUMNS);
        if answer["active"] == false {
            note!(
                "The endpoint did not confirm the unsubscribe for {}; the webhook is disabled \
                 all the same. To tell it again: `herald webhooks verify --org {org} {id}`",
                crate::counted(unconfirmed as u64, "channel", "channels")
            );
        } else {
            note!(
                "The endpoint did not confirm the unsubscribe for {}; the change stands all the \
                 same.",
                crate::counted(unconfirmed as u64, "channel", "channels")
            );
        }
    }
    Ok(())
}

/// One line on an enabled WebSub webhook's channels: how many are verified, and the first one
/// that is not, with why and how to ask again (it gets no events on that channel until then).
fn channels_verified(subs: &Value, (org, id): (&str, &str)) -> String {
    let subs = subs["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let verified = subs.iter().filter(|s| s["state"] == "verified").count();
    let mut line = format!(
        "WebSub: {verified} of {} verified",
        crate::counted(subs.len() as u64, "channel", "channels")
    );
    if let Some(not) = subs.iter().find(|s| s["state"] != "verified") {
        line.push_str(&format!(
            "; '{}' is {}{}: it gets no events until verified (`herald webhooks subscriptions \
             --org {org} {id}` for each; `herald webhooks verify --org {org} {id}` asks again)",
            not["channel"].as_str().unwrap_or_default(),
            not["state"].as_str().unwrap_or_default(),
            not["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    line
}

pub fn webhooks(conn: Connection, mut cmd: WebhooksCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let org = cmd.org_mut();
    *org = api.org_id(org)?;
    let org = org.clone();
    api.resolve_webhooks(&org, cmd.webhooks_mut())?;
    // Which are failing now, at a glance (`get` also says whether this node's circuit is open).
    let cols = &["id", "name", "profile", "active", "failing_since", "url"];
    match cmd {
        WebhooksCommand::List { org } => show(
            &conn,
            &api.get_all(&format!(
                "{}?limit=200",
                api_path(&["v1", "orgs", &org, "webhooks"])?
            ))?,
            cols,
        ),
        WebhooksCommand::Create {
            org,
            name,
            url,
            events,
            channels,
            profile,
            secret,
            disabled,
            options,
        } => {
            let mut body = json!({ "name": name, "url": url });
            for (key, value) in [("events", json!(events)), ("channels", json!(channels))] {
                if value.as_array().is_some_and(|a| !a.is_empty()) {
                    body[key] = value;
                }
            }
            for (key, value) in [("profile", profile), ("secret", secret)] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            if disabled {
                body["active"] = json!(false);
            }
            options.add_to(&mut body)?;
            let created = api.post(&api_path(&["v1", "orgs", &org, "webhooks"])?, body)?;
            show(&conn, &created, cols);
            if !conn.json {
                out!(
                    "\nSecret (shown once): {}",
                    created["secret"].as_str().unwrap_or_default()
                );
                if created["active"] == false && !disabled {
                    // WebSub webhooks (asgardeo's) start inactive, waiting to be verified.
                    out!(
                        "\nIt is inactive until its endpoint confirms each channel: run `herald \
                         webhooks enable --org {org} {}` once the endpoint answers WebSub \
                         challenges.",
                        created["id"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        WebhooksCommand::Update {
            org,
            id,
            name,
            url,
            events,
            channels,
            profile,
            reset,
            options,
        } => {
            let mut body = json!({});
            for (key, value) in [("name", name), ("url", url), ("profile", profile)] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            for (key, value) in [("events", events), ("channels", channels)] {
                if !value.is_empty() {
                    body[key] = json!(value);
                }
            }
            options.add_to(&mut body)?;
            let mut reset = reset;
            reset.sort_by_key(|r| r.field());
            reset.dedup();
            for setting in reset {
                let field = setting.field();
                if body.get(field).is_some() {
                    return Err(CommandLineRefused::said(format!(
                        "--reset {} and a new value for it were both given; give one",
                        field.replace('_', "-")
                    )));
                }
                body[field] = setting.cleared();
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                return Err(CommandLineRefused::said(
                    "nothing to change; give at least one of the fields in `herald webhooks \
                     update --help`",
                ));
            }
            let path = api_path(&["v1", "orgs", &org, "webhooks", &id])?;
            let updated = api.call(reqwest::Method::PATCH, &path, Some(body))?;
            show_record(&conn, &updated, WEBHOOK_FIELDS);
            report_verification(&conn, &updated, (&org, &id))?;
        }
        WebhooksCommand::Get { org, id } => {
            let path = api_path(&["v1", "orgs", &org, "webhooks", &id])?;
            let webhook = api.get(&path)?;
            show_record(&conn, &webhook, WEBHOOK_FIELDS);
            if webhook["verification"] == "websub" && webhook["active"] == true && !conn.json {
                let subs = api.get(&format!("{path}/subscriptions"))?;
                note!("{}", channels_verified(&subs, (&org, &id)));
            }
        }
        WebhooksCommand::Enable { org, id } => {
            let answer = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "activate"])?,
                json!({}),
            )?;
            show(&conn, &answer, cols);
            report_verification(&conn, &answer, (&org, &id))?;
        }
        WebhooksCommand::Subscriptions { org, id } => show(
            &conn,
            &api.get(&api_path(&[
                "v1",
                "orgs",
                &org,
                "webhooks",
                &id,
                "subscriptions",
            ])?)?,
            SUBSCRIPTION_COLUMNS,
        ),
        WebhooksCommand::Verify { org, id, channel } => {
            let answer = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "verify"])?,
                json!({ "channel": channel }),
            )?;
            show_subscriptions(&conn, &answer, (&org, &id))?;
        }
        WebhooksCommand::Disable { org, id } => {
            let path = api_path(&["v1", "orgs", &org, "webhooks", &id])?;
            let disabled = api.post(&format!("{path}/deactivate"), json!({}))?;
            show(&conn, &disabled, cols);
            report_verification(&conn, &disabled, (&org, &id))?;
        }
        WebhooksCommand::Rotate { org, id, secret } => {
            let rotated = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "rotate-secret"])?,
                json!({ "secret": secret }),
            )?;
            show(&conn, &rotated, cols);
            if !conn.json {
                let overlap = if rotated["previous_secret_expires_at"].is_null() {
                    "this profile's signature carries one secret: its receiver needs the new one now"
                } else {
                    "the old one signs too for 24 hours"
                };
                out!(
                    "\nNew secret (shown once; {overlap}): {}",
                    rotated["secret"].as_str().unwrap_or_default()
                );
            }
        }
        WebhooksCommand::Test { org, id, no_wait } => {
            let sent = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "test"])?,
                json!({}),
            )?;
            if no_wait {
                show(&conn, &sent, &["event_id", "delivery_id"]);
            } else {
                let delivery = sent["delivery_id"].as_str().unwrap_or_default();
                show_attempt_outcome(&api, &conn, &org, delivery, 0)?;
            }
        }
        WebhooksCommand::Delete { org, ids, yes } => {
            if !yes {
                let given = ids.join(" ");
                let disable = match ids.as_slice() {
                    [id] => format!("`herald webhooks disable --org {org} {id}`"),
                    _ => format!("`herald webhooks disable --org {org} <id>` for each"),
                };
                // Said of whatever is pending, which is not looked up: the same for a webhook
                // with a backlog as for one with nothing left to send.
                return Err(CommandLineRefused::said(format!(
                    "deleting {given} cancels whatever deliveries are still pending, for good \
                     (the history stays readable); run `herald webhooks delete --org {org} \
                     {given} --yes` to go ahead, or {disable} to stop deliveries and keep what \
                     is pending waiting"
                )));
            }
            if let [id] = ids.as_slice() {
                api.call(
                    reqwest::Method::DELETE,
                    &api_path(&["v1", "orgs", &org, "webhooks", id])?,
                    None,
                )?;
                deleted(&conn, id, &format!("Deleted {id}."));
            } else {
                let answer = api.post(
                    &api_path(&["v1", "orgs", &org, "webhooks", "bulk-delete"])?,
                    json!({ "ids": ids }),
                )?;
                let names = |key: &str| -> Vec<String> {
                    answer[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                };
                let (gone, missing) = (names("deleted"), names("not_found"));
                if conn.json {
                    print_json(&answer);
                } else {
                    if !gone.is_empty() {
                        out!(
                            "Deleted {}: {}.",
                            crate::counted(gone.len() as u64, "webhook", "webhooks"),
                            gone.join(", ")
                        );
                    }
                }
                if !missing.is_empty() {
                    bail!("no such webhook: {}", missing.join(", "));
                }
            }
        }
    }
    Ok(())
}
