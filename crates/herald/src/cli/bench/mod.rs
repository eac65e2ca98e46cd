//! `herald bench`: a reproducible benchmark on loopback. It starts what it needs (a Herald server
//! on a temporary data directory unless pointed at one, a fast receiver, the producers), runs
//! named scenarios, shows progress on stderr and prints a table on stdout (and JSON with
//! `--json`). It exits with an error if any acknowledged event failed to arrive, so the same
//! command, at a tiny size, is the test that keeps it working.
//!
//! - `server.rs`: the Herald under test (in-process, a child process, or `--server`).
//! - `api.rs`: setup through the public API.
//! - `receiver.rs`, `load.rs`, `measure.rs`: the receiving end, the producers, what they count.
//! - `wire.rs`: the little HTTP/1.1 the receiver and the producers speak, cheaper than a framework.
//! - `scenarios.rs`, `backlog.rs`, `restart.rs`: the scenarios; `report.rs`, `progress.rs`: output.
//! - `relay.rs`: the same load through a bare relay instead of Herald, to compare machines.
//! - `cpu.rs`: how busy the machine was during each run, and what the hypervisor took.
//! - `disk.rs`: how long the disk takes to make a write durable, the floor under `latency`.

mod api;
mod backlog;
mod cpu;
mod disk;
mod load;
mod measure;
mod progress;
mod receiver;
mod relay;
mod repeat;
pub(crate) mod report;
mod restart;
mod scenarios;
mod server;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use rand::RngCore;

use measure::Clock;
use report::Outcome;
use server::{InProcess, Server, Spawned};

/// `herald bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenarios to run, comma-separated, or `all`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,
    /// Events per scenario for burst, batch, fanout, slow-endpoint, failing-endpoint, restart and
    /// relay (default: 50,000, 200,000, 10,000, 10,000, 10,000, 20,000 and 50,000).
    #[arg(long, value_parser = count::<1, 100_000_000>)]
    pub events: Option<u64>,
    /// Producers, each with one request in flight (so at most this many connections).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i64).range(1..=10_000).map(|n| n as usize))]
    pub connections: usize,
    /// Events per request in `batch` (at most 1,000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000).map(|n| n as usize))]
    pub batch_size: usize,
    /// The most requests in flight at once to one webhook, for the servers the bench starts
    /// (Herald's HERALD_ENDPOINT_CONCURRENCY; its default is 64, each webhook starting at 16).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub endpoint_concurrency: u32,
    /// Events per second in `latency`.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Seconds `latency` runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3_600).map(u64::from))]
    pub duration: u64,
    /// Deliveries to pile up in `backlog`.
    #[arg(long, default_value_t = 1_000_000, value_parser = count::<1, 100_000_000>)]
    pub backlog: u64,
    /// Seconds `backlog` watches the server's memory after the drain (the server gives memory
    /// back every 60 s); 0 to skip.
    #[arg(long, default_value_t = 65, value_parser = clap::value_parser!(u32).range(0..=3_600).map(u64::from))]
    pub after_drain_secs: u64,
    /// Bytes of padding added to every event's data (each is about 110 bytes without), to see
    /// how Herald does with events the size of yours. Requests carry fewer events if needed to
    /// stay under Herald's default body limit of 1 MiB.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=500_000))]
    pub event_bytes: u32,
    /// Event ids in no particular order, as UUIDs are, instead of `e1`, `e2`, … in order. Ids
    /// that land all over the storage's index cost each commit more pages.
    #[arg(long)]
    pub random_ids: bool,
    /// Also write the results, with the settings, as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run against this Herald instead of starting one (it must allow deliveries to
    /// 127.0.0.0/8). `restart` is skipped, memory is not measured, and `relay` still runs here.
    /// Each scenario's organization is deleted when it ends (one left by a failure or Ctrl-C
    /// stays).
    #[arg(long, requires = "admin_token")]
    pub server: Option<String>,
    /// With --server, leave each scenario's organization on the server instead of deleting it:
    /// to look at its history afterwards, or to leave the deletion out of what the server is
    /// measured doing (scripts/bench-instructions). Its webhooks keep retrying what failed.
    #[arg(long, requires = "server")]
    pub keep_orgs: bool,
    /// The admin token of the server given with --server.
    #[arg(long, env = "HERALD_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where to create the temporary data directories (default: the system's temp directory).
    /// Put it on the disk you mean to measure: every 202 waits for an fsync there.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Threads of the receiver's own runtime; 0 runs it on the load generator's runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(0..=64).map(|n| n as usize))]
    pub receiver_threads: usize,
    /// Run each scenario this many times and report the median run, since figures on a small
    /// shared machine vary by ±10–15% from run to run (backlog and restart run once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=100).map(|n| n as usize))]
    pub repeat: usize,
}

