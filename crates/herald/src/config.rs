//! Settings: every one a flag with an environment variable, validated into [`Settings`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};

/// A yes-or-no setting, from a flag's value or its variable, with a message that says what is
/// taken (clap's own says only "value was not a boolean").
fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "0" | "no" | "n" | "off" | "" => Ok(false),
        _ => Err("give true or false (also taken: 1/0, yes/no, on/off)".into()),
    }
}

/// A database URL, which cannot be empty: an empty variable would otherwise be taken for a
/// PostgreSQL URL that names nothing.
fn parse_database_url(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err(
            "empty: unset HERALD_DATABASE_URL to use the embedded database, or give \
                    postgres://user@host:port/database"
                .into(),
        );
    }
    Ok(raw.to_owned())
}

/// `herald migrate` settings: only what opening the database takes.
#[derive(Debug, Clone, Args)]
pub struct MigrateSettings {
    #[command(flatten)]
    pub storage: StorageSettings,
    #[command(flatten)]
    pub encryption: EncryptionSettings,
    #[command(flatten)]
    pub logging: LogSettings,
}

/// `herald serve` settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub storage: StorageSettings,
    #[command(flatten)]
    pub encryption: EncryptionSettings,
    #[command(flatten)]
    pub security: SecuritySettings,
    #[command(flatten)]
    pub delivery: DeliverySettings,
    #[command(flatten)]
    pub limits: LimitSettings,
    #[command(flatten)]
    pub logging: LogSettings,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerSettings {
    /// Address to serve the API on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7600", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// The public base URL of this server, as receivers and browsers reach it: deliveries name
    /// it (asgardeo's `iss` and event URIs, cloudevents' `source`); the dashboard's sign-in
    /// checks its form was posted from it, and an https:// one marks the session cookie
    /// Secure. Defaults to http://<listen>.
    #[arg(long, env = "HERALD_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// The largest request body accepted, in bytes (at least 1024).
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(i64).range(1024..=(1 << 30)).map(|n| n as usize))]
    pub max_body_bytes: usize,
    /// The most bytes of request bodies this node holds at once (each request counts its
    /// `Content-Length`, or the largest body if it sends none). Past it, requests wait for room
    /// and then get `503 overloaded`, instead of growing the process without bound. One
    /// organization holds at most a quarter of it (or the largest body, if that is more).
    /// At least `max-body-bytes`.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(i64).range(1024..=(1 << 40)).map(|n| n as usize))]
    pub max_body_bytes_in_flight: usize,
    /// How long a request waits for room under that limit before its `503`, in milliseconds
    /// (at most an hour).
    #[arg(long, env = "HERALD_ADMISSION_WAIT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(0..=3_600_000).map(u64::from))]
    pub admission_wait_ms: u64,
    /// How long a request body may take to arrive once admitted, in milliseconds (100 to an
    /// hour), plus one second per 64 KiB it declares (or of the largest body, when it declares
    /// no length). A slower one gets `408` and gives its room back.
    #[arg(long, env = "HERALD_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..=3_600_000).map(u64::from))]
    pub body_timeout_ms: u64,
    /// How long a client has to send a request's headers, in milliseconds (at most an hour); an
    /// idle keep-alive connection is closed after as long (clients should keep their idle
    /// timeout below it), and so is one whose client takes none of an answer for as long.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u32).range(1..=3_600_000).map(u64::from))]
    pub header_timeout_ms: u64,
    /// Apply pending database migrations on start (`false`: only check that the schema is
    /// current, and leave migrating to `herald migrate`). PostgreSQL only: the embedded
    /// database always migrates, as one node owns it.
    #[arg(long, env = "HERALD_MIGRATE", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", value_parser = parse_bool)]
    pub migrate: bool,
    /// Do not apply migrations on start (the same as `--migrate false`; PostgreSQL only).
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Clone, Args)]
#[command(next_help_heading = "Storage")]
pub struct StorageSettings {
    /// Where the embedded database and generated secrets live.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,
    /// `postgres://user[:password]@host[:port]/database` selects PostgreSQL instead of the
    /// embedded database; several nodes may share it. The data directory then holds only the
    /// generated admin token. TLS as libpq's parameters say: add
    /// `?sslmode=verify-full&sslrootcert=/path/to/ca.pem` to check the server's certificate.
    /// libpq's variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, …) fill
    /// what it leaves out: `postgres://` alone takes everything from them.
    #[arg(long, env = "HERALD_DATABASE_URL", hide_env_values = true, value_parser = parse_database_url)]
    pub database_url: Option<String>,
    /// PostgreSQL connections this node keeps open at most.
    #[arg(long, env = "HERALD_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,
}

