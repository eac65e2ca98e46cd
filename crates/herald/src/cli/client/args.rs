//! The client commands' arguments, as clap reads them, and the parsers of their values.

use super::api::CommandLineRefused;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// The webhook profiles, as `--profile` takes them (checked, and listed by `--help`).
const PROFILES: [&str; 7] = [
    "standard",
    "opal",
    "optare",
    "parallelworks",
    "permit",
    "asgardeo",
    "cloudevents",
];

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
        /// No built-in catalog: the organization posts only event types it registers.
        #[arg(long, conflicts_with = "catalogs")]
        no_catalogs: bool,
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
        /// A new handle (WebSub topics and Asgardeo issuers name it); with the admin token only.
        #[arg(long)]
        handle: Option<String>,
        /// The built-in catalogs it uses, replacing the current ones (repeatable): optare, opal,
        /// parallelworks, permit, asgardeo.
        #[arg(long = "catalog")]
        catalogs: Vec<String>,
        /// No built-in catalog any more: only the event types it registers.
        #[arg(long, conflicts_with = "catalogs")]
        no_catalogs: bool,
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
        /// producer: posts events and reads its organization, event types and the catalogs,
        /// nothing else (give producers this);
        /// manager: everything of the organization (webhooks, keys, history).
        #[arg(long, value_parser = ["manager", "producer"], default_value = "manager")]
        role: String,
    },
    /// Revoke an API key at once.
    Delete {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The key: its id (`key_…`) or its name, if no other key of the organization has it.
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
        /// An event type to subscribe to (repeatable; `*` for all). With neither --event nor
        /// --channel the webhook gets every event.
        #[arg(long = "event")]
        events: Vec<String>,
        /// A channel to subscribe to (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        /// The wire format (standard when absent).
        #[arg(long, value_parser = PROFILES)]
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
        /// The webhook: its id (`wh_…`) or its name.
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
        /// Another wire format. An active webhook moved to asgardeo verifies its channels
        /// (WebSub) before it gets another event; moved off it, it then unsubscribes them.
        #[arg(long, value_parser = PROFILES)]
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
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
    },
    /// Enable a webhook (and verify it, for WebSub webhooks).
    Enable {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
    },
    /// Disable a webhook: what it has pending waits until it is enabled; events that arrive
    /// meanwhile are not delivered to it.
    Disable {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
    },
    /// Replace the secret. With Standard Webhooks signatures the old one signs too for 24
    /// hours; the other schemes carry one signature, made with the new secret at once (let the
    /// receiver accept a secret you choose, then rotate to it with --secret).
    Rotate {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
        /// The new secret (generated when absent, except for permit, whose secret you choose).
        #[arg(long)]
        secret: Option<String>,
    },
    /// Send a test event to the webhook and wait for the endpoint's answer (fails if it is not
    /// a success; with --json, prints the delivery and its attempts).
    Test {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
        /// Only send it: print the event and delivery ids without waiting for the answer.
        #[arg(long)]
        no_wait: bool,
    },
    /// Where each channel's WebSub verification stands (WebSub webhooks, such as asgardeo's).
    Subscriptions {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
    },
    /// Verify a WebSub webhook's endpoint again, for one channel or all, and show the outcome.
    Verify {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        id: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Delete webhooks; their pending deliveries are cancelled (their history stays readable).
    Delete {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhooks: their ids (`wh_…`) or names, one or more (up to 1,000).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// Yes, delete them and cancel what they still had to deliver.
        #[arg(long)]
        yes: bool,
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
    /// No event types by name: only what the channels bring.
    Events,
    /// No channels: only the event types named.
    Channels,
}

impl Resettable {
    /// What the API takes to put the field back: `null`, or an empty list for the
    /// subscription's two lists (which may not both be empty).
    pub(super) fn cleared(self) -> serde_json::Value {
        match self {
            Self::Events | Self::Channels => serde_json::json!([]),
            _ => serde_json::Value::Null,
        }
    }

    /// The API's name for the field.
    pub(super) fn field(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Channels => "channels",
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
    #[arg(long, value_parser = clap::value_parser!(u32).range(100..=60_000))]
    timeout_ms: Option<u32>,
    /// The delays before each attempt, in seconds, comma-separated (e.g. `0,60,300,900,3600`).
    #[arg(long, value_delimiter = ',', value_parser = parse_seconds)]
    retry_schedule: Option<Vec<u64>>,
    /// A header sent with every request, as `Name: value` (repeatable; to `update`, those given
    /// replace all the webhook's headers). A value given here stays in the shell's history: for a credential, read
    /// it from a variable (`--header "Authorization: $TOKEN"`).
    // Read as given, and taken apart in `add_to`: clap would print a value it refuses,
    // credential and all.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// WebSub verification of intent per channel before events go: websub or none (the
    /// profile's default when absent: websub for asgardeo).
    #[arg(long, value_parser = ["websub", "none"])]
    verification: Option<String>,
    /// Another signature scheme than the profile's: standard, optare, hub or opal.
    #[arg(long, value_parser = ["standard", "optare", "hub", "opal"])]
    signature: Option<String>,
    /// The most requests per second sent to the endpoint (1–10000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rate_limit_per_second: Option<u32>,
    /// A profile setting as KEY=VALUE (repeatable; to `update`, those given replace all the
    /// webhook's settings):
    /// content_mode=structured|binary (cloudevents), batch_window_ms=500 (opal).
    #[arg(long = "option", value_parser = parse_option)]
    options: Vec<(String, Value)>,
}

impl WebhookOptions {
    /// Adds the options that were given to a create or update body.
    pub(super) fn add_to(self, body: &mut Value) -> anyhow::Result<()> {
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
            for (i, raw) in self.headers.iter().enumerate() {
                let (name, value) = parse_header(raw).map_err(|()| {
                    CommandLineRefused::said(format!(
                        "--header number {} is not a header (no ':' after its name); write it \
                         as 'Name: value' (its text is not shown: it may hold a credential)",
                        i + 1
                    ))
                })?;
                // Names are not case-sensitive; a second value would silently replace the first.
                if headers.keys().any(|n| n.eq_ignore_ascii_case(&name)) {
                    return Err(CommandLineRefused::said(format!(
                        "--header {name} is given twice; give each header once"
                    )));
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
pub(super) fn parse_option(raw: &str) -> Result<(String, Value), String> {
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
pub(super) fn parse_seconds(raw: &str) -> Result<u64, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("'{}' is not a whole number of seconds", raw.trim()))
}

/// `--header 'Name: value'`.
fn parse_header(raw: &str) -> Result<(String, String), ()> {
    match raw.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(()),
    }
}

impl WebhooksCommand {
    /// The webhooks the command names, each an id or a name until resolved.
    pub(super) fn webhooks_mut(&mut self) -> Vec<&mut String> {
        match self {
            Self::Update { id, .. }
            | Self::Get { id, .. }
            | Self::Enable { id, .. }
            | Self::Disable { id, .. }
            | Self::Rotate { id, .. }
            | Self::Test { id, .. }
            | Self::Subscriptions { id, .. }
            | Self::Verify { id, .. } => vec![id],
            Self::Delete { ids, .. } => ids.iter_mut().collect(),
            Self::List { .. } | Self::Create { .. } => Vec::new(),
        }
    }

    pub(super) fn org_mut(&mut self) -> &mut String {
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
        /// The webhook: its id (`wh_…`) or its name.
        #[arg(long)]
        webhook: String,
        /// pending, succeeded, failed, cancelled or skipped.
        #[arg(long)]
        state: Option<String>,
        /// Only deliveries of this event type.
        #[arg(long, visible_alias = "type")]
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
    /// Send a delivery now: a finished one again (with a new retry schedule), or a pending one
    /// that waits for its next attempt (an attempt its retry schedule does not count: if it
    /// fails, the step it waited for comes again). Waits for the endpoint's answer and fails
    /// unless it succeeded.
    Retry {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The delivery's id (`dlv_…`).
        id: String,
        /// Only send it: print the delivery without waiting for the answer.
        #[arg(long)]
        no_wait: bool,
    },
    /// Attempt now every delivery of a webhook that waits for a retry (or for its endpoint's
    /// cool-down): for an endpoint just fixed. Their retry schedules do not count that attempt:
    /// one that fails waits for the step it waited for again.
    RetryWaiting {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        #[arg(long)]
        webhook: String,
    },
    /// Send again every failed delivery of a webhook created since a time.
    Recover {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The webhook: its id (`wh_…`) or its name.
        #[arg(long)]
        webhook: String,
        /// Failed deliveries created since: an RFC 3339 time (2026-01-31T00:00:00Z), or how long
        /// ago (90m, 6h, 2d).
        #[arg(long, value_parser = parse_since)]
        since: String,
        /// The skipped ones too: never sent because their WebSub channel was not verified (run
        /// this once `herald webhooks verify` shows the channels verified).
        #[arg(long)]
        include_skipped: bool,
    },
}

/// `--since`: an RFC 3339 time as it is, or a time that long before now (`30s`, `90m`, `6h`,
/// `2d`) written as one.
pub(super) fn parse_since(raw: &str) -> Result<String, String> {
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
        // Herald's times start in 1970: nothing it holds is older.
        Some(at) if at.timestamp() < 0 => Err(format!(
            "'{raw}' ago is before 1970, older than anything Herald holds; give a shorter time"
        )),
        Some(at) => Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        _ if chrono::DateTime::parse_from_rfc3339(raw).is_ok() => Ok(raw.to_owned()),
        _ => Err(format!(
            "'{raw}' is neither an RFC 3339 time (2026-01-31T00:00:00Z) nor how long ago (90m, 6h, 2d)"
        )),
    }
}

impl DeliveriesCommand {
    /// The webhook the command names, an id or a name until resolved.
    pub(super) fn webhook_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::List { webhook, .. }
            | Self::RetryWaiting { webhook, .. }
            | Self::Recover { webhook, .. } => Some(webhook),
            Self::Get { .. } | Self::Retry { .. } => None,
        }
    }

    pub(super) fn org_mut(&mut self) -> &mut String {
        match self {
            Self::List { org, .. }
            | Self::Get { org, .. }
            | Self::Retry { org, .. }
            | Self::RetryWaiting { org, .. }
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
        #[arg(long, visible_alias = "catalog")]
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
    /// The organization's events, newest first (without their data: `events get` shows one
    /// whole, with where it went).
    List {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// Only events of this type.
        #[arg(long = "type", visible_alias = "event-type")]
        event_type: Option<String>,
        /// Only events received since then: an RFC 3339 time, or how long ago (90m, 6h, 2d).
        #[arg(long, value_parser = parse_since)]
        since: Option<String>,
        /// How many, newest first (1–200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where the page starts: the cursor the previous page ended with.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show an event and where it went: its delivery to each webhook, with its state.
    Get {
        /// The organization: its id (`org_…`) or its handle.
        #[arg(long)]
        org: String,
        /// The event's id, as the producer gave it (or as `herald send` printed it).
        id: String,
    },
}

/// `herald send` options.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The organization: its id (`org_…`) or its handle.
    #[arg(long)]
    pub org: String,
    /// The event type; with --data, sends one event built from them.
    #[arg(
        long = "type",
        visible_alias = "event-type",
        conflicts_with = "file",
        requires = "data"
    )]
    pub event_type: Option<String>,
    /// The event's data, a JSON object (with --type, which needs it as the API does: `'{}'`
    /// for an event that carries none).
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
    /// A file with one event, an array of them, or one per line (JSON Lines); `-` for standard
    /// input. Used when --type is not given; standard input is read when neither is. Every
    /// line is checked before anything is sent; a file of JSON Lines is then read again a
    /// request at a time, so its size is not bounded by memory (standard input is kept as
    /// text, an array whole).
    #[arg(long)]
    pub file: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_takes_every_profile_the_server_does() {
        let server: Vec<&str> = herald_core::profile::ProfileName::ALL
            .iter()
            .map(|p| p.as_str())
            .collect();
        assert_eq!(server, PROFILES);
    }

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
        // Before 1970: said so, not sent as a year the server cannot read.
        assert!(parse_since("9999999d").unwrap_err().contains("before 1970"));
    }
}
