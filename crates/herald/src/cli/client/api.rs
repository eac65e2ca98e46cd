//! Requests to the server's API, and its error messages told in the CLI's terms.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::Connection;

/// The organization a request's path names (`/v1/orgs/{org}/…`), if any.
/// A failure that may go through if the same command is run again later: the server could not
/// be reached, or said it cannot take the request now. `herald` exits 75 (`EX_TEMPFAIL`) on
/// one, so that a script can tell it from a request to fix.
#[derive(Debug)]
pub struct TryLater {
    message: String,
    /// The server's error object, where it answered one.
    error: Option<Value>,
}

impl TryLater {
    pub(super) fn said(message: String) -> anyhow::Error {
        anyhow::Error::new(Self {
            message,
            error: None,
        })
    }

    /// Answers that say "not now" rather than "not this".
    fn status(status: reqwest::StatusCode) -> bool {
        matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
    }
}

impl std::fmt::Display for TryLater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TryLater {}

/// A command line the command refuses once clap has taken it: a value it cannot use (`--data`
/// that is not JSON, an empty `--token`), a flag it needs (`--yes`). `herald` exits 2 on one,
/// as on a flag clap refuses (`herald --help` says so).
#[derive(Debug)]
pub struct CommandLineRefused(String);

impl CommandLineRefused {
    pub(super) fn said(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Self(message.into()))
    }
}

impl std::fmt::Display for CommandLineRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommandLineRefused {}

/// An answer refusing the request for what it asks (not [`TryLater`]'s "not now"): its status
/// and the field at fault, for a command that acts on them, and the message as the CLI says it.
#[derive(Debug)]
pub(super) struct Refused {
    pub status: reqwest::StatusCode,
    /// The server's `code` (`too_many_deliveries`...), empty where the answer was not Herald's.
    pub code: String,
    /// The server's `field`: `[3].data/user/id` in a batch's fourth event.
    pub field: Option<String>,
    message: String,
    /// The server's error object, where it answered one.
    error: Option<Value>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// The error object the server answered with, for a command that prints it with `--json`
/// itself ([`Api::post_part`]).
pub(super) fn error_object(e: &anyhow::Error) -> Option<&Value> {
    e.chain().find_map(|cause| {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            refused.error.as_ref()
        } else {
            cause.downcast_ref::<TryLater>()?.error.as_ref()
        }
    })
}

pub(super) fn org_in(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/orgs/")?
        .split(['/', '?'])
        .next()
        .filter(|org| !org.is_empty())
}

/// Something of an organization's that the CLI takes by id or by name.
struct Named {
    /// With its article: "a webhook".
    noun: &'static str,
    one: &'static str,
    many: &'static str,
    /// Its ids' prefix, before the `_`.
    prefix: &'static str,
    is_id: fn(&str) -> bool,
    /// Its list under `/v1/orgs/{org}/`, and the query that asks for all of it.
    collection: &'static str,
    whole_list_query: &'static str,
    list_command: &'static str,
}

impl Named {
    const WEBHOOKS: Self = Self {
        noun: "a webhook",
        one: "webhook",
        many: "webhooks",
        prefix: herald_core::WebhookId::PREFIX,
        is_id: |w| herald_core::WebhookId::parse(w).is_ok(),
        collection: "webhooks",
        whole_list_query: "?limit=200",
        list_command: "webhooks list",
    };
    const API_KEYS: Self = Self {
        noun: "an API key",
        one: "API key",
        many: "API keys",
        prefix: herald_core::ApiKeyId::PREFIX,
        is_id: |k| herald_core::ApiKeyId::parse(k).is_ok(),
        // The keys come whole in one answer, which takes no query.
        collection: "api-keys",
        whole_list_query: "",
        list_command: "keys list",
    };
}

