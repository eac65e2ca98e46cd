//! `herald send`: one event from flags, or events from a file or standard input (one object,
//! an array, or JSON Lines), sent in as many requests as the API's limits need, with progress
//! on standard error and, when a request fails midway, what was stored and how to go on.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::Connection;
use super::api::*;
use super::args::SendArgs;
use super::events::read_input;
use super::output::*;

/// The most events one request carries: the API refuses a larger batch.
const EVENTS_PER_REQUEST: usize = crate::service::ingest::MAX_EVENTS_PER_REQUEST;

/// The most bytes of events one request carries: the server's default limit on a body
/// (`HERALD_MAX_BODY_BYTES`, 1 MiB), less room for the array around them. A server set lower
/// answers `413`, and the request is split in two and sent again; so is one whose events would
/// become more deliveries than a request may create (`too_many_deliveries`: many webhooks
/// subscribed). The requests after it carry no more bytes (after a `413`), or no more events
/// (after `too_many_deliveries`), than the parts of it that went ([`Caps`]).
const BYTES_PER_REQUEST: usize = 1024 * 1024 - 1024;

/// How often the progress line is written while many requests go.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What `herald send` was given.
#[derive(Debug)]
enum Input {
    /// One event object (or whatever one JSON value was given), sent as it is.
    One(Value),
    /// Events from one JSON array, held in memory.
    Array(Vec<Value>),
    /// JSON Lines, read twice: each line checked (and the events counted) before any is
    /// sent, then sent a request at a time, so that no more than a request's events are held
    /// in memory however long the input.
    Lines(LineSource),
}

pub fn send(conn: Connection, args: SendArgs) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    // First: a mistyped organization (or no server) is said before a large input is read.
    let org = api.org_id(&args.org)?;
    let input = match &args.event_type {
        Some(t) => {
            // clap makes --type require --data: data the user left out is not made up here. A
            // byte-order mark is passed over, as the server and --file do.
            let text = args.data.as_deref().unwrap_or_default();
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            let data: Value = serde_json::from_str(text).map_err(|e| {
                let example = "e.g. '{\"user\": {\"id\": \"u1\"}}'";
                CommandLineRefused::said(if text.trim_start().starts_with('{') {
                    // An object, with something in it that is not JSON: said as the server
                    // would (half a surrogate pair, a number past a double) rather than as
                    // "not an object".
                    format!("--data {}", herald_core::js_json::unreadable(&e, ""))
                } else {
                    format!("--data must be a JSON object, {example}: {e}")
                })
            })?;
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
            Input::One(event)
        }
        None => read_events(args.file.as_deref().unwrap_or("-"))?,
    };
    let path = api_path(&["v1", "orgs", &org, "events"])?;
    let mut sent = match input {
        Input::One(event) => {
            let answer = api.post(&path, event)?;
            Sent::from_answer(answer)
        }
        Input::Array(events) => {
            let plan = Plan::new(events.len(), events.iter().all(has_id), conn.json);
            send_many(
                &api,
                &path,
                &plan,
                events.into_iter().map(|e| Ok((None, e))),
            )?
        }
        Input::Lines(source) => {
            let plan = source.check(conn.json)?;
            let events = source.events_as_checked(&plan)?;
            send_many(&api, &path, &plan, events)?
        }
    };
    if conn.json {
        print_json(&json!({ "events": sent.rows, "deliveries": sent.deliveries }));
    } else if sent.requests == 1 {
        // An event dropped for reusing another's id is no duplicate to shrug at.
        let mut rows = std::mem::take(&mut sent.rows);
        for row in &mut rows {
            if row.get("mismatch").is_some_and(|m| !m.is_null()) {
                row["duplicate"] = json!("id reused: NOT STORED");
            }
        }
        show(
            &conn,
            &json!({ "data": rows }),
            &["id", "duplicate", "deliveries", "skipped"],
        );
    } else {
        out!("{}", sent.summary());
    }
    // A reused id drops the event: say so even where only the exit status is read.
    if !sent.reused.is_empty() {
        bail!(
            "not stored, an id already used by another event:\n  {}",
            sent.reused.join("\n  ")
        );
    }
    Ok(())
}