/// A named scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below.
    All,
    /// Events one per request, as fast as the connections allow.
    Burst,
    /// Events in batches (`--batch-size`) per request.
    Batch,
    /// A steady rate (`--rate`) for `--duration` seconds: latency quantiles.
    Latency,
    /// Every event to ten webhooks.
    Fanout,
    /// Nine healthy webhooks beside one answering after its timeout, against the nine alone.
    SlowEndpoint,
    /// Nine healthy webhooks beside one answering 500, against the nine alone.
    FailingEndpoint,
    /// Deliveries piled up (`--backlog`) for an endpoint that is down, then drained.
    Backlog,
    /// A SIGKILL halfway through a burst, then a restart: nothing may be lost.
    Restart,
    /// Not Herald: `burst`'s load through a bare relay with no storage, to compare machines.
    Relay,
}

const EVERY: [Scenario; 9] = [
    Scenario::Burst,
    Scenario::Batch,
    Scenario::Latency,
    Scenario::Fanout,
    Scenario::SlowEndpoint,
    Scenario::FailingEndpoint,
    Scenario::Backlog,
    Scenario::Restart,
    Scenario::Relay,
];

/// What every scenario shares.
struct Ctx {
    args: BenchArgs,
    clock: Clock,
    /// For setup calls.
    http: reqwest::Client,
    /// For the producers: one pool, as many connections as producers.
    load_client: load::LoadClient,
    /// The admin token of the servers the bench starts.
    token: String,
    /// Where data directories go.
    parent: PathBuf,
    /// Distinguishes this run's organizations on a shared server.
    run_id: String,
    /// Nine healthy webhooks alone, measured once per round for the comparisons.
    baseline: Vec<Outcome>,
    /// Which run of `--repeat` this is.
    round: usize,
}

impl Ctx {
    fn events(&self, default: u64) -> u64 {
        self.args.events.unwrap_or(default)
    }

    /// What the producers' events look like (`--event-bytes`, `--random-ids`).
    fn event_shape(&self) -> load::EventShape {
        load::EventShape {
            padding: self.args.event_bytes as usize,
            random_ids: self.args.random_ids,
        }
    }

    async fn server(&self) -> anyhow::Result<Server> {
        match (&self.args.server, &self.args.admin_token) {
            (Some(base), Some(token)) => Ok(Server::External {
                base: base.trim_end_matches('/').to_owned(),
                token: token.clone(),
            }),
            _ => Ok(Server::InProcess(
                InProcess::start(&self.parent, &self.token, self.args.endpoint_concurrency).await?,
            )),
        }
    }

    /// Like `server`, but a Herald of our own runs as a `herald serve` child process, so that
    /// the memory measured is the server's alone, without the bench's producers and receiver.
    async fn server_process(&self) -> anyhow::Result<Server> {
        if self.args.server.is_some() {
            return self.server().await;
        }
        Ok(Server::Spawned(
            Spawned::start(&self.parent, &self.token, self.args.endpoint_concurrency).await?,
        ))
    }
}