/// The server's advice names API routes; here it names the commands that do the same, for
/// `org` (the request's) where the advice leaves it open.
pub(super) fn in_cli_terms(message: &str, request_org: Option<&str>) -> String {
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
        let events = path[..end]
            .strip_suffix("/events")
            .map(|orgs| orgs.matches('/').count());
        let mut command = match (method, path[..end].strip_suffix("/event-types"), one_type) {
            // `/v1/orgs/{org}/events`, not a webhook's or an event's own path.
            _ if method == "GET" && events == Some(3) => {
                Some(format!("`herald events list --org {org}`"))
            }
            ("GET", Some(_), _) => Some(format!("`herald events types --org {org}`")),
            ("POST", Some(_), _) => Some(format!("`herald events register --org {org} --name …`")),
            ("DELETE", _, Some(name)) => Some(format!(
                "`herald events unregister --org {org} --name {name}`"
            )),
            _ => match (method, webhook) {
                ("POST", Some((id, "deactivate"))) => {
                    Some(format!("`herald webhooks disable --org {org} {id}`"))
                }
                ("POST", Some((id, "activate"))) => {
                    Some(format!("`herald webhooks enable --org {org} {id}`"))
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
    // The API's "send one" for a secret the user chooses, as the command's flag; the
    // commands' verbs for the routes' (`enable` runs …/activate); ids for what the API calls
    // them, where the command takes names too.
    out.replace(
        "a secret you choose; send one",
        "a secret you choose; give one with --secret",
    )
    .replace(
        "activate it (`herald webhooks enable",
        "enable it (`herald webhooks enable",
    )
    .replace(
        "deactivate it first (`herald webhooks disable",
        "disable it first (`herald webhooks disable",
    )
    .replace(
        "webhook is disabled; activate it first",
        "webhook is disabled; enable it first (`herald webhooks enable`)",
    )
    .replace(
        "the API takes the id: list them to find it",
        "give its id, as the list shows it",
    )
}

/// Whether a connection to an `https://` server failed because what answered did not speak
/// TLS (`herald serve`'s plain HTTP, say): rustls finds a record that is not one of TLS's.
fn not_tls(server: &str, why: &str) -> bool {
    server.starts_with("https://") && why.contains("InvalidContentType")
}

/// What a path segment or query value keeps as it is; everything else is percent-encoded, so
/// that an id given on the command line (`org_1/api-keys/key_2`, `x?limit=1`) stays within its
/// segment ([`api_path`] refuses the dot segments `.` and `..`).
pub(super) const VERBATIM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One path segment or query value, percent-encoded.
pub(super) fn encode(raw: &str) -> String {
    percent_encoding::utf8_percent_encode(raw, VERBATIM).to_string()
}

/// `/seg/seg/…`, each segment percent-encoded. An empty id, `.` or `..` would name another
/// path (URLs resolve dot segments, encoded or not), so it is refused.
pub(super) fn api_path(segments: &[&str]) -> anyhow::Result<String> {
    let mut path = String::new();
    for segment in segments {
        if segment.is_empty() {
            return Err(CommandLineRefused::said(
                "an empty id or name was given; ids look like org_…, wh_… or dlv_…",
            ));
        }
        if matches!(*segment, "." | "..") {
            // A URL path resolves them: `…/event-types/..` would name another route.
            return Err(CommandLineRefused::said(format!(
                "'{segment}' is not an id or name the API can take in a URL path"
            )));
        }
        path.push('/');
        path.push_str(&encode(segment));
    }
    Ok(path)
}

/// A list's path with its page size and the filters given (`None`s left out).
pub(super) fn page_path<const N: usize>(
    path: &str,
    limit: u32,
    query: [(&str, Option<String>); N],
) -> String {
    let mut path = format!("{path}?limit={limit}");
    for (key, value) in query {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={}", encode(&value)));
        }
    }
    path
}

/// The token to send, and where it came from: `--token` or `HERALD_TOKEN` (`given`), else
/// `HERALD_ADMIN_TOKEN`, else the admin token kept in the data directory (`HERALD_DATA_DIR`, as
/// `herald serve` reads it, or `./herald-data`), which goes only to a `server` on this machine:
/// nobody chose to send that file elsewhere. A token given empty is refused rather than
/// replaced by the admin's: `--token "$KEY"` with `KEY` unset must not run as the admin.
fn token_to_use(
    given: Option<&str>,
    admin: Option<&str>,
    data_dir: Option<std::path::PathBuf>,
    server: &str,
) -> anyhow::Result<(String, String)> {
    let usable = |token: &str, source: String| -> anyhow::Result<(String, String)> {
        let token = token.trim();
        if token.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
            bail!(
                "the token from {source} holds a character a header cannot carry (a control \
                 character or a non-ASCII one); tokens are plain ASCII, copy it again"
            );
        }
        Ok((token.to_owned(), source))
    };
    match given {
        Some(t) if !t.trim().is_empty() => return usable(t, "--token or HERALD_TOKEN".into()),
        Some(_) => {
            return Err(CommandLineRefused::said(
                "--token (or HERALD_TOKEN) is empty; give the admin token or an organization API \
                 key (hk_…), or leave both out to use HERALD_ADMIN_TOKEN or the admin token kept \
                 in the data directory",
            ));
        }
        None => {}
    }
    if let Some(t) = admin.filter(|t| !t.trim().is_empty()) {
        return usable(t, "HERALD_ADMIN_TOKEN".into());
    }
    let (file, shown) = match data_dir {
        Some(dir) => {
            let file = dir.join("admin-token");
            let shown = format!("{} (HERALD_DATA_DIR)", file.display());
            (file, shown)
        }
        None => (
            std::path::PathBuf::from("herald-data/admin-token"),
            "./herald-data/admin-token".to_owned(),
        ),
    };
    match std::fs::read_to_string(&file) {
        Ok(_) if !on_this_machine(server) => bail!(
            "no token for {server}: the admin token kept in {shown} is sent only to a Herald on \
             this machine (localhost, 127.0.0.1 or ::1); pass --token or set HERALD_TOKEN"
        ),
        Ok(t) => usable(&t, shown),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("could not read the admin token from {shown}: {e}; pass --token instead")
        }
        Err(_) => bail!(
            "no token: pass --token or set HERALD_TOKEN (the admin token, or an organization \
             API key); without either, HERALD_ADMIN_TOKEN or else {shown} is read, and there \
             is neither here"
        ),
    }
}

