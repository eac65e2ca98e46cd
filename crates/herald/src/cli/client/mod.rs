//! The client commands (`herald orgs`, `keys`, `webhooks`, `events`, `send`, `deliveries`): they
//! speak to a running server over its HTTP API, print tables for people and JSON with `--json`.
//!
//! - `args.rs`: every command's arguments, as clap reads them.
//! - `api.rs`: requests to the server, and its errors told in the CLI's terms.
//! - `output.rs`: tables and JSON.
//! - one file per command group, which runs its commands (`send.rs`: `herald send`).

use clap::Args;

/// Where the server is and how to authenticate: grouped under their own heading in every
/// command's help, after the command's own options.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server and output")]
pub struct Connection {
    /// The Herald server's base URL.
    #[arg(
        long,
        env = "HERALD_SERVER",
        // clap shows an unset variable of a global option as `HERALD_SERVER=`, as if set empty.
        hide_env_values = true,
        default_value = "http://127.0.0.1:7600",
        global = true,
        value_parser = parse_server
    )]
    pub server: String,
    /// The bearer token (admin token or an organization API key). Left out, HERALD_ADMIN_TOKEN,
    /// then the admin token kept in the data directory (HERALD_DATA_DIR, or ./herald-data),
    /// which is sent only to a server on this machine. Given empty, the command stops rather
    /// than run as the admin.
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

mod api;
mod args;
mod deliveries;
mod events;
mod keys;
mod orgs;
mod output;
mod send;
mod webhooks;

pub use api::{CommandLineRefused, TryLater};
pub use args::{
    DeliveriesCommand, EventsCommand, KeysCommand, OrgsCommand, SendArgs, WebhooksCommand,
};
pub use deliveries::deliveries;
pub use events::events;
pub use keys::keys;
pub use orgs::orgs;
pub use output::print_error_unless_printed;
pub use send::send;
pub use webhooks::webhooks;
