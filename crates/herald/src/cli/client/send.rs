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
/// answers `413`, and the request is split in two and sent again.
const BYTES_PER_REQUEST: usize = 1024 * 1024 - 1024;

/// How often the progress line is written while many requests go.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What `herald send` was given.
#[derive(Debug)]
enum Input {
    /// One event object (or whatever one JSON value was given), sent as it is.
    One(Value),
    /// Events from an array, or from JSON Lines with the line each is on.
    Many {
        events: Vec<Value>,
        lines: Option<Vec<usize>>,
    },
}

pub fn send(conn: Connection, args: SendArgs) -> anyhow::Result<()> {
    let api = Api::new(conn.clone())?;
    // First: a mistyped organization (or no server) is said before a large input is read.
    let org = api.org_id(&args.org)?;
    let input = match &args.event_type {
        Some(t) => {
            // clap makes --type require --data: data the user left out is not made up here.
            let data: Value = serde_json::from_str(args.data.as_deref().unwrap_or_default())
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
            Input::One(event)
        }
        None => {
            let (text, source) = read_input(args.file.as_deref().unwrap_or("-"))?;
            parse_input(&text, &source)?
        }
    };
    let path = api_path(&["v1", "orgs", &org, "events"])?;
    let (answer, requests) = match input {
        Input::One(event) => (api.post(&path, event)?, 1),
        Input::Many { events, lines } => send_many(&api, &path, &events, lines.as_deref())?,
    };
    if conn.json {
        print_json(&answer);
    } else if requests == 1 {
        // An event dropped for reusing another's id is no duplicate to shrug at.
        let mut rows = answer["events"].clone();
        for row in rows.as_array_mut().into_iter().flatten() {
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
        out!("{}", summary(&answer, requests));
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

/// Reads one JSON value (an event, or an array of them), or else JSON Lines: one event per
/// line, blank lines passed over.
fn parse_input(text: &str, source: &str) -> anyhow::Result<Input> {
    // As the server does, a byte-order mark (some editors write one) is passed over.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let whole_error = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(events)) => {
            return Ok(Input::Many {
                events,
                lines: None,
            });
        }
        Ok(one) => return Ok(Input::One(one)),
        Err(e) => e,
    };
    let mut events = Vec::new();
    let mut lines = Vec::new();
    for (at, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(event) if event.is_object() => {
                events.push(event);
                lines.push(at + 1);
            }
            // Not JSON Lines either: the whole text's fault is the one to tell.
            _ if events.is_empty() => {
                return Err(whole_error).with_context(|| {
                    format!(
                        "{source} is not JSON: give one event ({{\"type\", \"data\"}}), an \
                         array of them, or one per line (JSON Lines); or use --type and --data"
                    )
                });
            }
            Ok(_) => bail!(
                "{source}, line {}: not an event (a JSON object); in JSON Lines each line holds \
                 one event",
                at + 1
            ),
            Err(e) => bail!(
                "{source}, line {}: not JSON ({e}); in JSON Lines each line holds one whole event",
                at + 1
            ),
        }
    }
    if events.is_empty() {
        return Err(whole_error).with_context(|| {
            format!("{source} holds no event: give one event, an array of them, or JSON Lines")
        });
    }
    Ok(Input::Many {
        events,
        lines: Some(lines),
    })
}

/// Sends `events` in requests within the API's limits, one after another (so they are stored
/// in the order given). Answers what the server would answer to them as one batch, and how
/// many requests it took.
fn send_many(
    api: &Api,
    path: &str,
    events: &[Value],
    lines: Option<&[usize]>,
) -> anyhow::Result<(Value, usize)> {
    let sizes: Vec<usize> = events
        .iter()
        .map(|e| serde_json::to_string(e).map_or(0, |s| s.len()))
        .collect();
    let mut pending = requests(&sizes);
    let mut stored = Vec::with_capacity(events.len());
    let mut deliveries = 0;
    let mut requests_sent = 0;
    let mut last_progress = Instant::now();
    while let Some(range) = pending.pop_front() {
        let body = Value::Array(events[range.clone()].to_vec());
        match api.post(path, body) {
            Ok(answer) => {
                stored.extend(answer["events"].as_array().cloned().unwrap_or_default());
                deliveries += answer["deliveries"].as_u64().unwrap_or(0);
                requests_sent += 1;
            }
            // The server takes smaller bodies than the default: the same events in two halves.
            Err(e) if range.len() > 1 && is_too_large(&e) => {
                let middle = range.start + range.len() / 2;
                pending.push_front(middle..range.end);
                pending.push_front(range.start..middle);
                continue;
            }
            // Told with what came before and after when it was one of several, as planned or
            // as a `413` split it.
            Err(e) => {
                let several = range.len() < events.len();
                return Err(stopped(e, range, events, lines, several));
            }
        }
        if requests_sent + pending.len() > 1
            && (pending.is_empty() || last_progress.elapsed() >= PROGRESS_EVERY)
        {
            note!("sent {} of {} events", range.end, events.len());
            last_progress = Instant::now();
        }
    }
    Ok((
        json!({ "events": stored, "deliveries": deliveries }),
        requests_sent,
    ))
}