/// Whether `server` is a loopback address (or `localhost`).
fn on_this_machine(server: &str) -> bool {
    match url::Url::parse(server)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub(super) struct Api {
    http: reqwest::blocking::Client,
    conn: Connection,
    token: String,
    /// Where the token came from, for the message when the server refuses it.
    token_source: String,
}

/// How long a command waits for the server's answer: long enough for the slowest operations
/// (deleting a large organization, a purge), short enough not to hang on a server that took
/// the connection and stalled.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long a command waits for a connection: a server that drops packets (a firewall, a
/// wrong address) is said so soon, not after [`CLIENT_TIMEOUT`].
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// After this long without an answer a command says it is still waiting, so that a server
/// that took the connection and stalled does not leave the terminal silent for minutes.
const WAIT_NOTICE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Says on standard error that the request is still waiting, once [`WAIT_NOTICE_AFTER`] has
/// passed without the answer; dropped when the answer (or an error) comes.
struct WaitNotice {
    /// Never sent on: dropping it wakes the thread, which then says nothing.
    _answered: Option<std::sync::mpsc::Sender<()>>,
}

impl WaitNotice {
    fn start(server: &str) -> Self {
        let (answered, waiting) = std::sync::mpsc::channel::<()>();
        let server = server.to_owned();
        let started = std::thread::Builder::new()
            .name("wait-notice".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    waiting.recv_timeout(WAIT_NOTICE_AFTER)
                {
                    eprintln!(
                        "waiting for Herald at {server} to answer ({} s so far; up to {} s in \
                         all; Ctrl-C stops waiting)",
                        WAIT_NOTICE_AFTER.as_secs(),
                        CLIENT_TIMEOUT.as_secs()
                    );
                }
            });
        // Without a thread there is no notice, and the request goes on all the same.
        Self {
            _answered: started.is_ok().then_some(answered),
        }
    }
}