/// Reads what `file` (`-`: standard input) holds: one JSON value (an event, or an array of
/// them), or else JSON Lines, one event per line, blank lines passed over. Only the first two
/// lines are read to tell which, unless the first is not an event on its own: a regular file
/// of JSON Lines is not held in memory.
fn read_events(file: &str) -> anyhow::Result<Input> {
    let regular = file != "-" && std::fs::metadata(file).is_ok_and(|m| m.is_file());
    if regular {
        classify(LineSource::File(file.to_owned()))
    } else {
        // Standard input, a pipe (`--file <(zcat …)`), a FIFO: what can be read only once is
        // kept, as text.
        let (text, source) = read_input(file)?;
        classify(LineSource::Text { text, source })
    }
}

/// Tells what `source` holds from its first two lines that are not blank.
fn classify(source: LineSource) -> anyhow::Result<Input> {
    let mut lines = source
        .lines()?
        .filter(|l| l.as_ref().map_or(true, |(_, line)| !line.trim().is_empty()));
    let first = lines.next().transpose()?;
    let second = lines.next().transpose()?;
    drop(lines);
    if let Some((_, first)) = &first
        && let Ok(event) = serde_json::from_str::<Value>(first)
        && event.is_object()
    {
        return Ok(match second {
            // One line, one event.
            None => {
                fields_once(first).with_context(|| source.name().to_owned())?;
                Input::One(event)
            }
            Some(_) => Input::Lines(source),
        });
    }
    // Not an event on its first line: one JSON value over several lines (a pretty-printed
    // event or an array), or else what is wrong with it, said of the whole.
    let (text, name) = match source {
        LineSource::Text { text, source } => (text, source),
        LineSource::File(file) => {
            let (text, _) = read_input(&file)?;
            (text, file)
        }
    };
    parse_whole(&text, &name)
}

/// One JSON value (an event, or an array of them) in `text`, or what is wrong with it.
fn parse_whole(text: &str, source: &str) -> anyhow::Result<Input> {
    // As the server does, a byte-order mark (some editors write one) is passed over.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let parsed = serde_json::from_str::<Value>(text);
    if parsed.is_ok() {
        fields_once(text).with_context(|| source.to_owned())?;
    }
    match parsed {
        Ok(Value::Array(events)) => Ok(Input::Array(events)),
        Ok(one) => Ok(Input::One(one)),
        Err(whole_error) if text.trim().is_empty() => Err(whole_error).with_context(|| {
            format!("{source} holds no event: give one event, an array of them, or JSON Lines")
        }),
        Err(whole_error) => Err(whole_error).with_context(|| {
            format!(
                "{source} is not JSON: give one event ({{\"type\", \"data\"}}), an array of \
                 them, or one per line (JSON Lines); or use --type and --data"
            )
        }),
    }
}

/// Where JSON Lines come from, to be read once to check them and once to send them.
#[derive(Debug)]
enum LineSource {
    /// A file, opened again for each reading.
    File(String),
    /// Standard input, kept as text; `source` names it in messages.
    Text { text: String, source: String },
}

type Lines<'a> = Box<dyn Iterator<Item = anyhow::Result<(usize, String)>> + 'a>;

impl LineSource {
    fn name(&self) -> &str {
        match self {
            Self::File(file) => file,
            Self::Text { source, .. } => source,
        }
    }