/// Splits events of these serialized sizes into requests of at most [`EVENTS_PER_REQUEST`]
/// events and [`BYTES_PER_REQUEST`] bytes. An event larger than that goes alone: the server
/// says whether it takes it.
fn requests(sizes: &[usize]) -> VecDeque<Range<usize>> {
    let mut out = VecDeque::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        // Each event after the first costs its comma too.
        if i - start == EVENTS_PER_REQUEST || (i > start && bytes + 1 + size > BYTES_PER_REQUEST) {
            out.push_back(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size + usize::from(i > start);
    }
    if start < sizes.len() {
        out.push_back(start..sizes.len());
    }
    out
}

fn is_too_large(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>()
        .is_some_and(|r| r.status == reqwest::StatusCode::PAYLOAD_TOO_LARGE)
}

/// A request of many that failed, told with what came before it and how to go on: the
/// events before it are stored, the ones after it not sent.
fn stopped(
    e: anyhow::Error,
    range: Range<usize>,
    events: &[Value],
    lines: Option<&[usize]>,
    several: bool,
) -> anyhow::Error {
    if !several {
        return e;
    }
    let total = events.len();
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
    // `[3].data/user/id`: the request's fourth event, named as the input counts it.
    let at_fault = e
        .downcast_ref::<Refused>()
        .and_then(|r| r.field.as_deref()?.strip_prefix('[')?.split_once(']'))
        .and_then(|(index, field)| Some((range.start + index.parse::<usize>().ok()?, field)))
        .filter(|&(index, _)| index < range.end);
    if let Some((index, field)) = at_fault {
        told.push_str(&format!("; at fault: event {}", index + 1));
        if let Some(line) = lines.and_then(|l| l.get(index)) {
            told.push_str(&format!(" (line {line})"));
        }
        let field = field.trim_start_matches('.');
        if !field.is_empty() {
            told.push_str(&format!(", its {field}"));
        }
    }
    let all_have_ids = events.iter().all(|e| e["id"].is_string());
    let resume = match lines.and_then(|l| l.get(range.start)) {
        Some(line) => format!("event {} (line {line})", range.start + 1),
        None => format!("event {}", range.start + 1),
    };
    let when = if maybe.is_empty() {
        "once mended"
    } else {
        "once the server takes it"
    };
    told.push_str(&if all_have_ids {
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

/// What many requests stored, in one line.
fn summary(answer: &Value, requests: usize) -> String {
    let events = answer["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let duplicates = events.iter().filter(|e| e["duplicate"] == true).count();
    format!(
        "{} events sent in {requests} requests: {} stored, {duplicates} already stored \
         (duplicates); {} deliveries",
        events.len(),
        events.len() - duplicates,
        answer["deliveries"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_within_the_apis_limits() {
        // 2,500 small events: 1,000, 1,000, 500.
        assert_eq!(
            requests(&vec![100; 2_500]),
            VecDeque::from([0..1_000, 1_000..2_000, 2_000..2_500])
        );
        // 300 events of 5,000 bytes: 209 fit in a request's bytes (with their commas).
        let ranges = requests(&vec![5_000; 300]);
        assert_eq!(ranges, VecDeque::from([0..209, 209..300]));
        // An event larger than a request goes alone, and the rest around it as before.
        assert_eq!(
            requests(&[10, BYTES_PER_REQUEST + 1, 10, 10]),
            VecDeque::from([0..1, 1..2, 2..4])
        );
        assert_eq!(requests(&[]), VecDeque::<Range<usize>>::new());
    }

    /// A request that may go through later (exit 75) after others were stored: a script that
    /// sends the same again then stores events without ids twice, so it is told to fix (exit 1)
    /// unless every event has an id.
    #[test]
    fn a_partial_send_is_to_be_sent_again_only_where_ids_make_it_safe() {
        let later = || TryLater::said("503 Service Unavailable: try again".into());
        let try_later = |e: &anyhow::Error| e.chain().any(|c| c.is::<TryLater>());
        let with_ids = vec![json!({ "id": "a" }), json!({ "id": "b" })];
        let without = vec![json!({ "id": "a" }), json!({})];
        assert!(try_later(&stopped(later(), 1..2, &with_ids, None, true)));
        assert!(try_later(&stopped(later(), 0..1, &without, None, true)));
        let told = stopped(later(), 1..2, &without, None, true);
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
    fn input_is_one_event_an_array_or_json_lines() {
        let one = parse_input("\u{feff}{\"type\": \"a\",\n \"data\": {}}", "f").unwrap();
        assert!(matches!(one, Input::One(v) if v["type"] == "a"));
        let array = parse_input("[{\"type\": \"a\"}, {\"type\": \"b\"}]", "f").unwrap();
        assert!(matches!(array, Input::Many { events, lines: None } if events.len() == 2));
        let lines = parse_input("{\"type\": \"a\"}\n\n{\"type\": \"b\"}\n", "f").unwrap();
        match lines {
            Input::Many {
                events,
                lines: Some(lines),
            } => {
                assert_eq!(events[1]["type"], "b");
                assert_eq!(lines, [1, 3]);
            }
            other => panic!("{other:?}"),
        }
        let bad_line = parse_input("{\"type\": \"a\"}\n{\"type\": \n", "f").unwrap_err();
        assert!(
            format!("{bad_line:#}").starts_with("f, line 2: not JSON"),
            "{bad_line:#}"
        );
        let array_line = parse_input("{\"type\": \"a\"}\n[{\"type\": \"b\"}]\n", "f").unwrap_err();
        assert!(
            format!("{array_line:#}").starts_with("f, line 2: not an event (a JSON object)"),
            "{array_line:#}"
        );
        let not_json = parse_input("type=a", "f").unwrap_err();
        assert!(
            format!("{not_json:#}").starts_with("f is not JSON: give one event"),
            "{not_json:#}"
        );
    }
}