impl Api {
    pub(super) fn new(conn: Connection) -> anyhow::Result<Self> {
        herald_dispatch::client::install_tls_provider();
        let (token, token_source) = token_to_use(
            conn.token.as_deref(),
            std::env::var("HERALD_ADMIN_TOKEN").ok().as_deref(),
            std::env::var_os("HERALD_DATA_DIR").map(std::path::PathBuf::from),
            &conn.server,
        )?;
        Ok(Self {
            http: reqwest::blocking::Client::builder()
                .timeout(CLIENT_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .context("could not set up the HTTP client")?,
            conn,
            token,
            token_source,
        })
    }

    /// Why a request got no answer, in words that fit: never sent, sent but unanswered in
    /// time (it may have been carried out), or no server to take it. All but the first may
    /// go through later ([`TryLater`]).
    fn not_answered(&self, e: reqwest::Error) -> anyhow::Error {
        let server = &self.conn.server;
        // Without the URL, which may be long (an id of 70,000 characters) and is the user's.
        let (builder, connect, timeout) = (e.is_builder(), e.is_connect(), e.is_timeout());
        let why = herald_core::error_chain(&e.without_url());
        if builder {
            return anyhow::anyhow!("could not make the request to {server}: {why}");
        }
        TryLater::said(if connect && not_tls(server, &why) {
            format!(
                "could not reach Herald at {server}: what answered there does not speak TLS; \
                 `herald serve` listens on plain HTTP (http://…) unless a proxy in front of it \
                 takes TLS (--server): {why}"
            )
        } else if timeout && !connect {
            format!(
                "Herald at {server} did not answer within {} s; the request may still have been \
                 carried out: read what it changes before sending it again",
                CLIENT_TIMEOUT.as_secs()
            )
        } else {
            format!(
                "could not reach Herald at {server}; is `herald serve` running? (--server): {why}"
            )
        })
    }

    pub(super) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.request(method, path, body, false)
    }