    /// Every line with its number (from 1), a byte-order mark passed over.
    fn lines(&self) -> anyhow::Result<Lines<'_>> {
        let lines: Lines<'_> = match self {
            Self::Text { text, .. } => Box::new(
                text.lines()
                    .enumerate()
                    .map(|(at, line)| Ok((at + 1, line.to_owned()))),
            ),
            Self::File(file) => {
                let opened =
                    std::fs::File::open(file).with_context(|| format!("could not read {file}"))?;
                Box::new(
                    std::io::BufRead::lines(std::io::BufReader::new(opened))
                        .enumerate()
                        .map(move |(at, line)| {
                            line.map(|line| (at + 1, line))
                                .with_context(|| format!("could not read {file}, line {}", at + 1))
                        }),
                )
            }
        };
        Ok(Box::new(lines.map(|line| {
            line.map(|(at, line)| match line.strip_prefix('\u{feff}') {
                Some(rest) if at == 1 => (at, rest.to_owned()),
                _ => (at, line),
            })
        })))
    }

    /// Each event with its line: blank lines passed over, any other line an event or an error
    /// that names it.
    fn events(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(usize, Value)>> + '_> {
        let name = self.name();
        Ok(self.lines()?.filter_map(move |line| {
            let (at, line) = match line {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            if line.trim().is_empty() {
                return None;
            }
            Some(match serde_json::from_str::<Value>(&line) {
                Ok(event) if event.is_object() => match fields_once(&line) {
                    Ok(()) => Ok((at, event)),
                    Err(e) => Err(anyhow::anyhow!("{name}, line {at}: {e}")),
                },
                Ok(_) => Err(anyhow::anyhow!(
                    "{name}, line {at}: not an event (a JSON object); in JSON Lines each line \
                     holds one event"
                )),
                Err(e) => Err(anyhow::anyhow!(
                    "{name}, line {at}: not JSON ({e}); in JSON Lines each line holds one whole \
                     event"
                )),
            })
        }))
    }

    /// The events again, to be sent, as `plan` counted them: a file changed since (a line
    /// more, or one that is no longer an event, or without the id every event had) is an
    /// error where it is met, rather than events the plan's advice does not fit.
    fn events_as_checked<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(Option<usize>, Value)>> + 'a> {
        let name = self.name();
        let changed = move |at: usize, what: &str| {
            anyhow::anyhow!("{name} changed while it was being sent: line {at} {what}")
        };
        let mut seen = 0;
        Ok(self.events()?.map(move |event| {
            let (at, event) = event
                .map_err(|e| anyhow::anyhow!("{name} changed while it was being sent: {e:#}"))?;
            seen += 1;
            if seen > plan.total {
                return Err(changed(
                    at,
                    &format!("is event {seen}, of {} counted before", plan.total),
                ));
            }
            if plan.all_have_ids && !has_id(&event) {
                return Err(changed(at, "has no id, though every event had one"));
            }
            Ok((Some(at), event))
        }))
    }

    /// Reads every line before anything is sent: a line that is not an event is said first,
    /// with nothing stored; and the events are counted, for the progress line and for what to
    /// do should a request fail midway.
    fn check(&self, shown: bool) -> anyhow::Result<Plan> {
        let (mut total, mut all_have_ids) = (0, true);
        for event in self.events()? {
            let (_, event) = event?;
            total += 1;
            all_have_ids &= has_id(&event);
        }
        Ok(Plan::new(total, all_have_ids, shown))
    }
}

fn has_id(event: &Value) -> bool {
    event["id"].is_string()
}

/// Refuses an event (or an event of an array) that gives one of its fields twice, as the
/// server does: JSON leaves open which counts, and a parsed value keeps only the last, which
/// would be sent as if it were all that was given.
fn fields_once(text: &str) -> serde_json::Result<()> {
    serde_json::from_str::<FieldsOnce>(text).map(|_| ())
}

/// What [`fields_once`] reads: the keys of each object at the top (or in the top array), and
/// nothing of their values.
struct FieldsOnce;

impl<'de> serde::Deserialize<'de> for FieldsOnce {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldsOnce)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldsOnce {
    type Value = FieldsOnce;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event or an array of events")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<serde::de::IgnoredAny>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the event gives \"{key}\" twice; give each field once (the server \
                     refuses it: JSON leaves open which one counts)"
                )));
            }
        }
        Ok(FieldsOnce)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<FieldsOnce>()?.is_some() {}
        Ok(FieldsOnce)
    }

    // Anything else is not an event, which the server says.
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(FieldsOnce)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(FieldsOnce)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(FieldsOnce)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(FieldsOnce)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(FieldsOnce)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(FieldsOnce)
    }
}

/// What is known of the events before they are sent.
struct Plan {
    total: usize,
    /// Whether sending them all again is safe: an event without an id is stored again.
    all_have_ids: bool,
    /// Whether the server's answer for each event is kept, to be shown (`--json`, or few
    /// enough for a table).
    keep_rows: bool,
    /// `--json`: what is sent, or why it stopped, is printed as JSON.
    json: bool,
}

impl Plan {
    /// `json`: every answer is to be shown; else only those few enough to go in one
    /// request, which are shown as a table should they.
    fn new(total: usize, all_have_ids: bool, json: bool) -> Self {
        Self {
            total,
            all_have_ids,
            keep_rows: json || total <= EVENTS_PER_REQUEST,
            json,
        }
    }
}