/// Runs `herald bench`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    check(&args)?;
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-load")
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let json = args.json.clone();
    // Said under the table, so that a copied table carries how its events looked.
    let shape = match (args.random_ids, args.event_bytes) {
        (false, 0) => None,
        (random, bytes) => Some(format!(
            "every scenario's events: {}{}",
            if random {
                "ids in random order (--random-ids)"
            } else {
                "ids in order"
            },
            if bytes > 0 {
                format!(
                    ", data padded by {} bytes (--event-bytes)",
                    report::thousands(u64::from(bytes))
                )
            } else {
                String::new()
            }
        )),
    };
    let settings = serde_json::json!({
        "connections": args.connections,
        "batch_size": args.batch_size,
        "event_bytes": args.event_bytes,
        "random_ids": args.random_ids,
        "rate": args.rate,
        "duration_s": args.duration,
        "backlog": args.backlog,
        // With --server memory is not measured, so nothing is waited for.
        "after_drain_s": if args.server.is_some() { 0 } else { args.after_drain_secs },
        "events": args.events,
        "receiver_threads": args.receiver_threads,
        // Not this flag's value with --server: that server has its own.
        "endpoint_concurrency": args.server.is_none().then_some(args.endpoint_concurrency),
        "repeat": args.repeat,
        "server": if args.server.is_some() { "external" } else { "in-process" },
    });
    let external = args.server.is_some();
    let mut outcomes = Vec::new();
    // Interrupted, the run is dropped: its servers' data directories are removed and a `herald
    // serve` it started is killed, then what finished is reported.
    let stopped_by = runtime.block_on(async {
        tokio::select! {
            done = run(args, &mut outcomes) => done.map(|()| None),
            signal = interrupted() => Ok(Some(signal)),
        }
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    finish(&mut outcomes, external);
    if let Some(signal) = stopped_by {
        note!(
            "\nstopped by {signal}: the servers this run started are stopped and their temporary data removed{}",
            if outcomes.is_empty() {
                ""
            } else {
                "; the scenarios that finished are below"
            }
        );
        if outcomes.is_empty() {
            std::process::exit(130);
        }
    }
    out!();
    match report::print_table(&outcomes, &mut std::io::stdout().lock()) {
        // A reader that went away (`| head`) does not stop the JSON from being written.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if let Some(shape) = shape {
        out!("\n{shape}");
    }
    if let Some(path) = json {
        report::write_json(&path, settings, &outcomes)?;
    }
    let incomplete: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.complete)
        .map(|o| o.scenario.as_str())
        .collect();
    if stopped_by.is_some() {
        std::process::exit(130);
    }
    if !incomplete.is_empty() {
        bail!(
            "incomplete: {}; see their notes above (events the server never acknowledged, or MISSING: acknowledged but not delivered){}",
            incomplete.join(", "),
            if external {
                ""
            } else {
                " (run with HERALD_LOG=warn to see the server's log)"
            }
        );
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM, naming which.
async fn interrupted() -> &'static str {
    match super::ctrl_c_or_sigterm().await {
        super::Signal::CtrlC => "Ctrl-C",
        super::Signal::Term => "SIGTERM",
    }
}

/// A count as people write it: `50000`, `50,000` or `50_000` (the help writes its defaults
/// with commas), between `MIN` and `MAX`.
fn count<const MIN: u64, const MAX: u64>(given: &str) -> Result<u64, String> {
    let digits: String = given.chars().filter(|c| !matches!(c, ',' | '_')).collect();
    // Groups of three after the first (1 to 3 digits), as thousands are written.
    let groups: Vec<&str> = given.split([',', '_']).collect();
    let grouped_well = groups.len() == 1
        || ((1..=3).contains(&groups[0].len()) && groups[1..].iter().all(|g| g.len() == 3));
    let n = match digits.parse::<u64>() {
        Ok(n) if grouped_well && digits.chars().all(|c| c.is_ascii_digit()) => n,
        _ => {
            return Err(format!(
                "{given:?} is not a whole number (e.g. 50000 or 50,000)"
            ));
        }
    };
    if (MIN..=MAX).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between {MIN} and {MAX}"))
    }
}