    /// [`Api::call`]; with `caller_tells`, a refusal is not printed with `--json`: the caller
    /// prints it ([`error_object`]), or sends the same in parts.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        caller_tells: bool,
    ) -> anyhow::Result<Value> {
        // `--server http://host:7600/v1` means the same server: every path starts with /v1.
        let base = self.conn.server.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let url = format!("{base}{path}");
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let notice = WaitNotice::start(&self.conn.server);
        let resp = req.send().map_err(|e| self.not_answered(e))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        drop(notice);
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
            // With --json, the server's error as it sent it (code, message, field), for
            // scripts; the message goes to standard error and the exit status says it failed.
            let error = value.as_ref().filter(|v| v["error"].is_object());
            if let Some(error) = error
                && self.conn.json
                && !caller_tells
            {
                super::output::print_json(error);
            }
            let refused = |message: String| {
                anyhow::Error::new(Refused {
                    status,
                    code: (value.as_ref())
                        .and_then(|v| v["error"]["code"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    field: value
                        .as_ref()
                        .and_then(|v| v["error"]["field"].as_str())
                        .map(str::to_owned),
                    message,
                    error: error.cloned(),
                })
            };
            match value.as_ref().and_then(|v| v["error"]["message"].as_str()) {
                Some(message) if status == reqwest::StatusCode::UNAUTHORIZED => {
                    return Err(refused(format!(
                        "{status}: {message} (the token was read from {}; give the right one \
                         with --token or HERALD_TOKEN)",
                        self.token_source
                    )));
                }
                Some(message) if TryLater::status(status) => {
                    return Err(anyhow::Error::new(TryLater {
                        message: format!("{status}: {}", in_cli_terms(message, org_in(path))),
                        error: error.cloned(),
                    }));
                }
                Some(message) => {
                    return Err(refused(format!(
                        "{status}: {}",
                        in_cli_terms(message, org_in(path))
                    )));
                }
                // A proxy's own page (a load balancer with no node to send it to, say).
                None if TryLater::status(status) => return Err(TryLater::said(not_herald())),
                None => return Err(refused(not_herald())),
            }
        }
        match value {
            Some(value) if value.is_object() || value.is_null() => Ok(value),
            _ => bail!(not_herald()),
        }
    }

    /// Every item of a paged list, page after page, as one page (`{"data": [...]}`).
    pub(super) fn get_all(&self, path: &str) -> anyhow::Result<Value> {
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
            let join = if path.contains('?') { '&' } else { '?' };
            page = self.get(&format!("{path}{join}cursor={}", encode(cursor)))?;
        }
        Ok(json!({ "data": items, "next_cursor": null }))
    }

    /// `--org` as an id: an id is taken as it is, anything else is looked up as a handle among
    /// the organizations the token sees.
    pub(super) fn org_id(&self, org: &str) -> anyhow::Result<String> {
        // Trimmed as names are: a pasted id or handle may come with spaces.
        let org = org.trim();
        if herald_core::OrgId::parse(org).is_ok() {
            return Ok(org.to_owned());
        }
        let shown = herald_core::truncate_for_message(org);
        if org.starts_with("org_") {
            bail!(
                "'{shown}' is not an organization id (org_ and 26 letters and digits); `herald \
                 orgs list` shows them, with each one's handle"
            );
        }
        let orgs = self.get_all("/v1/orgs?limit=200")?;
        let orgs = orgs["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let handle = |o: &Value| o["handle"].as_str().unwrap_or_default().to_owned();
        if let Some(id) = orgs
            .iter()
            .find(|o| o["handle"].as_str() == Some(org))
            .and_then(|o| o["id"].as_str())
        {
            return Ok(id.to_owned());
        }
        // The organization's name in place of its handle is the likely slip (`"Acme Inc"` for
        // `acme-inc`), then a misspelt handle.
        let by_name = orgs.iter().find(|o| {
            o["name"]
                .as_str()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(org))
        });
        let hint = match by_name {
            Some(o) => format!(
                " ('{shown}' is the name of the one whose handle is '{}')",
                handle(o)
            ),
            None => {
                let handles: Vec<String> = orgs.iter().map(handle).collect();
                herald_core::suggest::did_you_mean(herald_core::suggest::closest(
                    org,
                    handles.iter().map(String::as_str),
                ))
            }
        };
        bail!(
            "no organization has the handle '{shown}'{hint}; give an organization's id (org_…) \
             or handle (`herald orgs list` shows both)"
        )
    }

    /// Puts each webhook's id in place of its name (names are the organization's and need not
    /// be unique: a name two webhooks share is refused with their ids). The webhooks are
    /// listed once, and only if some name is not an id.
    pub(super) fn resolve_webhooks(
        &self,
        org: &str,
        webhooks: Vec<&mut String>,
    ) -> anyhow::Result<()> {
        self.resolve_names(org, &Named::WEBHOOKS, webhooks)
    }

    /// The same for API keys, which `keys delete` takes by id or name.
    pub(super) fn resolve_api_keys(&self, org: &str, keys: Vec<&mut String>) -> anyhow::Result<()> {
        self.resolve_names(org, &Named::API_KEYS, keys)
    }

    fn resolve_names(
        &self,
        org: &str,
        kind: &Named,
        mut given: Vec<&mut String>,
    ) -> anyhow::Result<()> {
        // As the server stores names (and as a pasted id may come), trimmed.
        for name in given.iter_mut() {
            let trimmed = name.trim();
            if trimmed.len() != name.len() {
                **name = trimmed.to_owned();
            }
        }
        let is_id = |w: &str| (kind.is_id)(w);
        if given.iter().all(|w| is_id(w)) {
            return Ok(());
        }
        let path = api_path(&["v1", "orgs", org, kind.collection])?;
        let listed = self.get_all(&format!("{path}{}", kind.whole_list_query))?;
        let listed = listed["data"].as_array().cloned().unwrap_or_default();
        let (noun, list) = (kind.noun, kind.list_command);
        for name in given.into_iter().filter(|w| !is_id(w)) {
            let shown = herald_core::truncate_for_message(name);
            let named: Vec<&str> = listed
                .iter()
                .filter(|w| w["name"].as_str() == Some(name.as_str()))
                .filter_map(|w| w["id"].as_str())
                .collect();
            let prefix = format!("{}_", kind.prefix);
            *name = match named.as_slice() {
                [id] => (*id).to_owned(),
                [] if name.starts_with(&prefix) => bail!(
                    "'{shown}' is not {noun} id ({prefix} and 26 letters and digits), nor \
                     {noun}'s name; `herald {list} --org {org}` shows both"
                ),
                [] => bail!(
                    "no {} is named '{shown}'; give {noun}'s id ({prefix}…) or name (`herald \
                     {list} --org {org}` shows both)",
                    kind.one
                ),
                several => bail!(
                    "{} {} are named '{shown}'; give one's id: {}",
                    several.len(),
                    kind.many,
                    several.join(", ")
                ),
            };
        }
        Ok(())
    }

    pub(super) fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }

    pub(super) fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    /// A post of part of a larger input, whose refusal the caller prints with `--json` (with
    /// what became of the rest), or answers by sending the same in smaller parts.
    pub(super) fn post_part(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.request(reqwest::Method::POST, path, Some(body), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_unusable_token_is_refused_not_replaced_by_the_admins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-token"), "admin-from-file\n").unwrap();
        let data_dir = || Some(dir.path().to_path_buf());
        let local = "http://127.0.0.1:7600";
        let token = |given, admin| token_to_use(given, admin, data_dir(), local);
        let refused = |r: anyhow::Result<(String, String)>| r.unwrap_err().to_string();
        // clap gives an empty HERALD_TOKEN as an empty value, as it gives --token "".
        let empty = "--token (or HERALD_TOKEN) is empty";
        assert!(refused(token(Some(""), Some("adm"))).starts_with(empty));
        assert!(refused(token(Some("  "), None)).starts_with(empty));
        // Pasted from a file with Windows line ends: trimmed; a control character inside is named.
        assert_eq!(token(Some(" hk_abc\r\n"), None).unwrap().0, "hk_abc");
        assert!(refused(token(Some("hk_a\rbc"), None)).contains("a header cannot carry"));
        assert_eq!(
            token(None, Some("adm")).unwrap(),
            ("adm".to_owned(), "HERALD_ADMIN_TOKEN".to_owned())
        );
        let (from_file, source) = token(None, Some(" ")).unwrap();
        assert_eq!(from_file, "admin-from-file");
        assert!(
            source.ends_with("admin-token (HERALD_DATA_DIR)"),
            "{source}"
        );
        let missing = token_to_use(None, None, Some(dir.path().join("nowhere")), local);
        assert!(refused(missing).contains("nowhere/admin-token (HERALD_DATA_DIR) is read"));
        // The file goes only to a server on this machine; a token given goes anywhere.
        for server in [
            "http://localhost:7600",
            "http://[::1]:7600",
            "https://127.0.0.2",
        ] {
            assert!(
                token_to_use(None, None, data_dir(), server).is_ok(),
                "{server}"
            );
        }
        for server in [
            "https://herald.example.com",
            "http://10.0.0.1:7600",
            "not a url",
        ] {
            let elsewhere = refused(token_to_use(None, None, data_dir(), server));
            assert!(
                elsewhere.contains("sent only to a Herald on this machine"),
                "{elsewhere}"
            );
            assert!(token_to_use(Some("hk_x"), None, data_dir(), server).is_ok());
        }
    }

    #[test]
    fn a_disabled_webhook_is_to_be_enabled_by_the_command_that_does_it() {
        assert_eq!(
            in_cli_terms(
                "the webhook is disabled; activate it (POST /v1/orgs/org_1/webhooks/wh_1/activate) \
                 before sending a test event",
                None
            ),
            "the webhook is disabled; enable it (`herald webhooks enable --org org_1 wh_1`) \
             before sending a test event"
        );
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
            "disable it first (`herald webhooks disable --org org_1 wh_2`): a webhook"
        );
        // The organization's events, not an event's nor a webhook's deliveries.
        assert_eq!(
            in_cli_terms(
                "list what is kept with GET /v1/orgs/{org}/events",
                Some("org_3")
            ),
            "list what is kept with `herald events list --org org_3`"
        );
        let unchanged =
            "see GET /v1/orgs/org_1/events/e1/events and GET /v1/orgs/org_1/webhooks/w/events";
        assert_eq!(in_cli_terms(unchanged, None), unchanged);
        assert_eq!(
            in_cli_terms(
                "the webhook is inactive: …; activate it (POST /v1/orgs/org_1/webhooks/wh_1/activate), then retry what waits",
                None
            ),
            "the webhook is inactive: …; enable it (`herald webhooks enable --org org_1 wh_1`), then retry what waits"
        );
        assert_eq!(
            in_cli_terms(
                "the delivery's webhook is disabled; activate it first",
                None
            ),
            "the delivery's webhook is disabled; enable it first (`herald webhooks enable`)"
        );
        assert_eq!(
            in_cli_terms(
                "the permit profile signs with a secret you choose; send one (16 to 256 characters)",
                None
            ),
            "the permit profile signs with a secret you choose; give one with --secret (16 to 256 characters)"
        );
        // Routes without a command of their own are left as they are.
        let other = "see GET /v1/orgs/org_1/webhooks, then POST /v1/orgs";
        assert_eq!(in_cli_terms(other, None), other);
        assert_eq!(in_cli_terms("no route here", None), "no route here");
        assert_eq!(org_in("/v1/orgs?limit=200"), None);
        assert_eq!(org_in("/v1/orgs/org_9?x=1"), Some("org_9"));
    }
}
