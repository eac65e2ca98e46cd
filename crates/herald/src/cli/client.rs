//! The client commands (`herald orgs`, `webhooks`, `events`, `send`, `deliveries`): they speak to
//! a running server over its HTTP API, print tables for people and JSON with `--json`.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the server is and how to authenticate: grouped under their own heading in every
/// command's help, after the command's own options.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server and output")]
pub struct Connection {
    /// The Herald server's base URL.
    #[arg(
        long,
        env = "HERALD_SERVER",
        default_value = "http://127.0.0.1:7600",
        global = true,
        value_parser = parse_server
    )]
    pub server: String,
    /// The bearer token (admin token or an organization API key). Defaults to
    /// HERALD_ADMIN_TOKEN, then to the admin token kept in ./herald-data/admin-token.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--server`: an http(s) URL with a host, so that a mistake is named before any request.
fn parse_server(raw: &str) -> Result<String, String> {
    match url::Url::parse(raw) {
        Ok(url) if crate::config::is_http_with_host(&url) => Ok(raw.to_owned()),
        _ => Err(format!(
            "'{raw}' is not a server URL; give its scheme and host, e.g. http://127.0.0.1:7600"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// List organizations.
    List,
    /// Create an organization.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// A short domain-like name (lower-case letters, digits, `-`, `.`), used in topics and
        /// token issuers; derived from the name when absent.
        #[arg(long)]
        handle: Option<String>,
        /// A built-in event catalog to enable (repeatable); optare by default.
        #[arg(long = "catalog")]
        catalogs: Vec<String>,
    },
    /// Show one organization.
    Get {
        /// The organization: its id (`org_…`) or its handle.
        id: String,
    },
    /// Change an organization's name, handle or catalogs.
    Update {
        /// The organization: its id (`org_…`) or its handle.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new handle (WebSub topics and Asgardeo issuers name it).
        #[arg(long)]
        handle: Option<String>,
        /// The built-in catalogs it uses, replacing the current ones (repeatable): optare, opal,
        /// parallelworks, permit, asgardeo.
        #[arg(long = "catalog")]
        catalogs: Vec<String>,
    },
    /// Delete an organization and everything it owns.
    Delete {
        /// The organization: its id (`org_…`) or its handle.
        id: String,
        /// Yes, delete its webhooks, event types, API keys, events and delivery history too.
        #[arg(long)]
        yes: bool,
    },
    /// Delete an organization's events received before a time whose deliveries are all
    /// finished, with their deliveries and attempts (what retention does after
    /// HERALD_RETENTION_DAYS).
    Purge {
        /// The organization: its id (`org_…`) or its handle.
        id: String,
        /// Events received before: an RFC 3339 time (2026-01-31T00:00:00Z), or how long ago
        /// (90m, 6h, 30d).
        #[arg(long, value_parser = parse_since)]
        before: String,
        /// Yes, delete that history for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List an organization's API keys (never the keys themselves).
    List {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
    },
    /// Create an API key for an organization; the key is printed once.
    Create {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// What the key is for (e.g. the producer that will use it).
        #[arg(long)]
        name: String,
        /// producer: posts events and reads event types, nothing else (give producers this);
        /// manager: everything of the organization (webhooks, keys, history).
        #[arg(long, value_parser = ["manager", "producer"], default_value = "manager")]
        role: String,
    },
    /// Revoke an API key at once.
    Delete {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The key's id (`key_…`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List an organization's webhooks.
    List {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
    },
    /// Create a webhook; its secret is printed once.
    Create {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// A name for people (it appears in some profiles' bodies).
        #[arg(long)]
        name: String,
        /// Where to deliver: an http(s) URL of a public address.
        #[arg(long)]
        url: String,
        /// An event type to subscribe to (repeatable; `*` for all).
        #[arg(long = "event")]
        events: Vec<String>,
        /// A channel to subscribe to (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// standard, opal, optare, parallelworks, permit, asgardeo or cloudevents.
        #[arg(long)]
        profile: Option<String>,
        /// The secret (generated when absent, except for permit).
        #[arg(long)]
        secret: Option<String>,
        /// Create it disabled: nothing is sent until `herald webhooks enable`.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        options: WebhookOptions,
    },
    /// Change a webhook: only the fields given change.
    Update {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new URL (WebSub webhooks verify it again).
        #[arg(long)]
        url: Option<String>,
        /// The event types to subscribe to, replacing the current ones (repeatable; `*` for
        /// all).
        #[arg(long = "event")]
        events: Vec<String>,
        /// The channels to subscribe to, replacing the current ones (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// Another wire format: standard, opal, optare, parallelworks, permit, asgardeo or
        /// cloudevents. An active webhook moved to asgardeo verifies its channels (WebSub)
        /// before it gets another event; moved off it, it then unsubscribes them.
        #[arg(long)]
        profile: Option<String>,
        /// Puts a setting back to its default (repeatable).
        #[arg(long, value_enum, value_name = "SETTING")]
        reset: Vec<Resettable>,
        #[command(flatten)]
        options: WebhookOptions,
    },
    /// Show one webhook.
    Get {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
    },
    /// Enable a webhook (and verify it, for WebSub webhooks).
    Enable {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
    },
    /// Disable a webhook; its deliveries wait.
    Disable {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
    },
    /// Replace the secret; the old one signs too for 24 hours.
    Rotate {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
        /// The new secret (generated when absent, except for permit, whose secret you choose).
        #[arg(long)]
        secret: Option<String>,
    },
    /// Send a test event to the webhook and wait for the endpoint's answer (fails if it is not
    /// a success).
    Test {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
        /// Only send it: print the event and delivery ids without waiting for the answer (as
        /// `--json` does, printing the server's answer).
        #[arg(long)]
        no_wait: bool,
    },
    /// Where each channel's WebSub verification stands (WebSub webhooks, such as asgardeo's).
    Subscriptions {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
    },
    /// Verify a WebSub webhook's endpoint again, for one channel or all, and show the outcome.
    Verify {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        id: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Delete webhooks; their pending deliveries are cancelled.
    Delete {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhooks' ids (`wh_…`), one or more (up to 1,000).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

/// A webhook setting `update --reset` puts back to its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resettable {
    /// No description.
    Description,
    /// No custom headers.
    Headers,
    /// The profile's timeout.
    TimeoutMs,
    /// The profile's retry schedule.
    RetrySchedule,
    /// The profile's signature scheme.
    Signature,
    /// No rate limit.
    RateLimitPerSecond,
    /// The profile's settings' defaults.
    Options,
}

impl Resettable {
    /// The API's name for the field.
    fn field(self) -> &'static str {
        match self {
            Self::Description => "description",
            Self::Headers => "headers",
            Self::TimeoutMs => "timeout_ms",
            Self::RetrySchedule => "retry_schedule",
            Self::Signature => "signature",
            Self::RateLimitPerSecond => "rate_limit_per_second",
            Self::Options => "options",
        }
    }
}

/// Webhook settings that `create` and `update` share.
#[derive(Debug, Args)]
pub struct WebhookOptions {
    /// A description for people.
    #[arg(long)]
    description: Option<String>,
    /// How long to wait for the endpoint's answer, in milliseconds (100–60000).
    #[arg(long)]
    timeout_ms: Option<u32>,
    /// The delays before each attempt, in seconds, comma-separated (e.g. `0,60,300,900,3600`).
    #[arg(long, value_delimiter = ',', value_parser = parse_seconds)]
    retry_schedule: Option<Vec<u64>>,
    /// A header sent with every request, as `Name: value` (repeatable; replaces the current
    /// ones on update). A value given here stays in the shell's history: for a credential, read
    /// it from a variable (`--header "Authorization: $TOKEN"`).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// WebSub verification of intent per channel before events go: websub or none (the
    /// profile's default when absent: websub for asgardeo).
    #[arg(long, value_parser = ["websub", "none"])]
    verification: Option<String>,
    /// Another signature scheme than the profile's: standard, optare, hub or opal.
    #[arg(long, value_parser = ["standard", "optare", "hub", "opal"])]
    signature: Option<String>,
    /// The most requests per second sent to the endpoint (1–10000).
    #[arg(long)]
    rate_limit_per_second: Option<u32>,
    /// A profile setting as KEY=VALUE (repeatable; replaces the current ones on update):
    /// content_mode=structured|binary (cloudevents), batch_window_ms=500 (opal).
    #[arg(long = "option", value_parser = parse_option)]
    options: Vec<(String, Value)>,
}

impl WebhookOptions {
    /// Adds the options that were given to a create or update body.
    fn add_to(self, body: &mut Value) -> anyhow::Result<()> {
        if let Some(description) = self.description {
            body["description"] = json!(description);
        }
        if let Some(timeout) = self.timeout_ms {
            body["timeout_ms"] = json!(timeout);
        }
        if let Some(schedule) = self.retry_schedule {
            body["retry_schedule"] = json!(schedule);
        }
        if !self.headers.is_empty() {
            let mut headers = serde_json::Map::new();
            for (name, value) in self.headers {
                // Names are not case-sensitive; a second value would silently replace the first.
                if headers.keys().any(|n| n.eq_ignore_ascii_case(&name)) {
                    bail!("--header {name} is given twice; give each header once");
                }
                headers.insert(name, json!(value));
            }
            body["headers"] = Value::Object(headers);
        }
        for (field, value) in [
            ("verification", self.verification),
            ("signature", self.signature),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        if let Some(rate) = self.rate_limit_per_second {
            body["rate_limit_per_second"] = json!(rate);
        }
        if !self.options.is_empty() {
            body["options"] = Value::Object(self.options.into_iter().collect());
        }
        Ok(())
    }
}

/// `--option KEY=VALUE`: a number when it reads as one (`batch_window_ms=500`), else text.
fn parse_option(raw: &str) -> Result<(String, Value), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            let value = value.trim();
            let value = value
                .parse::<u64>()
                .map_or_else(|_| json!(value), |n| json!(n));
            Ok((key.trim().to_owned(), value))
        }
        _ => Err(format!(
            "'{raw}' is not KEY=VALUE, e.g. batch_window_ms=500 or content_mode=binary"
        )),
    }
}

/// One delay of `--retry-schedule`, spaces allowed around it (`0, 60, 300` as the dashboard
/// shows a schedule).
fn parse_seconds(raw: &str) -> Result<u64, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("'{}' is not a whole number of seconds", raw.trim()))
}

/// `--header 'Name: value'`.
fn parse_header(raw: &str) -> Result<(String, String), String> {
    match raw.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "'{raw}' is not a header; write it as 'Name: value'"
        )),
    }
}