/// What clap's ranges do not say; checked before anything runs, so a mistake does not surface
/// after minutes of measuring.
fn check(args: &BenchArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&args.batch_size) {
        bail!("--batch-size must be between 1 and 1,000 (Herald's limit per request)");
    }
    if let Some(server) = &args.server {
        let parsed = url::Url::parse(server).ok();
        if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
            bail!(
                "--server {server} is not an http:// or https:// URL; e.g. http://127.0.0.1:7600"
            );
        }
    }
    if let Some(path) = &args.json {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "--json {}: {} is not a directory; create it first",
                path.display(),
                dir.display()
            );
        }
    }
    if let Some(dir) = &args.data_dir
        && !dir.is_dir()
    {
        bail!(
            "--data-dir {} is not a directory; create it first",
            dir.display()
        );
    }
    Ok(())
}

/// The in-process server logs through this process: errors only, unless HERALD_LOG says more.
fn init_logging() {
    let filter = std::env::var("HERALD_LOG").unwrap_or_else(|_| "error".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the scenarios asked for, adding each one's outcome to `outcomes` as it finishes.
async fn run(args: BenchArgs, outcomes: &mut Vec<Outcome>) -> anyhow::Result<()> {
    herald_dispatch::client::install_tls_provider();
    let client = |pool: usize| {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool)
            .timeout(Duration::from_secs(60))
            .build()
            .context("could not build the HTTP client")
    };
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random);
    let mut ctx = Ctx {
        http: client(4)?,
        load_client: load::load_client()?,
        clock: Clock::start(),
        token: format!("bench-{}", hex::encode(random)),
        parent: args.data_dir.clone().unwrap_or_else(server::default_parent),
        run_id: hex::encode(&random[..4]),
        baseline: Vec::new(),
        round: 0,
        args,
    };
    let wanted: Vec<Scenario> = EVERY
        .into_iter()
        .filter(|s| ctx.args.scenario.contains(s) || ctx.args.scenario.contains(&Scenario::All))
        .collect();
    for scenario in wanted {
        let name = scenario_name(scenario);
        let rounds = match scenario {
            Scenario::Backlog | Scenario::Restart => 1,
            _ => ctx.args.repeat,
        };
        let disk = match scenario {
            Scenario::Latency => probe_disk(&ctx).await,
            _ => None,
        };
        let mut runs = Vec::with_capacity(rounds);
        for round in 0..rounds {
            ctx.round = round;
            note!("[{name}] starting (run {} of {rounds})", round + 1);
            let cpu_before = cpu::CpuTimes::now();
            let mut outcome = match scenario {
                Scenario::Burst => scenarios::burst(&mut ctx).await,
                Scenario::Batch => scenarios::batch(&mut ctx).await,
                Scenario::Latency => scenarios::latency(&mut ctx).await,
                Scenario::Fanout => scenarios::fanout(&mut ctx).await,
                Scenario::SlowEndpoint => scenarios::slow_endpoint(&mut ctx).await,
                Scenario::FailingEndpoint => scenarios::failing_endpoint(&mut ctx).await,
                Scenario::Backlog => backlog::backlog(&mut ctx).await,
                Scenario::Restart => restart::restart(&mut ctx).await,
                Scenario::Relay => relay::relay_scenario(&mut ctx).await,
                Scenario::All => break,
            }
            .with_context(|| format!("the {name} scenario failed"))?;
            note_cpu(&mut outcome, cpu_before);
            runs.push(outcome);
        }
        if !runs.is_empty() {
            let mut outcome = repeat::combine(runs);
            if let Some(disk) = disk {
                note_disk(&mut outcome, disk);
            }
            outcomes.push(outcome);
        }
    }
    Ok(())
}