/// What the requests stored, added up.
#[derive(Default)]
struct Sent {
    /// The server's answer for each event, where they are shown.
    rows: Vec<Value>,
    events: usize,
    duplicates: usize,
    deliveries: u64,
    /// `id: why` of each event not stored for reusing another's id.
    reused: Vec<String>,
    requests: usize,
}

impl Sent {
    fn from_answer(answer: Value) -> Self {
        let mut sent = Self::default();
        sent.add(answer, true);
        sent
    }

    fn add(&mut self, answer: Value, keep_rows: bool) {
        self.requests += 1;
        self.deliveries += answer["deliveries"].as_u64().unwrap_or(0);
        let Value::Object(mut answer) = answer else {
            return;
        };
        let Some(Value::Array(rows)) = answer.remove("events") else {
            return;
        };
        for row in rows {
            self.events += 1;
            self.duplicates += usize::from(row["duplicate"] == true);
            if let (Some(id), Some(why)) = (row["id"].as_str(), row["mismatch"].as_str()) {
                self.reused.push(format!("{id}: {why}"));
            }
            if keep_rows {
                self.rows.push(row);
            }
        }
    }

    /// What many requests stored, in one line.
    fn summary(&self) -> String {
        format!(
            "{} events sent in {} requests: {} stored, {} already stored (duplicates); {} \
             deliveries",
            self.events,
            self.requests,
            self.events - self.duplicates,
            self.duplicates,
            self.deliveries
        )
    }
}

/// Sends `events` (each with its line, for JSON Lines) in requests within the API's limits,
/// one after another, so that they are stored in the order given, holding one request's
/// events at a time. Answers what the requests stored.
fn send_many(
    api: &Api,
    path: &str,
    plan: &Plan,
    events: impl Iterator<Item = anyhow::Result<(Option<usize>, Value)>>,
) -> anyhow::Result<Sent> {
    let mut sent = Sent::default();
    let mut last_progress = Instant::now();
    let mut events = events.peekable();
    // The events of the request being made, their lines, and where it starts in the input.
    let mut batch: Vec<Value> = Vec::new();
    let mut lines: Vec<Option<usize>> = Vec::new();
    let mut first = 0;
    let mut caps = Caps::default();
    loop {
        // Only a file that changed since it was checked fails here: what was stored, and
        // where to go on from, are said as for a request that failed.
        take_request(&mut events, caps, &mut batch, &mut lines).map_err(|e| {
            let stored = match first {
                0 => "nothing was sent".to_owned(),
                n => format!(
                    "the {n} events before were stored; send from event {} on",
                    n + 1
                ),
            };
            anyhow::anyhow!("{e:#}; {stored}")
        })?;
        if batch.is_empty() {
            if first < plan.total {
                bail!(
                    "the input changed while it was being sent: {} events were counted, {first} \
                     found and stored",
                    plan.total
                );
            }
            return Ok(sent);
        }
        let request = Request {
            batch: &batch,
            lines: &lines,
            first,
        };
        send_request(api, path, plan, &request, &mut sent, &mut caps)?;
        first += batch.len();
        let all_at_once = sent.requests == 1 && first == plan.total;
        if !all_at_once && (first == plan.total || last_progress.elapsed() >= PROGRESS_EVERY) {
            note!("sent {first} of {} events", plan.total);
            last_progress = Instant::now();
        }
    }
}

/// How much one request carries at most: [`EVENTS_PER_REQUEST`] events and
/// [`BYTES_PER_REQUEST`] bytes of them (their JSON and the commas between), until the server
/// refuses a request and its parts that went say how much it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    events: usize,
    bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            events: EVENTS_PER_REQUEST,
            bytes: BYTES_PER_REQUEST,
        }
    }
}