impl WebhooksCommand {
    fn org_mut(&mut self) -> &mut String {
        match self {
            Self::List { org }
            | Self::Create { org, .. }
            | Self::Update { org, .. }
            | Self::Get { org, .. }
            | Self::Enable { org, .. }
            | Self::Disable { org, .. }
            | Self::Rotate { org, .. }
            | Self::Test { org, .. }
            | Self::Subscriptions { org, .. }
            | Self::Verify { org, .. }
            | Self::Delete { org, .. } => org,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// A webhook's deliveries, newest first.
    List {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        #[arg(long)]
        webhook: String,
        /// pending, succeeded, failed, cancelled or skipped.
        #[arg(long)]
        state: Option<String>,
        /// Only deliveries of this event type.
        #[arg(long)]
        event_type: Option<String>,
        /// How many, newest first (1–200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where the page starts: the cursor the previous page ended with.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One delivery with its attempts.
    Get {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The delivery's id (`dlv_…`).
        id: String,
    },
    /// Send a finished delivery again.
    Retry {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The delivery's id (`dlv_…`).
        id: String,
    },
    /// Send again every failed delivery of a webhook created since a time.
    Recover {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook's id (`wh_…`).
        #[arg(long)]
        webhook: String,
        /// Failed deliveries created since: an RFC 3339 time (2026-01-31T00:00:00Z), or how long
        /// ago (90m, 6h, 2d).
        #[arg(long, value_parser = parse_since)]
        since: String,
    },
}

/// `--since`: an RFC 3339 time as it is, or a time that long before now (`30s`, `90m`, `6h`,
/// `2d`) written as one.
fn parse_since(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3_600),
        'd' => Some(86_400),
        _ => None,
    };
    let ago = raw
        .char_indices()
        .last()
        .and_then(|(at, c)| Some((raw[..at].parse::<i64>().ok()?, unit(c)?)));
    // Out of range (`99999999999d`) reads as neither, rather than overflowing.
    let at = ago.filter(|(n, _)| *n >= 0).and_then(|(n, secs)| {
        let back = chrono::TimeDelta::try_seconds(n.checked_mul(secs)?)?;
        chrono::Utc::now().checked_sub_signed(back)
    });
    match at {
        Some(at) => Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        _ if chrono::DateTime::parse_from_rfc3339(raw).is_ok() => Ok(raw.to_owned()),
        _ => Err(format!(
            "'{raw}' is neither an RFC 3339 time (2026-01-31T00:00:00Z) nor how long ago (90m, 6h, 2d)"
        )),
    }
}

impl DeliveriesCommand {
    fn org_mut(&mut self) -> &mut String {
        match self {
            Self::List { org, .. }
            | Self::Get { org, .. }
            | Self::Retry { org, .. }
            | Self::Recover { org, .. } => org,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The event types an organization can post (its catalogs' and its own).
    Types {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
    },
    /// The built-in catalogs and their event types.
    Catalog {
        /// Only this catalog (optare, opal, parallelworks, permit, asgardeo).
        #[arg(long)]
        name: Option<String>,
    },
    /// Register an event type of the organization's own (beside its catalogs'), optionally
    /// with a JSON Schema that every posted event of the type must match.
    Register {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The type's name, e.g. `invoice.paid`: up to 128 letters, digits, `.`, `_`, `-`, `:`
        /// or `/`.
        #[arg(long)]
        name: String,
        /// The channel it belongs to (what webhooks may subscribe to as a whole): lower-case
        /// letters, digits, `_` or `-`.
        #[arg(long)]
        channel: Option<String>,
        /// What the event means, shown with the organization's types.
        #[arg(long)]
        description: Option<String>,
        /// A file holding the JSON Schema of the event's data (`-` for standard input).
        #[arg(long)]
        schema: Option<String>,
        /// An example of the event's data, as JSON; checked against the schema.
        #[arg(long)]
        example: Option<String>,
    },
    /// Delete an event type of the organization's own (events already stored keep it). Refused
    /// while a webhook subscribes to it by name, or to its channel if it is the last type there,
    /// or while a webhook with WebSub verification receives its channel.
    Unregister {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The type's name.
        #[arg(long)]
        name: String,
    },
    /// Post an event (or a batch); the same as `herald send`.
    Send(SendArgs),
}

/// `herald send` options.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The organization: its id (`org_…`) or its handle.
    #[arg(long)]
    pub org: String,
    /// The event type; with --data, sends one event built from them.
    #[arg(long = "type", conflicts_with = "file")]
    pub event_type: Option<String>,
    /// The event's data as JSON (with --type).
    #[arg(long, requires = "event_type", conflicts_with = "file")]
    pub data: Option<String>,
    /// The event's id, its idempotency key: sending it again is accepted once (with --type;
    /// generated when absent).
    #[arg(long, requires = "event_type", conflicts_with = "file")]
    pub id: Option<String>,
    /// When it happened, RFC 3339 (with --type; the time of receipt when absent).
    #[arg(long, requires = "event_type", conflicts_with = "file")]
    pub occurred_at: Option<String>,
    /// A correlation id kept with the event (with --type); asgardeo's tokens carry it as `rci`.
    #[arg(long, requires = "event_type", conflicts_with = "file")]
    pub correlation_id: Option<String>,
    /// A file with one event or an array of them (`-` for standard input). Used when --type is
    /// not given; standard input is read when neither is.
    #[arg(long)]
    pub file: Option<String>,
}

/// The organization a request's path names (`/v1/orgs/{org}/…`), if any.
fn org_in(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/orgs/")?
        .split(['/', '?'])
        .next()
        .filter(|org| !org.is_empty())
}

/// The server's advice names API routes; here it names the commands that do the same, for
/// `org` (the request's) where the advice leaves it open.
fn in_cli_terms(message: &str, request_org: Option<&str>) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" /v1/orgs/") {
        let (before, from) = rest.split_at(at);
        // The method before the path: `GET` or `POST`.
        let (head, method) = match before.rsplit_once(' ') {
            Some((head, method)) => (head, method),
            None => ("", before),
        };
        // `(DELETE /v1/…)`: the parenthesis stays, around the command.
        let (open, method) = match method.strip_prefix('(') {
            Some(method) => ("(", method),
            None => ("", method),
        };
        let path = &from[1..];
        let end = path
            .find(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == ')')
            .unwrap_or(path.len());
        let org = path["/v1/orgs/".len()..end].split('/').next().unwrap_or("");
        let org = match (org, request_org) {
            ("{org}", Some(known)) => known,
            ("{org}", None) => "…",
            (named, _) => named,
        };
        let one_type = path[..end]
            .rsplit_once("/event-types/")
            .map(|(_, name)| name);
        // `…/webhooks/{id}` and what follows it (`/deactivate`).
        let webhook = path[..end]
            .split_once("/webhooks/")
            .map(|(_, rest)| rest.split_once('/').unwrap_or((rest, "")));
        let mut command = match (method, path[..end].strip_suffix("/event-types"), one_type) {
            ("GET", Some(_), _) => Some(format!("`herald events types --org {org}`")),
            ("POST", Some(_), _) => Some(format!("`herald events register --org {org} --name …`")),
            ("DELETE", _, Some(name)) => Some(format!(
                "`herald events unregister --org {org} --name {name}`"
            )),
            _ => match (method, webhook) {
                ("POST", Some((id, "deactivate"))) => {
                    Some(format!("`herald webhooks disable --org {org} {id}`"))
                }
                ("PATCH", Some((id, ""))) => {
                    Some(format!("`herald webhooks update --org {org} {id}`"))
                }
                _ => None,
            },
        };
        // A change the advice spells as JSON, spelt as the command's flag.
        const WEBSUB: &str = " with \"verification\": \"websub\"";
        let mut end = end;
        if let Some(c) = command.as_mut()
            && path[end..].starts_with(WEBSUB)
        {
            c.insert_str(c.len() - 1, " --verification websub");
            end += WEBSUB.len();
        }
        match command {
            Some(command) if head.is_empty() => {
                out.push_str(open);
                out.push_str(&command);
            }
            Some(command) => {
                out.push_str(head);
                out.push(' ');
                out.push_str(open);
                out.push_str(&command);
            }
            None => out.push_str(&rest[..at + 1 + end]),
        }
        rest = &path[end..];
    }
    out.push_str(rest);
    out
}

/// What a path segment or query value keeps as it is; everything else is percent-encoded, so
/// that an id given on the command line (`org_1/api-keys/key_2`, `x?limit=1`) stays within its
/// segment ([`api_path`] refuses the dot segments `.` and `..`).
const VERBATIM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One path segment or query value, percent-encoded.
fn encode(raw: &str) -> String {
    percent_encoding::utf8_percent_encode(raw, VERBATIM).to_string()
}

/// `/seg/seg/…`, each segment percent-encoded. An empty id, `.` or `..` would name another
/// path (URLs resolve dot segments, encoded or not), so it is refused.
fn api_path(segments: &[&str]) -> anyhow::Result<String> {
    let mut path = String::new();
    for segment in segments {
        if matches!(*segment, "" | "." | "..") {
            bail!("'{segment}' is not an id; ids look like org_…, wh_… or dlv_…");
        }
        path.push('/');
        path.push_str(&encode(segment));
    }
    Ok(path)
}

struct Api {
    http: reqwest::blocking::Client,
    conn: Connection,
    token: String,
    /// Where the token came from, for the message when the server refuses it.
    token_source: &'static str,
}

impl Api {
    fn new(conn: Connection) -> anyhow::Result<Self> {
        herald_dispatch::client::install_tls_provider();
        let admin = std::env::var("HERALD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        let given = conn.token.as_ref().filter(|t| !t.trim().is_empty());
        let (token, token_source) = match (given, admin) {
            (Some(t), _) => (t.clone(), "--token or HERALD_TOKEN"),
            (None, Some(t)) => (t, "HERALD_ADMIN_TOKEN"),
            (None, None) => match std::fs::read_to_string("herald-data/admin-token") {
                Ok(t) => (t.trim().to_owned(), "./herald-data/admin-token"),
                Err(_) => bail!(
                    "no token: pass --token or set HERALD_TOKEN (the admin token, or an \
                     organization API key); without either, HERALD_ADMIN_TOKEN or else \
                     ./herald-data/admin-token is read, and there is neither here"
                ),
            },
        };
        Ok(Self {
            http: reqwest::blocking::Client::new(),
            conn,
            token,
            token_source,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        // `--server http://host:7600/v1` means the same server: every path starts with /v1.
        let base = self.conn.server.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let url = format!("{base}{path}");
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().with_context(|| {
            format!(
                "could not reach Herald at {}; is `herald serve` running? (--server)",
                self.conn.server
            )
        })?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        // Herald answers a JSON object, or nothing with 204 (a deletion).
        let value: Option<Value> = if text.is_empty() && status == reqwest::StatusCode::NO_CONTENT {
            Some(Value::Null)
        } else {
            serde_json::from_str(&text).ok()
        };
        let not_herald = || {
            format!(
                "{status} from {url}, and not Herald's JSON; is --server ({}) the address of \
                 `herald serve`?",
                self.conn.server
            )
        };
        if !status.is_success() {
            match value.as_ref().and_then(|v| v["error"]["message"].as_str()) {
                Some(message) if status == reqwest::StatusCode::UNAUTHORIZED => bail!(
                    "{status}: {message} (the token was read from {}; give the right one with \
                     --token or HERALD_TOKEN)",
                    self.token_source
                ),
                Some(message) => bail!("{status}: {}", in_cli_terms(message, org_in(path))),
                None => bail!(not_herald()),
            }
        }
        match value {
            Some(value) if value.is_object() || value.is_null() => Ok(value),
            _ => bail!(not_herald()),
        }
    }

    /// Every item of a paged list, page after page, as one page (`{"data": [...]}`).
    fn get_all(&self, path: &str) -> anyhow::Result<Value> {
        let mut items = Vec::new();
        let mut page = self.get(path)?;
        loop {
            let Some(data) = page.get_mut("data").and_then(Value::as_array_mut) else {
                bail!("the answer to {path} is not a list: {page}");
            };
            items.append(data);
            let Some(cursor) = page["next_cursor"].as_str() else {
                break;
            };
            page = self.get(&format!("{path}&cursor={}", encode(cursor)))?;
        }
        Ok(json!({ "data": items, "next_cursor": null }))
    }

    /// `--org` as an id: an id is taken as it is, anything else is looked up as a handle among
    /// the organizations the token sees.
    fn org_id(&self, org: &str) -> anyhow::Result<String> {
        if herald_core::OrgId::parse(org).is_ok() {
            return Ok(org.to_owned());
        }
        let orgs = self.get_all("/v1/orgs?limit=200")?;
        let found = orgs["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["handle"].as_str() == Some(org))
            .and_then(|o| o["id"].as_str());
        match found {
            Some(id) => Ok(id.to_owned()),
            None => bail!(
                "no organization has the handle '{org}'; give an organization's id (org_…) or \
                 handle (`herald orgs list` shows both)"
            ),
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }

    fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }
}

/// One field as a table shows it: lists of plain values joined with commas, `-` for nothing.
fn cell(row: &Value, col: &str) -> String {
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

/// The server's JSON as it is (`--json`).
fn print_json(value: &Value) {
    out!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints one object as `field  value` lines, or as JSON with --json.
fn show_record(conn: &Connection, value: &Value, fields: &[&str]) {
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
            _ => cell(value, field),
        };
        out!("{field:<width$}  {shown}");
    }
}

/// What `webhooks get` and `update` show of a webhook.
const WEBHOOK_FIELDS: &[&str] = &[
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

/// Prints `value` as JSON, or `rows` of `columns` as an aligned table.
fn show(conn: &Connection, value: &Value, columns: &[&str]) {
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
fn deleted(conn: &Connection, id: &str, sentence: &str) {
    if conn.json {
        print_json(&json!({ "id": id, "deleted": true }));
    } else {
        out!("{sentence}");
    }
}

pub fn orgs(conn: Connection, cmd: OrgsCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let cols = &["id", "handle", "name", "catalogs"];
    match cmd {
        OrgsCommand::List => show(&conn, &api.get_all("/v1/orgs?limit=200")?, cols),
        OrgsCommand::Create {
            name,
            handle,
            catalogs,
        } => {
            let mut body = json!({ "name": name, "handle": handle });
            if !catalogs.is_empty() {
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
                eprintln!(
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
        } => {
            let mut body = json!({});
            for (key, value) in [("name", name), ("handle", handle)] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            if !catalogs.is_empty() {
                body["catalogs"] = json!(catalogs);
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                bail!("nothing to change; give --name, --handle or --catalog");
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
            if !yes {
                bail!(
                    "purging deletes {given}'s finished history before {before} for good; run \
                     `herald orgs purge {given} --before {before} --yes` to go ahead"
                );
            }
            let id = api.org_id(&given)?;
            let answer = api.post(
                &api_path(&["v1", "orgs", &id, "purge"])?,
                json!({ "before": before }),
            )?;
            if conn.json {
                print_json(&answer);
            } else {
                let n = |k: &str| answer["purged"][k].as_u64().unwrap_or(0);
                out!(
                    "Purged {} events, {} deliveries and {} attempts received before {before}.",
                    n("events"),
                    n("deliveries"),
                    n("attempts")
                );
            }
        }
        OrgsCommand::Delete { id: given, yes } => {
            if !yes {
                bail!(
                    "deleting {given} deletes its webhooks, event types, API keys, events and \
                     delivery history for good; run `herald orgs delete {given} --yes` to go ahead"
                );
            }
            let id = api.org_id(&given)?;
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

const SUBSCRIPTION_COLUMNS: &[&str] = &["channel", "topic", "mode", "state", "reason"];

/// Shows a page of WebSub subscriptions; fails, after showing them, if any channel's endpoint
/// refused or did not answer, since no events go out on that channel until it verifies.
fn show_subscriptions(conn: &Connection, page: &Value) -> anyhow::Result<()> {
    show(conn, page, SUBSCRIPTION_COLUMNS);
    fail_on_unverified(page)
}

/// The longest a test waits for its first attempt: the longest webhook timeout and a margin.
const TEST_WAIT: Duration = Duration::from_secs(65);

/// Waits for the test delivery's first attempt and says how it went; fails unless it succeeded.
fn show_test_outcome(api: &Api, org: &str, delivery: &str) -> anyhow::Result<()> {
    let path = api_path(&["v1", "orgs", org, "deliveries", delivery])?;
    let deadline = Instant::now() + TEST_WAIT;
    eprintln!("Sent {delivery}; waiting for the endpoint's answer…");
    let detail = loop {
        let detail = api
            .get(&path)
            .with_context(|| format!("{delivery} was sent, but its outcome could not be read"))?;
        if detail["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
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
                "no answer recorded for {delivery} after {} s; see `herald deliveries get --org \
                 {org} {delivery}`",
                TEST_WAIT.as_secs()
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
    if detail["state"] == "succeeded" {
        out!(
            "Delivered {delivery}: the endpoint answered {} in {took} ms.",
            attempt["status"]
        );
        return Ok(());
    }
    let answer = match (
        attempt["status"].as_u64(),
        attempt["error_message"].as_str(),
    ) {
        (Some(status), _) => format!("the endpoint answered {status}"),
        (None, Some(message)) => message.to_owned(),
        (None, None) => attempt["error"].as_str().unwrap_or("it failed").to_owned(),
    };
    let next = match detail["next_attempt_at"].as_str() {
        Some(at) => format!("Herald tries again at {at}"),
        None => "no attempt is left".to_owned(),
    };
    bail!("not delivered ({delivery}): {answer} after {took} ms; {next}")
}

/// Fails if any channel of a page of WebSub subscriptions failed verification.
fn fail_on_unverified(page: &Value) -> anyhow::Result<()> {
    let failed = page["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "failed")
        .count();
    if failed > 0 {
        bail!(
            "{failed} channel(s) failed verification and get no events until they verify; once \
             the endpoint answers its challenge, run `herald webhooks verify`"
        );
    }
    Ok(())
}

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
        KeysCommand::Delete { id, .. } => {
            let path = api_path(&["v1", "orgs", &org, "api-keys", &id])?;
            api.call(reqwest::Method::DELETE, &path, None)?;
            deleted(&conn, &id, &format!("Deleted {id}."));
        }
    }
    Ok(())
}

pub fn webhooks(conn: Connection, mut cmd: WebhooksCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let org = cmd.org_mut();
    *org = api.org_id(org)?;
    let cols = &["id", "name", "profile", "active", "url"];
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
                    bail!(
                        "--reset {} and a new value for it were both given; give one",
                        field.replace('_', "-")
                    );
                }
                body[field] = Value::Null;
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                bail!(
                    "nothing to change; give at least one of the fields in `herald webhooks update --help`"
                );
            }
            let path = api_path(&["v1", "orgs", &org, "webhooks", &id])?;
            show_record(
                &conn,
                &api.call(reqwest::Method::PATCH, &path, Some(body))?,
                WEBHOOK_FIELDS,
            );
        }
        WebhooksCommand::Get { org, id } => show_record(
            &conn,
            &api.get(&api_path(&["v1", "orgs", &org, "webhooks", &id])?)?,
            WEBHOOK_FIELDS,
        ),
        WebhooksCommand::Enable { org, id } => {
            let answer = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "activate"])?,
                json!({}),
            )?;
            show(&conn, &answer, cols);
            if answer["subscriptions"].is_array() {
                let page = json!({ "data": answer["subscriptions"] });
                if conn.json {
                    fail_on_unverified(&page)?;
                } else {
                    out!();
                    show_subscriptions(&conn, &page)?;
                }
            }
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
            show_subscriptions(&conn, &answer)?;
        }
        WebhooksCommand::Disable { org, id } => show(
            &conn,
            &api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "deactivate"])?,
                json!({}),
            )?,
            cols,
        ),
        WebhooksCommand::Rotate { org, id, secret } => {
            let rotated = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "rotate-secret"])?,
                json!({ "secret": secret }),
            )?;
            show(&conn, &rotated, cols);
            if !conn.json {
                out!(
                    "\nNew secret (shown once; the old one signs too for 24 hours): {}",
                    rotated["secret"].as_str().unwrap_or_default()
                );
            }
        }
        WebhooksCommand::Test { org, id, no_wait } => {
            let sent = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &id, "test"])?,
                json!({}),
            )?;
            if no_wait || conn.json {
                show(&conn, &sent, &["event_id", "delivery_id"]);
            } else {
                let delivery = sent["delivery_id"].as_str().unwrap_or_default();
                show_test_outcome(&api, &org, delivery)?;
            }
        }
        WebhooksCommand::Delete { org, ids } => {
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
                    out!("Deleted {} webhook(s): {}.", gone.len(), gone.join(", "));
                }
                if !missing.is_empty() {
                    bail!("no such webhook: {}", missing.join(", "));
                }
            }
        }
    }
    Ok(())
}

