//! Tables for people and JSON with `--json`.

use serde_json::{Value, json};

use super::Connection;

/// One field as a table shows it: lists of plain values joined with commas, `-` for nothing.
pub(super) fn cell(row: &Value, col: &str) -> String {
    match &row[col] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Object(fields) if fields.is_empty() => "-".to_owned(),
        Value::Object(fields) if fields.values().all(Value::is_string) => fields
            .iter()
            .map(|(name, value)| format!("{name}: {}", value.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(items) if items.iter().all(|i| i.is_string() || i.is_number()) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Whether this command printed JSON (`--json`): an error it fails with afterwards is told on
/// standard error only, so that standard output stays one document.
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The server's JSON as it is (`--json`).
pub(super) fn print_json(value: &Value) {
    PRINTED_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints one object as `field  value` lines, or as JSON with --json.
pub(super) fn show_record(conn: &Connection, value: &Value, fields: &[&str]) {
    if conn.json {
        print_json(value);
        return;
    }
    let width = fields.iter().map(|f| f.len()).max().unwrap_or(0);
    for field in fields {
        let shown = match (*field, &value[*field]) {
            // Custom headers often carry credentials: their names only (--json shows all).
            ("headers", Value::Object(headers)) if !headers.is_empty() => headers
                .keys()
                .map(|name| format!("{name}: …"))
                .collect::<Vec<_>>()
                .join(", "),
            // Unset, a webhook takes its profile's (which `--reset` goes back to).
            ("signature" | "timeout_ms" | "retry_schedule", Value::Null) => {
                match profile_default(value, field) {
                    Some(default) => format!("{default} (the profile's default)"),
                    None => "the profile's default".to_owned(),
                }
            }
            ("rate_limit_per_second", Value::Null) => "none".to_owned(),
            _ => cell(value, field),
        };
        out!("{field:<width$}  {shown}");
    }
}

/// What a webhook's profile gives for a setting it leaves unset, as the server applies it.
fn profile_default(webhook: &Value, field: &str) -> Option<String> {
    let profile = herald_core::profile::ProfileName::parse(webhook["profile"].as_str()?).ok()?;
    let shown = match field {
        "timeout_ms" => profile.default_timeout_ms().to_string(),
        "retry_schedule" => {
            let delays = profile.default_retry_schedule();
            let shown: Vec<String> = delays.delays().iter().map(u32::to_string).collect();
            shown.join(",")
        }
        "signature" => serde_json::to_value(profile.default_signature())
            .ok()?
            .as_str()?
            .to_owned(),
        _ => return None,
    };
    Some(shown)
}

/// What `webhooks get` and `update` show of a webhook.
pub(super) const WEBHOOK_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "url",
    "profile",
    "signature",
    "verification",
    "options",
    "active",
    "disabled_reason",
    "failing_since",
    "circuit_open_until",
    "retry_after_until",
    "events",
    "channels",
    "timeout_ms",
    "retry_schedule",
    "rate_limit_per_second",
    "headers",
    "previous_secret_expires_at",
    "created_at",
    "updated_at",
];

/// A page of a list, then, unless printing JSON, how to ask for the next one (`also`: what
/// to give with the cursor besides the same filters, e.g. a relative time made absolute).
pub(super) fn show_page(conn: &Connection, page: &Value, columns: &[&str], also: &str) {
    show(conn, page, columns);
    if let (false, Some(next)) = (conn.json, page["next_cursor"].as_str()) {
        note!("More: add --cursor {next}{also}");
    }
}

/// Prints `value` as JSON, or `rows` of `columns` as an aligned table.
pub(super) fn show(conn: &Connection, value: &Value, columns: &[&str]) {
    if conn.json {
        print_json(value);
        return;
    }
    let rows: Vec<&Value> = match value.get("data").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    out!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for row in &rows {
        out!("{}", line(columns.iter().map(|c| cell(row, c)).collect()));
    }
    if rows.is_empty() {
        out!("(none)");
    }
}

/// Says what was deleted: a sentence, or `{"id", "deleted": true}` with `--json` (the API's
/// answer, `204`, has no body to print).
pub(super) fn deleted(conn: &Connection, id: &str, sentence: &str) {
    if conn.json {
        print_json(&json!({ "id": id, "deleted": true }));
    } else {
        out!("{sentence}");
    }
}

/// With `--json`, a command that fails before the server answered anything (a name no
/// webhook has, an organization handle not found, no server) prints an error object of the
/// server's shape, so that a script reading standard output always gets one.
pub fn print_error_unless_printed(error: &anyhow::Error) {
    if !PRINTED_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        print_json(&serde_json::json!({
            "error": { "code": "cli", "message": format!("{error:#}") }
        }));
    }
}