impl ServerSettings {
    /// Whether `serve` applies pending migrations on start.
    pub fn migrate_on_start(&self) -> bool {
        self.migrate && !self.no_migrate
    }
}

impl StorageSettings {
    /// The database URL without its password, for messages (see [`database_for_display`]).
    pub fn database_url_for_display(&self) -> Option<String> {
        self.database_url.as_deref().map(database_for_display)
    }
}

// The settings that hold secrets show them as `…` when debug-printed, so that printing the
// settings (in a test failure, say) shows none of them.

impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url_for_display())
            .field("database_pool_size", &self.database_pool_size)
            .finish()
    }
}

impl std::fmt::Debug for EncryptionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionSettings")
            .field("encryption_key", &hidden(&self.encryption_key))
            .field("encryption_old_keys", &self.encryption_old_keys.len())
            .finish()
    }
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuritySettings")
            .field("admin_token", &hidden(&self.admin_token))
            .field("allow_private_networks", &self.allow_private_networks)
            .field("allow_insecure_urls", &self.allow_insecure_urls)
            .field("metrics_token", &hidden(&self.metrics_token))
            .field("token_failures_per_minute", &self.token_failures_per_minute)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// `Some("…")` for a secret that is set.
fn hidden(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "…")
}

/// A database URL without its password, naming the libpq variables (`PGHOST`, …) that
/// complete it: what messages say of the database a command uses.
pub fn database_for_display(url: &str) -> String {
    let shown = redact_password(url);
    let completed = herald_store::postgres::conninfo::completed_from_environment(url);
    if completed.is_empty() {
        shown
    } else {
        format!(
            "{shown} (with {} from the environment)",
            completed.join(", ")
        )
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user@host/db?password=…`: the
/// password is dropped wherever libpq's URL syntax lets it appear.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, _)) = url.split_once("://") else {
        return herald_store::postgres::conninfo::without_password(url)
            .unwrap_or_else(|| "(not a URL)".into());
    };
    // Where the driver finds the query: a `?` in the password does not start it.
    let (rest, query) = herald_store::postgres::conninfo::split_query(url);
    let rest = &rest[scheme.len() + 3..];
    let mut shown = match rest.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                // The key stays, so the reader sees that one was given.
                Some((key, _)) if key.to_ascii_lowercase().contains("password") => {
                    format!("{key}=…")
                }
                _ => p.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

/// Webhook secrets encrypted at rest. `migrate` takes them too, since it re-encrypts secrets
/// stored under an old key or none.
#[derive(Clone, Args)]
#[command(next_help_heading = "Encryption at rest")]
pub struct EncryptionSettings {
    /// Encrypt webhook secrets at rest with this key: 32 random bytes as 64 hex characters or
    /// base64 (`openssl rand -hex 32`). Secrets stored before are encrypted on start, or by `herald migrate`.
    #[arg(long, env = "HERALD_ENCRYPTION_KEY", hide_env_values = true, value_parser = parse_encryption_key)]
    pub encryption_key: Option<String>,
    /// Previous encryption keys, comma-separated, still accepted to read secrets during a key
    /// rotation; secrets are re-encrypted with the current key on start, or by `herald migrate`.
    /// Without a current key, they open what was sealed with them and seal nothing: the first
    /// step of turning encryption on across several nodes.
    #[arg(
        long,
        env = "HERALD_ENCRYPTION_OLD_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub encryption_old_keys: Vec<String>,
}

#[derive(Clone, Args)]
#[command(next_help_heading = "Security")]
pub struct SecuritySettings {
    /// The admin bearer token. Without it, one is generated on first start and kept in the data
    /// directory.
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Comma-separated CIDRs that deliveries may reach although they are not public.
    #[arg(long, env = "HERALD_ALLOW_PRIVATE_NETWORKS", value_delimiter = ',', value_parser = parse_network)]
    pub allow_private_networks: Vec<String>,
    /// Allow http:// webhook URLs for profiles that otherwise require https://.
    #[arg(long, env = "HERALD_ALLOW_INSECURE_URLS", value_parser = parse_bool)]
    pub allow_insecure_urls: bool,
    /// A bearer token `/metrics` then asks for (the admin token also works). Without it the
    /// metrics, which name every organization's webhooks and their backlogs, are open to
    /// whoever reaches the listen address.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true, value_parser = parse_metrics_token)]
    pub metrics_token: Option<String>,
    /// How many tokens that are not valid one client network (an IPv4 address, an IPv6 /64)
    /// may send a minute to the API, the dashboard's sign-in and `/metrics`. Past it, its
    /// tokens not used from there before get 429 unchecked until the allowance refills, and
    /// tokens already used from there still pass. Counted per node; 0: no limit.
    #[arg(long, env = "HERALD_TOKEN_FAILURES_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub token_failures_per_minute: u32,
    /// Comma-separated CIDRs of the proxies in front of Herald (a load balancer, a reverse
    /// proxy). A request from one of them is counted against the client its
    /// `X-Forwarded-For` names (the last address there that is not a trusted proxy) for the
    /// token failures above, rather than against the proxy, which every client shares.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Delivery")]
pub struct DeliverySettings {
    /// Disable a webhook whose every attempt has failed for this many hours (1 to 87,600), five
    /// attempts at least (a 410 Gone disables it at once). The organization gets a
    /// `webhook.disabled` event.
    #[arg(long, env = "HERALD_DISABLE_AFTER_HOURS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=87_600).map(u64::from))]
    pub disable_after_hours: u64,
    /// Keep events and their finished deliveries and attempts this many days (0: forever).
    /// Pending deliveries are always kept. Also the window in which event ids are idempotent.
    #[arg(long, env = "HERALD_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=36_500).map(u64::from))]
    pub retention_days: u64,
    /// How long a node holds the deliveries it took before another node may take them over: a
    /// node that dies leaves its deliveries to the others after this. What waits in the node's
    /// queue has its lease renewed while half of it is left, and a delivery whose lease is too
    /// short for the webhook's timeout when its attempt starts is leased anew then. No attempt runs past the end of its lease, so keep it above your longest webhook
    /// timeout (at most 60 s) plus a few seconds.
    #[arg(long, env = "HERALD_LEASE_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u32).range(5..=86_400).map(u64::from))]
    pub lease_seconds: u64,
    /// How long a stopping node (SIGTERM, Ctrl-C) waits for the requests it has in flight to be
    /// answered and recorded. Those still out then are cut off, recorded as `interrupted`, and
    /// sent again without spending a retry. Raise it toward your longest webhook timeout where
    /// whatever stops Herald waits that long, some 12 s under it: recording and giving back
    /// what was cut off may take up to 11 s more (Kubernetes gives 30 s by default).
    #[arg(long, env = "HERALD_STOP_GRACE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=600).map(u64::from))]
    pub stop_grace_seconds: u64,
    /// The most requests this node has in flight at once to one webhook (each node has its own).
    /// Each webhook starts at 16 (or this, if lower), takes one more after each round of answers
    /// in time while all are busy, and halves after a 429 or 503, or once more than a fifth of a
    /// run of answers are timeouts, refused connections, 502 or 504. Lower it to spare fragile
    /// endpoints; 1 sends one request at a time.
    #[arg(long, env = "HERALD_ENDPOINT_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub endpoint_concurrency: u32,
    /// The most requests this node has in flight at once to all webhooks together: each holds a
    /// connection (a file descriptor) and memory, and a fan-out to a thousand webhooks at 64
    /// each would otherwise open tens of thousands. Lowered at start to fit the open-file limit.
    #[arg(long, env = "HERALD_MAX_REQUESTS_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=65_536))]
    pub max_requests_in_flight: u32,
    /// Idle connections kept for reuse across all receivers: what the open-file limit leaves
    /// beside the requests in flight, at most four times as many (set at start by `serve`;
    /// `None`: as many as requests in flight).
    #[arg(skip)]
    pub max_idle_connections: Option<u32>,
    /// The most deliveries this node holds in memory, queued or in flight, across all webhooks
    /// (with at most 64 MiB of their events); past it new ones wait in the store and are taken
    /// up as room frees.
    #[arg(long, env = "HERALD_MAX_DELIVERIES_IN_MEMORY", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(100..=10_000_000).map(u64::from))]
    pub max_deliveries_in_memory: u64,
}

/// What one organization may have, so that one tenant cannot load the node every tenant shares.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits per organization")]
pub struct LimitSettings {
    /// The most webhooks one organization may have. Every event is matched against each of its
    /// webhooks and may become a delivery for each, all in the one write that stores it.
    #[arg(long, env = "HERALD_MAX_WEBHOOKS_PER_ORG", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_webhooks_per_org: u32,
    /// The most event types one organization may register (the catalogs' types not counted).
    /// Each one's JSON Schema is compiled at the first event of its type and kept, on every
    /// node its events come to (a 16 KiB schema can take a few hundred KiB compiled).
    #[arg(long, env = "HERALD_MAX_EVENT_TYPES_PER_ORG", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_event_types_per_org: u32,
    /// The most deliveries one request of events may create (each event becomes one per
    /// webhook subscribed to it); a request over it is refused whole, so that a batch fanned
    /// out to many webhooks cannot hold unbounded memory while it is stored.
    #[arg(long, env = "HERALD_MAX_DELIVERIES_PER_REQUEST", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_deliveries_per_request: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogSettings {
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `herald=debug,info`. The PostgreSQL connection pool's own
    /// lines show only from `error` unless it is named (`deadpool=warn`).
    #[arg(long, env = "HERALD_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log: String,
}

/// `HERALD_LISTEN`: an IP address and a port (a name would need resolving, and might resolve to
/// several addresses).
fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    raw.parse().map_err(|_| {
        format!(
            "'{raw}' is not an IP address and port; use e.g. 127.0.0.1:7600 (this \
             machine only) or 0.0.0.0:7600 (every interface)"
        )
    })
}

/// One of `HERALD_ALLOW_PRIVATE_NETWORKS`' ranges, checked as the command line is read: a
/// mistake stops the start before the data directory or an admin token nobody sees is made.
fn parse_network(raw: &str) -> Result<String, String> {
    match herald_core::address_policy::AddressPolicy::parse(&[raw.to_owned()]) {
        Ok(_) => Ok(raw.to_owned()),
        Err(_) if raw.trim().contains(char::is_whitespace) => Err(format!(
            "'{raw}' is not a CIDR; separate several with commas, e.g. 10.0.0.0/8,127.0.0.1/32"
        )),
        Err(e) => Err(e.message),
    }
}

/// One of `HERALD_TRUSTED_PROXIES`: a CIDR, or a single address.
fn parse_proxy(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!(
                "'{raw}' is not a CIDR or an address; give the proxies' addresses, separated by commas, e.g. 10.0.0.0/8,192.0.2.7"
            )
        })
}

/// `HERALD_METRICS_TOKEN`: empty would be a token nobody could send (only the admin token would
/// open `/metrics`), most likely a variable set to nothing by mistake.
fn parse_metrics_token(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("HERALD_METRICS_TOKEN is empty; set a long random string, or unset it to leave /metrics open".into());
    }
    Ok(raw.to_owned())
}

/// `HERALD_ENCRYPTION_KEY`: empty is most likely a variable its secret store left blank, and
/// taken for no key it would store webhook secrets unencrypted without a word.
fn parse_encryption_key(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("the encryption key is empty; give 32 random bytes as 64 hex characters (`openssl rand -hex 32`), or unset HERALD_ENCRYPTION_KEY to store webhook secrets unencrypted".into());
    }
    Ok(raw.to_owned())
}

/// The levels a log filter may name.
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `HERALD_LOG`: a filter whose every bare word is a level (or names Herald's own code). To
/// tracing a bare word is also a target, so a misspelt level (`verbose`, `warnn`) would
/// otherwise be taken as one and turn every line off without a word.
fn parse_log_filter(raw: &str) -> Result<String, String> {
    for directive in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        let level = LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str());
        if bare && !level && !directive.starts_with("herald") {
            return Err(format!(
                "'{directive}' is not a level; use one of {}, or target=level \
                 (e.g. 'info' or 'herald=debug,info')",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(raw).map_err(|e| {
        format!("'{raw}' is not a log filter ({e}); try 'info' or 'herald=debug,info'")
    })?;
    Ok(raw.to_owned())
}

/// `HERALD_PUBLIC_URL`: an absolute http(s) URL with a host (it goes into tokens' issuers,
/// CloudEvents' `source` and the dashboard's links).
fn parse_public_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| {
        format!("'{raw}' is not an absolute URL ({e}); use e.g. https://herald.example.com")
    })?;
    if !is_http_with_host(&url) {
        return Err(format!(
            "'{raw}' must be an http:// or https:// URL with a host, e.g. https://herald.example.com"
        ));
    }
    // It is shown to every receiver (an issuer, a CloudEvents source) and in the log.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "HERALD_PUBLIC_URL must not carry a user name or password: it is shown to every \
             receiver and in the log; give only the scheme, host and any path prefix"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{raw}' has a query or fragment; HERALD_PUBLIC_URL is a base that paths are added \
             to: give only the scheme, host and any path prefix"
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// An `http://` or `https://` URL that names a host: what Herald's own addresses must be.
pub fn is_http_with_host(url: &url::Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty())
}

impl Settings {
    /// The public base URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.server.listen),
        }
    }

    /// Settings for tests and embedding: everything at its default, data in `data_dir`.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        Self {
            server: ServerSettings {
                listen: "127.0.0.1:0".parse().expect("a valid address"),
                public_url: None,
                max_body_bytes: 1024 * 1024,
                max_body_bytes_in_flight: 64 * 1024 * 1024,
                admission_wait_ms: 5_000,
                body_timeout_ms: 10_000,
                header_timeout_ms: 30_000,
                migrate: true,
                no_migrate: false,
            },
            storage: StorageSettings {
                data_dir,
                database_url: None,
                database_pool_size: 16,
            },
            encryption: EncryptionSettings {
                encryption_key: None,
                encryption_old_keys: Vec::new(),
            },
            security: SecuritySettings {
                admin_token: None,
                allow_private_networks: Vec::new(),
                allow_insecure_urls: false,
                metrics_token: None,
                token_failures_per_minute: 30,
                trusted_proxies: Vec::new(),
            },
            delivery: DeliverySettings {
                disable_after_hours: 120,
                retention_days: 30,
                lease_seconds: 300,
                stop_grace_seconds: 10,
                endpoint_concurrency: 64,
                max_requests_in_flight: 1024,
                max_idle_connections: None,
                max_deliveries_in_memory: 100_000,
            },
            limits: LimitSettings {
                max_webhooks_per_org: 1_000,
                max_event_types_per_org: 1_000,
                max_deliveries_per_request: 10_000,
            },
            logging: LogSettings {
                log_format: LogFormat::Text,
                log: "info".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/operations.md's table of settings is where operators look them up (there is no
    /// configuration file): every setting of `herald serve` has its row there, with its flag
    /// and the default it really has.
    #[test]
    fn every_setting_is_in_the_operations_guide_with_its_default() {
        use clap::Args;
        let guide = include_str!("../../../docs/operations.md");
        // `| variables | flags | defaults: what they do |`; related settings share a row, each
        // cell listing them in the same order.
        let rows: Vec<Vec<&str>> = guide
            .lines()
            .filter(|l| l.starts_with("| `HERALD_"))
            .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
            .collect();
        let command = Settings::augment_args(clap::Command::new("serve"));
        let mut missing = Vec::new();
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let env = format!("`{}`", env.to_string_lossy());
            let Some(row) = rows.iter().find(|r| r[0].split(", ").any(|e| e == env)) else {
                missing.push(format!("no row for {env}"));
                continue;
            };
            let flag = format!("`--{long}");
            let gives_flag = |flags: &str| {
                flags.contains(&format!("{flag}`")) || flags.contains(&format!("{flag} "))
            };
            if !row.get(1).is_some_and(|flags| gives_flag(flags)) {
                missing.push(format!("{env}'s row does not give its flag {flag}`"));
            }
            if let [default] = arg.get_default_values() {
                let shown = format!("`{}`", default.to_string_lossy());
                let defaults = row.get(2).copied().unwrap_or_default();
                let shared = row[0].contains(", ");
                if !(defaults.starts_with(&shown) || shared && defaults.contains(&shown)) {
                    missing.push(format!("{env}'s row does not give its default {shown}"));
                }
            }
        }
        // And no row for a setting that is gone.
        let settings: Vec<String> = command
            .get_arguments()
            .filter_map(|a| Some(format!("`{}`", a.get_env()?.to_string_lossy())))
            .collect();
        for row in &rows {
            for env in row[0]
                .split(", ")
                .filter(|e| !settings.iter().any(|s| s == e))
            {
                missing.push(format!(
                    "a row for {env}, which is no setting of herald serve"
                ));
            }
        }
        assert!(
            missing.is_empty(),
            "docs/operations.md:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn debug_printed_settings_show_no_secret() {
        let mut settings = Settings::for_data_dir("/tmp/x".into());
        settings.security.admin_token = Some("hadm_admin-secret".into());
        settings.security.metrics_token = Some("metrics-secret".into());
        settings.storage.database_url = Some("postgres://u:db-secret@h/d".into());
        settings.encryption.encryption_key = Some("key-secret".into());
        settings.encryption.encryption_old_keys = vec!["old-secret".into()];
        let shown = format!("{settings:?}");
        for secret in [
            "admin-secret",
            "metrics-secret",
            "db-secret",
            "key-secret",
            "old-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres://u@h/d"), "{shown}");
    }

    #[test]
    fn a_misspelt_log_level_is_refused_rather_than_silencing_the_log() {
        for good in [
            "info",
            "WARN",
            "herald=debug,info",
            "herald",
            "tower_http=off,info",
            "",
        ] {
            assert_eq!(parse_log_filter(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["verbose", "warnn", "info,debgu"] {
            let e = parse_log_filter(bad).unwrap_err();
            assert!(e.contains("is not a level") && e.contains("trace"), "{e}");
        }
    }

    #[test]
    fn the_listen_address_metrics_token_and_encryption_key_say_what_they_take() {
        assert_eq!(
            parse_listen("0.0.0.0:7600"),
            Ok("0.0.0.0:7600".parse().unwrap())
        );
        let e = parse_listen("localhost:7600").unwrap_err();
        assert!(e.contains("not an IP address and port") && e.contains("127.0.0.1:7600"));
        assert!(parse_metrics_token(" ").unwrap_err().contains("is empty"));
        assert!(
            parse_encryption_key("")
                .unwrap_err()
                .contains("unset HERALD_ENCRYPTION_KEY")
        );
        assert_eq!(parse_metrics_token("t0ken").as_deref(), Ok("t0ken"));
    }

    #[test]
    fn the_public_url_is_a_bare_base() {
        assert_eq!(
            parse_public_url("https://herald.example.com/").as_deref(),
            Ok("https://herald.example.com")
        );
        assert_eq!(
            parse_public_url("https://example.com/herald/").as_deref(),
            Ok("https://example.com/herald")
        );
        let e = parse_public_url("https://user:pass@herald.example.com").unwrap_err();
        assert!(
            e.contains("user name or password") && !e.contains("pass@"),
            "{e}"
        );
        for bad in ["https://h.example.com/?x=1", "https://h.example.com/#top"] {
            assert!(
                parse_public_url(bad)
                    .unwrap_err()
                    .contains("query or fragment")
            );
        }
    }

    #[test]
    fn a_database_password_is_never_shown() {
        assert_eq!(
            redact_password("postgres://herald:s3cret@db:5432/herald"),
            "postgres://herald@db:5432/herald"
        );
        assert_eq!(
            redact_password("postgres://herald@db/herald"),
            "postgres://herald@db/herald"
        );
        assert_eq!(
            redact_password("postgres://herald@db/herald?sslmode=require&password=s3cret"),
            "postgres://herald@db/herald?sslmode=require&password=…"
        );
        assert_eq!(
            redact_password("postgres://herald:a@b@db/herald?PASSWORD=s3cret"),
            "postgres://herald@db/herald?PASSWORD=…"
        );
        assert_eq!(
            redact_password("postgres://herald:s3?cret@db/herald?sslmode=require"),
            "postgres://herald@db/herald?sslmode=require"
        );
        assert_eq!(redact_password("nonsense:s3cret"), "(not a URL)");
        assert_eq!(
            redact_password("host=db password=s3cret dbname=herald"),
            "host=db password=… dbname=herald"
        );
    }

    #[test]
    fn yes_or_no_settings_take_the_usual_spellings_and_say_which() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let parse = |args: &[&str]| Cli::try_parse_from([&["herald"][..], args].concat());
        for (given, want) in [("true", true), ("YES", true), ("1", true), ("off", false)] {
            let cli = parse(&["--migrate", given]).unwrap();
            assert_eq!(cli.settings.server.migrate, want, "{given}");
        }
        let cli = parse(&["--allow-insecure-urls"]).unwrap();
        assert!(cli.settings.security.allow_insecure_urls);
        let err = parse(&["--migrate", "maybe"]).err().unwrap().to_string();
        assert!(err.contains("give true or false"), "{err}");
    }
}