pub fn deliveries(conn: Connection, mut cmd: DeliveriesCommand) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let org = cmd.org_mut();
    *org = api.org_id(org)?;
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
            let mut path = format!(
                "{}?limit={limit}",
                api_path(&["v1", "orgs", &org, "webhooks", &webhook, "deliveries"])?
            );
            for (key, value) in [
                ("state", state),
                ("event_type", event_type),
                ("cursor", cursor),
            ] {
                if let Some(value) = value {
                    path.push_str(&format!("&{key}={}", encode(&value)));
                }
            }
            let page = api.get(&path)?;
            show(&conn, &page, cols);
            if let (false, Some(next)) = (conn.json, page["next_cursor"].as_str()) {
                eprintln!("More: add --cursor {next}");
            }
        }
        DeliveriesCommand::Get { org, id } => {
            let d = api.get(&api_path(&["v1", "orgs", &org, "deliveries", &id])?)?;
            show(&conn, &d, cols);
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
                    let body: String = body
                        .chars()
                        .map(|c| match c {
                            '\n' | '\t' => c.to_string(),
                            c if c.is_control() => c.escape_unicode().to_string(),
                            c => c.to_string(),
                        })
                        .collect();
                    out!("\nThe last answer's body (first KiB):\n{body}");
                }
            }
        }
        DeliveriesCommand::Retry { org, id } => show(
            &conn,
            &api.post(
                &api_path(&["v1", "orgs", &org, "deliveries", &id, "retry"])?,
                json!({}),
            )?,
            cols,
        ),
        DeliveriesCommand::Recover {
            org,
            webhook,
            since,
        } => {
            let answer = api.post(
                &api_path(&["v1", "orgs", &org, "webhooks", &webhook, "recover"])?,
                json!({ "since": since }),
            )?;
            if conn.json {
                print_json(&answer);
            } else {
                let n = answer["recovered"].as_u64().unwrap_or(0);
                out!(
                    "Recovered {n} failed {} since {since}: {}.",
                    if n == 1 { "delivery" } else { "deliveries" },
                    if n == 0 {
                        "there were none to send again"
                    } else {
                        "they are sent again now, each with a new retry schedule"
                    }
                );
            }
        }
    }
    Ok(())
}

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
        EventsCommand::Send(args) => send(conn, args)?,
    }
    Ok(())
}