/// How long the disk under the servers' data takes to make a write durable, at `latency`'s
/// rate; `None` with `--server` (its disk is another's) or if it cannot be measured.
async fn probe_disk(ctx: &Ctx) -> Option<disk::Durability> {
    if ctx.args.server.is_some() {
        return None;
    }
    let (dir, rate) = (ctx.parent.clone(), ctx.args.rate);
    match tokio::task::spawn_blocking(move || disk::probe(&dir, rate)).await {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => {
            note!("[latency] could not time the disk's fsync: {e}");
            None
        }
        Err(_) => None,
    }
}

fn note_disk(outcome: &mut Outcome, disk: disk::Durability) {
    outcome.figure("disk_fsync_p50_ms", scenarios::round3(disk.p50_ms));
    outcome.figure("disk_fsync_p99_ms", scenarios::round3(disk.p99_ms));
    outcome.note(format!(
        "this disk made a 16 KiB write durable (`fsync`) in {:.2} ms at the median and {:.2} ms \
         at p99, at {} writes a second: each `202` waits for one, so the p50 cannot be lower",
        disk.p50_ms, disk.p99_ms, disk.per_s
    ));
}

/// Puts the outcomes in the scenarios' order and relates `burst` to `relay`.
fn finish(outcomes: &mut [Outcome], external_server: bool) {
    outcomes.sort_by_key(|o| EVERY.iter().position(|s| scenario_name(*s) == o.scenario));
    relate_to_relay(outcomes, external_server);
}

/// Adds how busy the machine was during the run, and what the hypervisor took, to its figures.
fn note_cpu(outcome: &mut Outcome, before: Option<cpu::CpuTimes>) {
    let Some(share) = before
        .zip(cpu::CpuTimes::now())
        .and_then(|(b, a)| a.since(&b))
    else {
        return;
    };
    outcome.figure("cpu_busy", scenarios::round3(share.busy));
    outcome.figure("cpu_steal", scenarios::round3(share.steal));
    if let Some(warning) = share.warning() {
        outcome.note(warning);
    }
}

/// With `relay` in the same run, says what share of the machine's bare relay `burst` reached:
/// the figure to compare between machines. With `--repeat`, the runs compared are the ones each
/// scenario reports (its median). Not with `--server`, where `burst` measured another machine,
/// nor if either run lost events.
fn relate_to_relay(outcomes: &mut [Outcome], external_server: bool) {
    if external_server {
        return;
    }
    let rate = |name: &str, outcomes: &[Outcome]| {
        outcomes
            .iter()
            .find(|o| o.scenario == name && o.complete)
            .and_then(|o| o.end_to_end_per_s)
    };
    let (Some(relay), Some(burst)) = (rate("relay", outcomes), rate("burst", outcomes)) else {
        return;
    };
    if let Some(o) = outcomes.iter_mut().find(|o| o.scenario == "burst") {
        let share = burst / relay;
        o.figure("share_of_relay", scenarios::round3(share));
        o.note(format!(
            "{:.0}% of what a bare relay with no storage moves on this machine ({}/s, `relay`)",
            share * 100.0,
            report::thousands(relay.round() as u64)
        ));
    }
}

fn scenario_name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_may_be_written_with_separators() {
        assert_eq!(count::<1, 100>("50"), Ok(50));
        assert_eq!(count::<1, 100_000>("50,000"), Ok(50_000));
        assert_eq!(count::<1, 100_000>("50_000"), Ok(50_000));
        assert!(
            count::<1, 100>("0")
                .unwrap_err()
                .contains("between 1 and 100")
        );
        assert_eq!(count::<1, 10_000_000>("1,000,000"), Ok(1_000_000));
        for bad in [
            "", ",", "5,", ",5", "-5", "5.0", "five", "+5", "5,0", "5,,000", "5000,000",
        ] {
            assert!(count::<1, 100>(bad).is_err(), "{bad:?}");
        }
    }
}