/// Takes the next request's events (and their lines) from `events`, within `caps`. An event
/// larger than the bytes allowed goes alone: the server says whether it takes it. None when
/// `events` has ended.
fn take_request<I>(
    events: &mut std::iter::Peekable<I>,
    caps: Caps,
    batch: &mut Vec<Value>,
    lines: &mut Vec<Option<usize>>,
) -> anyhow::Result<()>
where
    I: Iterator<Item = anyhow::Result<(Option<usize>, Value)>>,
{
    batch.clear();
    lines.clear();
    let mut bytes = 0;
    while batch.len() < caps.events {
        let Some(next) = events.peek() else { break };
        let size = match next {
            Ok((_, event)) => serde_json::to_string(event).map_or(0, |s| s.len()),
            Err(_) => 0,
        };
        // Each event after the first costs its comma too.
        if !batch.is_empty() && bytes + 1 + size > caps.bytes {
            break;
        }
        let (at, event) = events.next().expect("peeked")?;
        bytes += size + usize::from(!batch.is_empty());
        batch.push(event);
        lines.push(at);
    }
    Ok(())
}

/// One request's events as planned: `batch`, the input's events from `first` on, with their
/// lines.
struct Request<'a> {
    batch: &'a [Value],
    lines: &'a [Option<usize>],
    first: usize,
}

/// Sends one request's events, in two halves again and again while the server finds a part too
/// large (its body, or the deliveries it would create). After such a refusal, `caps` are
/// lowered to the largest part that went, in bytes or in events as the refusal was.
fn send_request(
    api: &Api,
    path: &str,
    plan: &Plan,
    request: &Request,
    sent: &mut Sent,
    caps: &mut Caps,
) -> anyhow::Result<()> {
    let Request {
        batch,
        lines,
        first,
    } = *request;
    let mut pending = VecDeque::new();
    pending.push_back(0..batch.len());
    // What the server refused parts for, and the largest part that went since.
    let (mut refused_body, mut refused_deliveries) = (false, false);
    let mut went = Caps {
        events: 0,
        bytes: 0,
    };
    while let Some(range) = pending.pop_front() {
        let part = Value::Array(batch[range.clone()].to_vec());
        // Measured as `take_request` counts: the events' JSON and the commas, not the brackets.
        let bytes = if refused_body {
            serde_json::to_string(&part).map_or(0, |s| s.len().saturating_sub(2))
        } else {
            0
        };
        match api.post_part(path, part) {
            Ok(answer) => {
                sent.add(answer, plan.keep_rows);
                went.events = went.events.max(range.len());
                went.bytes = went.bytes.max(bytes);
            }
            // The server takes less at once than planned: the same events in two halves.
            Err(e) if range.len() > 1 && too_large(&e).is_some() => {
                match too_large(&e) {
                    Some(TooLarge::Body) => refused_body = true,
                    _ => refused_deliveries = true,
                }
                let middle = range.start + range.len() / 2;
                pending.push_front(middle..range.end);
                pending.push_front(range.start..middle);
            }
            Err(e) => {
                let failed = Failed {
                    range: first + range.start..first + range.end,
                    lines: &lines[range],
                    total: plan.total,
                    all_have_ids: plan.all_have_ids,
                };
                // What the server answered, read before `stopped` tells it in words (which,
                // for events without ids, keeps only the words).
                let answered = plan.json.then(|| {
                    let fault = at_fault(&e, &failed).map(|(event, field)| (event, field.into()));
                    (super::api::error_object(&e).cloned(), fault)
                });
                let e = stopped(e, &failed);
                if let Some((object, fault)) = answered {
                    print_json(&failure_json(object, fault, &e, &failed));
                }
                return Err(e);
            }
        }
    }
    if refused_body {
        caps.bytes = caps.bytes.min(went.bytes.max(1));
    }
    if refused_deliveries {
        caps.events = caps.events.min(went.events.max(1));
    }
    Ok(())
}

/// Why the server refused a request for carrying too much at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TooLarge {
    /// Its body (`413`).
    Body,
    /// The deliveries its events would create (`too_many_deliveries`).
    Deliveries,
}

fn too_large(e: &anyhow::Error) -> Option<TooLarge> {
    let refused = e.downcast_ref::<Refused>()?;
    if refused.status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
        Some(TooLarge::Body)
    } else if refused.code == "too_many_deliveries" {
        Some(TooLarge::Deliveries)
    } else {
        None
    }
}

/// A request of many that failed.
struct Failed<'a> {
    /// Its events, counted in the input from 0.
    range: Range<usize>,
    /// The line of each of its events, for JSON Lines.
    lines: &'a [Option<usize>],
    /// How many events the input holds.
    total: usize,
    all_have_ids: bool,
}

