//! WebSub verification of intent: a GET to the callback with `hub.mode`, `hub.topic`,
//! `hub.challenge` and `hub.lease_seconds` appended to its own query string; only a 2xx whose
//! body is exactly the challenge verifies.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngCore;

use herald_core::Timestamp;
use herald_core::subscription::{Mode, Verification};

use crate::client::HttpClient;

/// Verification requests wait at most this long, whatever the webhook's delivery timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the callback to confirm `mode` for `topic`, with the webhook's custom `headers` (a
/// gateway in front of the endpoint may require them of every request, as of deliveries).
/// `Err` says why it did not, in words.
pub async fn verify_intent(
    client: &HttpClient,
    callback: &str,
    headers: &BTreeMap<String, String>,
    mode: Mode,
    topic: &str,
    lease_seconds: u32,
    timeout: Duration,
) -> Result<(), String> {
    let challenge = new_challenge();
    let mut url =
        url::Url::parse(callback).map_err(|e| format!("the callback URL does not parse: {e}"))?;
    url.query_pairs_mut()
        .append_pair("hub.mode", mode.as_str())
        .append_pair("hub.topic", topic)
        .append_pair("hub.challenge", &challenge)
        .append_pair("hub.lease_seconds", &lease_seconds.to_string());
    let (status, body) = client
        .get_text(
            url.as_str(),
            headers,
            timeout.min(MAX_TIMEOUT),
            challenge.len() + 256,
        )
        .await
        .map_err(|e| match e {
            herald_core::delivery::AttemptError::Timeout => format!(
                "the endpoint did not answer within {} ms (a verification waits at most the \
                 webhook's timeout, and {} s at most)",
                timeout.min(MAX_TIMEOUT).as_millis(),
                MAX_TIMEOUT.as_secs()
            ),
            e => e.message(),
        })?;
    match refusal(status, &body, &challenge) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Why an answer does not verify, quoting what the endpoint said (the usual slips are a body
/// in JSON, quotes or a trailing line break): `None` when it verifies.
fn refusal(status: u16, body: &str, challenge: &str) -> Option<String> {
    let said = match quoted(body) {
        Some(q) => format!("{status} ({q})"),
        None => format!("{status} with an empty body"),
    };
    if !(200..300).contains(&status) {
        // What the status itself says, where it says more than "not 2xx".
        let meaning = match status {
            404 => " (in WebSub, the subscriber's no to this subscription)",
            300..400 => " (redirects are not followed: give the webhook the URL that answers)",
            _ => "",
        };
        return Some(format!(
            "the endpoint answered {said}{meaning}; it must answer 2xx with the hub.challenge as \
             the body"
        ));
    }
    if body == challenge {
        return None;
    }
    let how = if body.trim() == challenge {
        "the challenge with white space around it (a line break, say)"
    } else if body.trim().eq_ignore_ascii_case(challenge) {
        "the challenge in other letter case"
    } else if body.contains(challenge) {
        "the challenge inside more text (JSON or quotes, say)"
    } else {
        "a body that is not the challenge"
    };
    Some(format!(
        "the endpoint answered {said}: {how}; the body must be the hub.challenge from the query \
         string, exactly"
    ))
}

/// The start of a body, escaped so that it reads on one line: `None` when it is empty.
fn quoted(body: &str) -> Option<String> {
    const SHOWN: usize = 80;
    if body.is_empty() {
        return None;
    }
    let start: String = body.chars().take(SHOWN).collect();
    let more = if body.chars().nth(SHOWN).is_some() {
        "…"
    } else {
        ""
    };
    // Escaped as JSON escapes it (`\n`, `\u001b`), which every reader of the API knows.
    let quoted = serde_json::to_string(&start).ok()?;
    Some(format!("{}{more}\"", &quoted[..quoted.len() - 1]))
}

/// A random (version 4) UUID, as Asgardeo's challenges are: 122 random bits, and a subscriber
/// that checks the challenge's form finds a valid one.
fn new_challenge() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    herald_core::ids::uuid_string(b)
}

/// Renews the leases that are due, until `shutdown`. Renewals are few and may wait on slow
/// endpoints, so they run beside the scheduler rather than in its loop.
pub async fn run_renewals(
    dispatcher: crate::Dispatcher,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    const LOOK_EVERY: Duration = Duration::from_secs(30);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Up to 100 renewals, each waiting up to its webhook's timeout: shutdown does not wait
        // for them. A renewal cut short leaves its subscription as it was, due again at the next
        // start.
        let renewed = tokio::select! {
            renewed = renew_due(&dispatcher) => renewed,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = renewed {
            tracing::error!(error = %herald_core::error_chain(&e), "could not renew WebSub leases; trying again shortly");
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = dispatcher.renewals_woken() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// How long until a channel whose lease ran out is asked again: every hour during the first
/// day, then once a day, so that an endpoint gone for good is not asked 24 times a day forever
/// while one back within the day is found soon.
fn lapsed_retry_secs(expired_at: Option<Timestamp>, now: Timestamp) -> i64 {
    const HOUR: i64 = 3_600;
    const DAY: i64 = 86_400;
    match expired_at {
        Some(at) if now.as_millis() - at.as_millis() < DAY * 1000 => HOUR,
        _ => DAY,
    }
}

/// How much longer than its webhook's timeout a renewal is held by the node asking.
const RENEWAL_HOLD_MARGIN_MS: i64 = 60_000;

async fn renew_due(dispatcher: &crate::Dispatcher) -> Result<(), herald_core::store::StoreError> {
    let store = dispatcher.store();
    let due = store
        .subscriptions_to_renew(dispatcher.clock().now(), 100)
        .await?;
    for (org, mut sub) in due {
        let snapshot = dispatcher.directory().snapshot(&org).await?;
        let Some(webhook) = snapshot.webhook(&sub.webhook_id).cloned() else {
            continue;
        };
        if webhook.verification != Verification::Websub
            || !snapshot.channels_of(&webhook).contains(&sub.channel)
        {
            // No longer asked for (verification switched off, or the channel dropped from the
            // webhook): the lease is left to run out, and not looked at again.
            let read = sub.as_read();
            sub.renew_at = None;
            store
                .save_subscriptions_as_read(&org, &[(sub, Some(read))])
                .await?;
            continue;
        }
        let timeout = Duration::from_millis(u64::from(webhook.effective_timeout_ms()));
        // Held while it is asked, so that the other nodes, which find it due as well, do not
        // ask too; one cut short (its node stopped) is due again after the hold.
        let hold = i64::from(webhook.effective_timeout_ms()) + RENEWAL_HOLD_MARGIN_MS;
        if !store
            .claim_renewal(&org, &sub, dispatcher.clock().now().plus_millis(hold))
            .await?
        {
            continue;
        }
        let read = sub.as_read();
        // Under the topic as it is now: the organization's handle may have changed since.
        sub.topic = herald_core::subscription::topic(&snapshot.org, webhook.profile, &sub.channel);
        let outcome = verify_intent(
            dispatcher.client(),
            webhook.url.as_str(),
            &webhook.headers,
            Mode::Subscribe,
            &sub.topic,
            sub.lease_seconds,
            timeout,
        )
        .await;
        if let Err(reason) = &outcome {
            tracing::warn!(webhook = %webhook.id, channel = sub.channel, reason, "WebSub lease renewal failed; retrying in an hour");
        }
        let now = dispatcher.clock().now();
        sub.record(now, outcome);
        if sub.renew_at.is_none() {
            // The lease ran out while renewals failed (an endpoint down for a while, say): the
            // channel gets nothing now, and Herald keeps asking rather than dropping the
            // subscription for good.
            sub.renew_at = Some(now.plus_secs(lapsed_retry_secs(sub.expires_at, now)));
        }
        // The GET took up to the webhook's timeout; a deactivation, resend or new URL that
        // finished meanwhile is newer than this renewal, and must not be overwritten by it.
        let (webhook_id, channel) = (sub.webhook_id.clone(), sub.channel.clone());
        if store
            .save_subscriptions_as_read(&org, &[(sub, Some(read))])
            .await?
            == 0
        {
            tracing::debug!(webhook = %webhook_id, channel, "subscription changed during its renewal; the change stands");
            continue;
        }
        dispatcher.directory().invalidate(&org);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Timestamp, lapsed_retry_secs, refusal};

    #[test]
    fn a_lapsed_lease_is_asked_hourly_for_a_day_then_daily() {
        let expired = Timestamp::from_millis(1_000_000_000_000);
        let after = |secs: i64| expired.plus_secs(secs);
        assert_eq!(lapsed_retry_secs(Some(expired), after(60)), 3_600);
        assert_eq!(lapsed_retry_secs(Some(expired), after(86_399)), 3_600);
        assert_eq!(lapsed_retry_secs(Some(expired), after(86_400)), 86_400);
        assert_eq!(lapsed_retry_secs(None, after(60)), 86_400);
    }

    #[test]
    fn a_refusal_quotes_what_the_endpoint_answered() {
        let c = "0f1e2d3c-aaaa-4bbb-8ccc-000000000000";
        assert_eq!(refusal(200, c, c), None);
        assert_eq!(refusal(204, c, c), None);
        let why = refusal(404, "Not Found\n", c).unwrap();
        assert!(
            why.starts_with(
                r#"the endpoint answered 404 ("Not Found\n") (in WebSub, the subscriber's no to this subscription); it must answer 2xx"#
            ),
            "{why}"
        );
        let why = refusal(302, "", c).unwrap();
        assert!(why.contains("redirects are not followed"), "{why}");
        let why = refusal(200, &c.to_uppercase(), c).unwrap();
        assert!(why.contains("the challenge in other letter case"), "{why}");
        let why = refusal(500, "", c).unwrap();
        assert!(
            why.starts_with("the endpoint answered 500 with an empty body;"),
            "{why}"
        );
        let why = refusal(200, &format!("{c}\n"), c).unwrap();
        assert!(why.contains("white space around it"), "{why}");
        let why = refusal(200, &format!(r#"{{"challenge":"{c}"}}"#), c).unwrap();
        assert!(
            why.contains("inside more text") && why.contains(r#"{\"challenge\""#),
            "{why}"
        );
        let why = refusal(200, "", c).unwrap();
        assert!(
            why.contains("200 with an empty body: a body that is not"),
            "{why}"
        );
        let why = refusal(403, "<b>\u{1b}[31mno</b>\r\n", c).unwrap();
        assert!(why.contains(r#"403 ("<b>\u001b[31mno</b>\r\n")"#), "{why}");
        let long = "é".repeat(200);
        let why = refusal(200, &long, c).unwrap();
        assert!(why.contains(&format!("\"{}…\"", "é".repeat(80))), "{why}");
    }

    #[test]
    fn challenges_are_fresh_random_uuids() {
        let (a, b) = (super::new_challenge(), super::new_challenge());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        for c in [&a, &b] {
            assert_eq!(&c[14..15], "4", "version 4: {c}");
            assert!("89ab".contains(&c[19..20]), "RFC 4122 variant: {c}");
        }
    }
}