/// The JSON in `file` (`-`: standard input); `wanted` says what it should hold, for the
/// message when it is not JSON.
fn read_json_input(file: &str, wanted: &str) -> anyhow::Result<Value> {
    let (text, source) = if file == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("could not read standard input")?;
        (input, "standard input")
    } else {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("could not read {file}"))?;
        (text, file)
    };
    // As the server does, a byte-order mark (some editors write one) is passed over.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::from_str(text).with_context(|| format!("{source} is not JSON: {wanted}"))
}

pub fn send(conn: Connection, args: SendArgs) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    let body = match (&args.event_type, &args.file) {
        (Some(t), _) => {
            let data: Value = serde_json::from_str(args.data.as_deref().unwrap_or("{}"))
                .context("--data must be a JSON object, e.g. '{\"user\": {\"id\": \"u1\"}}'")?;
            let mut event = json!({ "type": t, "data": data });
            for (field, value) in [
                ("id", &args.id),
                ("occurred_at", &args.occurred_at),
                ("correlation_id", &args.correlation_id),
            ] {
                if let Some(value) = value {
                    event[field] = json!(value);
                }
            }
            event
        }
        (None, file) => read_json_input(
            file.as_deref().unwrap_or("-"),
            "give one event ({\"type\", \"data\"}) or an array of them, or use --type and --data",
        )?,
    };
    let org = api.org_id(&args.org)?;
    let answer = api.post(&api_path(&["v1", "orgs", &org, "events"])?, body)?;
    if conn.json {
        print_json(&answer);
    } else {
        show(
            &conn,
            &json!({ "data": answer["events"] }),
            &["id", "duplicate", "deliveries", "skipped"],
        );
    }
    // A reused id drops the event: say so even where only the exit status is read.
    let reused: Vec<String> = answer["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(format!(
                "{}: {}",
                e["id"].as_str()?,
                e["mismatch"].as_str()?
            ))
        })
        .collect();
    if !reused.is_empty() {
        bail!(
            "not stored, an id already used by another event:\n  {}",
            reused.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_how_long_ago() {
        assert_eq!(
            parse_since("2026-01-31T00:00:00Z").unwrap(),
            "2026-01-31T00:00:00Z"
        );
        let ago = parse_since("2h").unwrap();
        let ago = chrono::DateTime::parse_from_rfc3339(&ago).unwrap();
        let expected = chrono::Utc::now() - chrono::Duration::hours(2);
        assert!((ago.timestamp() - expected.timestamp()).abs() <= 2);
        for bad in [
            "yesterday",
            "2w",
            "-3h",
            "",
            "99999999999999999d",
            "9999999999999d",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_servers_advice_names_commands() {
        let advice = "the event type 'x' is unknown; list the known types with GET \
                      /v1/orgs/{org}/event-types or register it with POST /v1/orgs/{org}/event-types";
        assert_eq!(
            in_cli_terms(advice, None),
            "the event type 'x' is unknown; list the known types with `herald events types \
             --org …` or register it with `herald events register --org … --name …`"
        );
        let path = "/v1/orgs/org_9/events";
        assert_eq!(
            in_cli_terms(advice, org_in(path)),
            "the event type 'x' is unknown; list the known types with `herald events types \
             --org org_9` or register it with `herald events register --org org_9 --name …`"
        );
        assert_eq!(
            in_cli_terms(
                "events[0]: 'x' is not one; see GET /v1/orgs/org_1/event-types",
                None
            ),
            "events[0]: 'x' is not one; see `herald events types --org org_1`"
        );
        assert_eq!(
            in_cli_terms(
                "delete that one first (DELETE /v1/orgs/org_1/event-types/invoice.paid) or not",
                None
            ),
            "delete that one first (`herald events unregister --org org_1 --name invoice.paid`) or not"
        );
        assert_eq!(
            in_cli_terms(
                "turn it on first (PATCH /v1/orgs/org_1/webhooks/wh_2 with \"verification\": \"websub\")",
                None
            ),
            "turn it on first (`herald webhooks update --org org_1 wh_2 --verification websub`)"
        );
        assert_eq!(
            in_cli_terms(
                "deactivate it first (POST /v1/orgs/org_1/webhooks/wh_2/deactivate): a webhook",
                None
            ),
            "deactivate it first (`herald webhooks disable --org org_1 wh_2`): a webhook"
        );
        // Routes without a command of their own are left as they are.
        let other = "see GET /v1/orgs/org_1/webhooks, then POST /v1/orgs";
        assert_eq!(in_cli_terms(other, None), other);
        assert_eq!(in_cli_terms("no route here", None), "no route here");
        assert_eq!(org_in("/v1/orgs?limit=200"), None);
        assert_eq!(org_in("/v1/orgs/org_9?x=1"), Some("org_9"));
    }
}