/// Where in the input the server found fault with a failed request: its `field` (`[3].data`)
/// names the request's fourth event, so the event counted in the input from 0, and the rest
/// of the field (`.data`).
fn at_fault<'a>(e: &'a anyhow::Error, failed: &Failed) -> Option<(usize, &'a str)> {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<Refused>())?
        .field
        .as_deref()?
        .strip_prefix('[')?
        .split_once(']')
        .and_then(|(index, field)| Some((index.parse::<usize>().ok()?, field)))
        .filter(|&(index, _)| index < failed.range.len())
        .map(|(index, field)| (failed.range.start + index, field))
}

/// With `--json`, one document for a failed request: the server's error `object` (or the
/// CLI's, saying what [`stopped`] `told`, where the server answered none), and when the input
/// took several requests, its `field` counted in the whole input (`[1041].type`: the event at
/// `fault`) with the line of that event, and how many events were stored before the request,
/// were in it, and were not sent.
fn failure_json(
    object: Option<Value>,
    fault: Option<(usize, String)>,
    told: &anyhow::Error,
    failed: &Failed,
) -> Value {
    let mut object = object
        .unwrap_or_else(|| json!({ "error": { "code": "cli", "message": format!("{told:#}") } }));
    let Failed { range, total, .. } = failed;
    if range.len() == *total {
        return object;
    }
    if let Some((event, field)) = fault {
        object["error"]["field"] = json!(format!("[{event}]{field}"));
        if let Some(line) = failed.lines[event - range.start] {
            object["line"] = json!(line);
        }
    }
    object["stored"] = json!(range.start);
    object["failed"] = json!(range.len());
    object["not_sent"] = json!(total - range.end);
    object
}

/// A request of many that failed, told with what came before it and how to go on: the
/// events before it are stored, the ones after it not sent.
fn stopped(e: anyhow::Error, failed: &Failed) -> anyhow::Error {
    let Failed {
        range,
        lines,
        total,
        all_have_ids,
    } = failed;
    let (range, total) = (range.clone(), *total);
    if range.len() == total {
        return e;
    }
    // A request that got no answer, or a "not now", may have been carried out all the same.
    let maybe = if e.chain().any(|c| c.is::<TryLater>()) {
        " (its events may have been stored all the same)"
    } else {
        ""
    };
    let these = if range.len() == 1 {
        format!("event {} of {total} was", range.end)
    } else {
        format!("events {}–{} of {total} were", range.start + 1, range.end)
    };
    let mut told = format!("{these} sent in one request, which failed{maybe}");
    let around = [
        (range.start > 0).then(|| format!("the {} before them were stored", range.start)),
        (total > range.end).then(|| format!("the {} after them were not sent", total - range.end)),
    ];
    for part in around.into_iter().flatten() {
        told.push_str("; ");
        told.push_str(&part);
    }
    if let Some((event, field)) = at_fault(&e, failed) {
        told.push_str(&format!("; at fault: event {}", event + 1));
        if let Some(line) = lines.get(event - range.start).copied().flatten() {
            told.push_str(&format!(" (line {line})"));
        }
        let field = field.trim_start_matches('.');
        if !field.is_empty() {
            told.push_str(&format!(", its {field}"));
        }
    }
    let resume = match lines.first().copied().flatten() {
        Some(line) => format!("event {} (line {line})", range.start + 1),
        None => format!("event {}", range.start + 1),
    };
    let when = if maybe.is_empty() {
        "once mended"
    } else {
        "once the server takes it"
    };
    told.push_str(&if *all_have_ids {
        format!(
            ". Every event has an id: {when}, send the whole input again (the ones stored come \
             back as duplicates), or from {resume} on"
        )
    } else {
        format!(
            ". Not every event has an id, and one without is stored again if sent again: \
             {when}, send from {resume} on"
        )
    });
    if range.start > 0 && !all_have_ids {
        // Not "try the same again later" (exit 75): a script that does would store the events
        // before this request twice. Exit 1, and the message says where to go on from.
        return anyhow::anyhow!("{told}: {e:#}");
    }
    e.context(told)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that may go through later (exit 75) after others were stored: a script that
    /// sends the same again then stores events without ids twice, so it is told to fix (exit 1)
    /// unless every event has an id.
    #[test]
    fn a_partial_send_is_to_be_sent_again_only_where_ids_make_it_safe() {
        let later = || TryLater::said("503 Service Unavailable: try again".into());
        let try_later = |e: &anyhow::Error| e.chain().any(|c| c.is::<TryLater>());
        let failed = |range: Range<usize>, all_have_ids| Failed {
            range,
            lines: &[None],
            total: 2,
            all_have_ids,
        };
        assert!(try_later(&stopped(later(), &failed(1..2, true))));
        assert!(try_later(&stopped(later(), &failed(0..1, false))));
        let told = stopped(later(), &failed(1..2, false));
        assert!(!try_later(&told));
        assert!(
            format!("{told:#}").starts_with(
                "event 2 of 2 was sent in one request, which failed (its events may have been \
                 stored all the same); the 1 before them were stored"
            ) && format!("{told:#}").contains(
                "once the server takes it, send from event 2 on: 503 Service Unavailable"
            ),
            "{told:#}"
        );
    }

    #[test]
    fn requests_keep_within_the_apis_limits() {
        // Events of `size` bytes once serialized: `{"d":"xx…"}` is 8 bytes and the padding.
        let event = |size: usize| json!({ "d": "x".repeat(size - 8) });
        let requests = |sizes: Vec<usize>| -> Vec<usize> {
            let mut events = sizes
                .into_iter()
                .map(|size| Ok((None, event(size))))
                .peekable();
            let (mut batch, mut lines, mut taken) = (Vec::new(), Vec::new(), Vec::new());
            loop {
                take_request(&mut events, Caps::default(), &mut batch, &mut lines).unwrap();
                if batch.is_empty() {
                    return taken;
                }
                assert_eq!(lines.len(), batch.len());
                taken.push(batch.len());
            }
        };
        // 2,500 small events: 1,000, 1,000, 500.
        assert_eq!(requests(vec![100; 2_500]), [1_000, 1_000, 500]);
        // 300 events of 5,000 bytes: 209 fit in a request's bytes (with their commas).
        assert_eq!(requests(vec![5_000; 300]), [209, 91]);
        // An event larger than a request goes alone, and the rest around it as before.
        assert_eq!(requests(vec![10, BYTES_PER_REQUEST + 1, 10, 10]), [1, 1, 2]);
        assert!(requests(Vec::new()).is_empty());
    }

    fn text(text: &str) -> anyhow::Result<Input> {
        classify(LineSource::Text {
            text: text.to_owned(),
            source: "f".to_owned(),
        })
    }

    fn lines_of(input: anyhow::Result<Input>) -> anyhow::Result<Vec<(usize, Value)>> {
        match input? {
            Input::Lines(source) => {
                source.check(false)?;
                source.events()?.collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn input_is_one_event_an_array_or_json_lines() {
        let one = text("\u{feff}{\"type\": \"a\",\n \"data\": {}}").unwrap();
        assert!(matches!(one, Input::One(v) if v["type"] == "a"));
        let one_line = text("\n{\"type\": \"a\"}\n\n").unwrap();
        assert!(matches!(one_line, Input::One(v) if v["type"] == "a"));
        let array = text("[{\"type\": \"a\"},\n {\"type\": \"b\"}]").unwrap();
        assert!(matches!(array, Input::Array(events) if events.len() == 2));
        let lines = lines_of(text("\u{feff}{\"type\": \"a\"}\n\n{\"type\": \"b\"}\n")).unwrap();
        let read: Vec<(usize, &Value)> = lines.iter().map(|(at, e)| (*at, &e["type"])).collect();
        assert_eq!(read, [(1, &json!("a")), (3, &json!("b"))]);
        let bad_line = lines_of(text("{\"type\": \"a\"}\n{\"type\": \n")).unwrap_err();
        assert!(
            format!("{bad_line:#}").starts_with("f, line 2: not JSON"),
            "{bad_line:#}"
        );
        let array_line = lines_of(text("{\"type\": \"a\"}\n[{\"type\": \"b\"}]\n")).unwrap_err();
        assert!(
            format!("{array_line:#}").starts_with("f, line 2: not an event (a JSON object)"),
            "{array_line:#}"
        );
        let not_json = text("type=a").unwrap_err();
        assert!(
            format!("{not_json:#}").starts_with("f is not JSON: give one event"),
            "{not_json:#}"
        );
        let nothing = text(" \n\n").unwrap_err();
        assert!(
            format!("{nothing:#}").starts_with("f holds no event"),
            "{nothing:#}"
        );
    }

    /// An event that gives a field twice is refused in every form of input, as the server
    /// refuses it (a parsed value kept the last and sent it); a key twice within `data` is
    /// the server's to read, as JavaScript would.
    #[test]
    fn an_event_giving_a_field_twice_is_refused() {
        let twice = "gives \"id\" twice; give each field once";
        let inputs = [
            "{\"type\": \"a\", \"id\": \"1\", \"id\": \"2\"}",
            "{\"type\": \"a\",\n \"id\": \"1\", \"id\": \"2\"}",
            "[{\"type\": \"a\"}, {\"type\": \"a\", \"id\": \"1\", \"id\": \"2\"}]",
        ];
        for input in inputs {
            let told = format!("{:#}", text(input).unwrap_err());
            assert!(told.starts_with("f: ") && told.contains(twice), "{told}");
        }
        let told = lines_of(text(
            "{\"type\": \"a\"}\n{\"type\": \"a\", \"id\": \"1\", \"id\": \"2\"}\n",
        ))
        .unwrap_err();
        assert!(
            format!("{told:#}").starts_with("f, line 2: the event gives \"id\" twice"),
            "{told:#}"
        );
        let data_twice = "{\"type\": \"a\", \"data\": {\"k\": 1, \"k\": 2}}";
        assert!(matches!(text(data_twice).unwrap(), Input::One(v) if v["data"]["k"] == 2));
    }

    /// A file of JSON Lines is read a line at a time, twice (checked, then sent), and only the
    /// lines that are events count: the plan counts them and says whether all have ids.
    #[test]
    fn a_file_of_json_lines_is_checked_whole_then_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        std::fs::write(
            &file,
            "{\"type\": \"a\", \"id\": \"1\"}\n\n{\"type\": \"b\"}\n{\"type\": \"c\", \"id\": \"3\"}",
        )
        .unwrap();
        let Input::Lines(source) = read_events(file.to_str().unwrap()).unwrap() else {
            panic!("not JSON Lines");
        };
        let plan = source.check(false).unwrap();
        assert_eq!((plan.total, plan.all_have_ids), (3, false));
        let lines: Vec<usize> = source.events().unwrap().map(|l| l.unwrap().0).collect();
        assert_eq!(lines, [1, 3, 4]);
    }

    /// The file is read again to be sent: a line added since, or an id gone where every
    /// event had one, is met as an error naming the line, not sent under the first reading's
    /// advice (resending the whole of it would store an event without an id twice).
    #[test]
    fn a_file_changed_between_the_readings_is_said_where_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        write("{\"type\": \"a\", \"id\": \"1\"}\n{\"type\": \"b\", \"id\": \"2\"}\n");
        let Input::Lines(source) = read_events(file.to_str().unwrap()).unwrap() else {
            panic!("not JSON Lines");
        };
        let plan = source.check(false).unwrap();
        assert!(plan.all_have_ids);
        let sent = |source: &LineSource| -> Result<usize, String> {
            let events = source.events_as_checked(&plan).unwrap();
            events
                .map(|e| e.map(|_| ()))
                .collect::<anyhow::Result<Vec<()>>>()
                .map(|all| all.len())
                .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(sent(&source), Ok(2));
        write("{\"type\": \"a\", \"id\": \"1\"}\n{\"type\": \"b\"}\n");
        let told = sent(&source).unwrap_err();
        assert!(
            told.ends_with("line 2 has no id, though every event had one"),
            "{told}"
        );
        write(
            "{\"type\": \"a\", \"id\": \"1\"}\n{\"type\": \"b\", \"id\": \"2\"}\n{\"type\": \"c\", \"id\": \"3\"}\n",
        );
        let told = sent(&source).unwrap_err();
        assert!(
            told.ends_with("line 3 is event 3, of 2 counted before"),
            "{told}"
        );
        write("{\"type\": \"a\", \"id\": \"1\"}\n{oops\n");
        let told = sent(&source).unwrap_err();
        assert!(
            told.contains("changed while it was being sent") && told.contains("line 2: not JSON"),
            "{told}"
        );
    }
}
