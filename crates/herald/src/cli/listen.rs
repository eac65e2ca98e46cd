//! `herald listen`: a local receiver for trying webhooks out. It prints every request, checks its
//! signature in whichever scheme it carries (given the secret), answers WebSub verification
//! challenges, and can answer with a chosen status or after a delay.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use clap::Args;

use herald_signature::{VerifyError, hex, hub, opal, standard};

/// `herald listen` options.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to listen on: an IP address and a port.
    #[arg(long, default_value = "127.0.0.1:7700", value_parser = parse_address)]
    pub listen: SocketAddr,
    /// The webhook's secret, to check signatures (`whsec_…` or the secret as shown). A request
    /// whose signature does not verify with it is answered 401, as a receiver would.
    #[arg(long, env = "HERALD_LISTEN_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub secret: Option<String>,
    /// Check only this signature scheme (with --secret): standard, optare, hub or opal, the
    /// one the webhook signs with. Without it, any scheme's header is checked; as the same
    /// secret signs them all, a request signed for one scheme can be resent as another's and
    /// pass, where a receiver that checks its own scheme only would refuse it.
    #[arg(long, value_parser = SCHEMES, requires = "secret")]
    pub scheme: Option<String>,
    /// The status to answer deliveries with (those whose signature verifies, given --secret):
    /// 200 to 599.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
    pub status: u16,
    /// Wait this long before answering, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Answer WebSub verification with a wrong body instead of the challenge.
    #[arg(long)]
    pub refuse_verification: bool,
}

/// The schemes `--scheme` names ([`signature_header`] carries each one's signature), in the
/// order a request is looked at without it.
const SCHEMES: [&str; 4] = ["standard", "opal", "optare", "hub"];

/// `--secret`: one Herald could have given (a `whsec_` key, or 16 to 256 visible characters),
/// so that a mistake (an empty variable, a cut-off paste) stops here rather than answering
/// every delivery 401. Spaces and line breaks around it (`--secret "$(cat file)"`, a paste)
/// are dropped: no secret Herald gives has any.
fn parse_secret(raw: &str) -> Result<String, String> {
    herald_core::profile::SecretPolicy::UserSupplied
        .parse(raw.trim())
        .map_err(|e| {
            let why = e.message.split("; omit it").next().unwrap_or_default();
            format!("not a webhook secret ({why}); give the secret Herald showed when the webhook was created or its secret rotated")
        })
}

/// `--listen`: an IP address and a port, said so when it is a name (`localhost:7700`).
fn parse_address(raw: &str) -> Result<SocketAddr, String> {
    raw.parse()
        .map_err(|_| format!("'{raw}' is not an IP address and port; use e.g. 127.0.0.1:7700"))
}

/// The largest body taken: more than Herald sends (a batch of 100 events of up to a megabyte
/// each). A larger one is answered 413, and said so.
const MOST_BODY_BYTES: usize = 128 << 20;

#[derive(Clone)]
struct Listener {
    args: ListenArgs,
}

pub fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let status = StatusCode::from_u16(args.status)
        .context("--status must be an HTTP status such as 200 or 503")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("could not listen on {}; choose another address with --listen", args.listen))?;
            let addr = listener.local_addr()?;
            out!("Listening on http://{addr}/ (answering {status}); point a webhook here. Ctrl-C stops.");
            if args.secret.is_none() {
                out!("No --secret given: signatures are shown, not checked.");
            } else if let Some(scheme) = &args.scheme {
                out!("Checking {scheme} signatures with --secret: a request that does not verify is answered 401.");
            } else {
                out!("Checking signatures with --secret: a request that does not verify is answered 401 (--scheme takes only the webhook's).");
            }
            let app = Router::new().fallback(receive).with_state(Listener { args });
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            // Ctrl-C stops at once, even with a request waiting out --delay-ms: the sender sees
            // the connection close and tries again, as a receiver that stopped would make it.
            tokio::select! {
                served = axum::serve(listener, app) => served.context("the listener failed"),
                _ = tokio::signal::ctrl_c() => {
                    note!("Stopped.");
                    Ok(())
                }
            }
        })
}

async fn receive(
    State(l): State<Listener>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == Method::GET
        && let Some(answer) = websub_challenge(&l, &uri)
    {
        return answer;
    }
    out!("\n{method} {uri}");
    for (name, value) in &headers {
        out!("  {name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    let body: Bytes = match axum::body::to_bytes(body, MOST_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            out!(
                "answered 413: the body could not be read whole ({}; at most {} MiB)",
                herald_core::error_chain(&e),
                MOST_BODY_BYTES >> 20
            );
            return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
        }
    };
    // The body as it came, laid out: not parsed and written again, which would change what
    // was signed (a large number, a key given twice).
    match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        Ok(_) => out!(
            "{}",
            herald_core::shown_safely(&indent_json(&String::from_utf8_lossy(&body)))
        ),
        Err(_) => out!(
            "{}",
            herald_core::shown_safely(&String::from_utf8_lossy(&body))
        ),
    }
    let (verdict, verified) = check_signature(
        &headers,
        &body,
        l.args.secret.as_deref(),
        l.args.scheme.as_deref(),
    );
    out!("signature: {verdict}");
    if crate::cli::stdout_gone() {
        // Nobody reads what it prints any more (`herald listen | head`): it ends, as before a
        // listener goes quiet for good.
        std::process::exit(0);
    }
    if l.args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(l.args.delay_ms)).await;
    }
    // Deliveries are POSTs; a browser or a health check looking at the address is not refused.
    if !verified && method == Method::POST {
        // What a receiver does: the sender (and `herald webhooks test`) sees the setup is wrong.
        out!("answered 401: the signature does not verify with --secret");
        return (
            StatusCode::UNAUTHORIZED,
            format!("signature not verified: {verdict}"),
        )
            .into_response();
    }
    (
        StatusCode::from_u16(l.args.status).unwrap_or(StatusCode::OK),
        "ok",
    )
        .into_response()
}

/// Answers a WebSub verification of intent (`hub.challenge` in the query).
fn websub_challenge(l: &Listener, uri: &Uri) -> Option<Response> {
    let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query()?).ok()?;
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let challenge = param("hub.challenge")?;
    let mode = param("hub.mode").unwrap_or_default();
    let topic = param("hub.topic").unwrap_or_default();
    if l.args.refuse_verification {
        out!("\nWebSub {mode} for {topic}: refused (--refuse-verification)");
        return Some((StatusCode::OK, "refused").into_response());
    }
    out!("\nWebSub {mode} for {topic}: confirmed");
    Some((StatusCode::OK, challenge).into_response())
}

/// Names the scheme the request carries and whether its signature holds; answers false only
/// when a secret was given and the request is not signed with it.
fn check_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: Option<&str>,
    scheme: Option<&str>,
) -> (String, bool) {
    let Some(secret) = secret else {
        return ("not checked (no --secret)".into(), true);
    };
    match signature_with(headers, body, secret, scheme) {
        (scheme, Ok(())) => (format!("{scheme}: verified"), true),
        (scheme, Err(e)) => (format!("{scheme}: NOT VERIFIED ({e})"), false),
    }
}

/// The header that carries a scheme's signature.
fn signature_header(scheme: &str) -> &'static str {
    match scheme {
        "standard" => standard::HEADER_SIGNATURE,
        "opal" => "x-opal-signature",
        "optare" => "x-optare-signature",
        _ => "x-hub-signature",
    }
}

/// The scheme of the request's signature header (`only` that one, when given), and whether it
/// holds with `secret`.
fn signature_with(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    only: Option<&str>,
) -> (&'static str, Result<(), String>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(only) = only
        && header(signature_header(only)).is_none()
    {
        let carried = SCHEMES
            .into_iter()
            .find(|s| header(signature_header(s)).is_some());
        let why = match carried {
            Some(other) => format!("signed as {other}, and --scheme takes {only} only"),
            None => format!("the request carries no {} header", signature_header(only)),
        };
        return ("no signature of --scheme", Err(why));
    }
    // With `only`, the other schemes' signature headers are hidden; the headers beside them
    // (ids, timestamps) stay, as the scheme checked may read them.
    let header = |name: &str| {
        let another_signature = only.is_some_and(|only| {
            name != signature_header(only) && SCHEMES.iter().any(|s| signature_header(s) == name)
        });
        header(name).filter(|_| !another_signature)
    };
    let verdict = |scheme: &'static str, result: Result<(), VerifyError>| {
        (scheme, result.map_err(|e| e.to_string()))
    };
    let now = chrono::Utc::now().timestamp();
    if let Some(sig) = header(standard::HEADER_SIGNATURE) {
        let key = match standard::SigningKey::for_secret(secret) {
            Ok(k) => k,
            Err(e) => {
                return (
                    "standard webhooks",
                    Err(format!("the secret is not usable: {e}")),
                );
            }
        };
        return verdict(
            "standard webhooks",
            standard::verify(
                &key,
                header(standard::HEADER_ID).unwrap_or_default(),
                header(standard::HEADER_TIMESTAMP).unwrap_or_default(),
                sig,
                body,
                now,
                300,
            ),
        );
    }
    if let Some(sig) = header("x-opal-signature") {
        return verdict(
            "opal",
            opal::verify(
                secret,
                header("x-opal-request-timestamp").unwrap_or_default(),
                sig,
                body,
                now,
                300,
            ),
        );
    }
    if let Some(sig) = header("x-optare-signature") {
        return verdict("optare", hex::verify(secret, sig, body));
    }
    if let Some(sig) = header("x-hub-signature") {
        return verdict("hub", hub::verify(secret, sig, body));
    }
    (
        "no signature header",
        Err("the request is not signed".into()),
    )
}

/// JSON text laid out two spaces an indent, its tokens as they came: whitespace outside
/// strings is replaced, nothing else is touched.
fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What arrived is shown as it arrived, laid out: numbers beyond a double, a key given
    /// twice and escapes kept.
    #[test]
    fn a_body_is_shown_as_it_came() {
        let sent = r#"{"big":12345678901234567890123,"f":1.10,"dup":1,"dup":2,"s":"a,\"{b}:\u001b","e":{},"l":[ ],"n":[1,[2]]}"#;
        assert_eq!(
            indent_json(sent),
            "{\n  \"big\": 12345678901234567890123,\n  \"f\": 1.10,\n  \"dup\": 1,\n  \"dup\": 2,\n  \
             \"s\": \"a,\\\"{b}:\\u001b\",\n  \"e\": {},\n  \"l\": [],\n  \"n\": [\n    1,\n    [\n      2\n    \
             ]\n  ]\n}"
        );
    }

    /// An Opal signature too old to take, shown as Optare's over the string Opal signed: the
    /// same key makes both, so only `--scheme` tells them apart.
    #[test]
    fn a_signature_shown_as_another_schemes_is_refused_with_scheme() {
        let secret = "0123456789abcdef0123456789abcdef";
        let (body, stale) = (br#"{"events":[]}"#, 1_000_000);
        let signature = opal::sign(secret, stale, body);
        let mut headers = HeaderMap::new();
        headers.insert("x-opal-signature", signature.parse().unwrap());
        headers.insert("x-opal-request-timestamp", stale.into());
        let as_sent = |scheme| signature_with(&headers, body, secret, scheme).1;
        assert!(as_sent(None).unwrap_err().contains("tolerance"));
        let mut shown_as_optare = HeaderMap::new();
        shown_as_optare.insert("x-optare-signature", signature.parse().unwrap());
        let signed = format!("v0:{stale}:{}", String::from_utf8_lossy(body));
        let check = |scheme| signature_with(&shown_as_optare, signed.as_bytes(), secret, scheme);
        assert_eq!(check(None), ("optare", Ok(())));
        let (_, refused) = check(Some("opal"));
        assert_eq!(
            refused.unwrap_err(),
            "signed as optare, and --scheme takes opal only"
        );
        assert_eq!(check(Some("optare")), ("optare", Ok(())));
        let (_, unsigned) = signature_with(&HeaderMap::new(), body, secret, Some("hub"));
        assert!(unsigned.unwrap_err().contains("no x-hub-signature header"));
    }

    /// Each scheme's own requests verify with `--scheme` naming it: the headers beside the
    /// signature (its id, its timestamp) are read as without it.
    #[test]
    fn every_schemes_own_requests_verify_with_scheme() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"type":"user.created"}"#;
        let now = chrono::Utc::now().timestamp();
        let key = standard::SigningKey::for_secret(secret).unwrap();
        let signed: [(&str, Vec<(&str, String)>); 4] = [
            (
                "standard",
                vec![
                    (standard::HEADER_ID, "msg_1".into()),
                    (standard::HEADER_TIMESTAMP, now.to_string()),
                    (
                        standard::HEADER_SIGNATURE,
                        standard::signature_header(&[&key], "msg_1", now, body),
                    ),
                ],
            ),
            (
                "opal",
                vec![
                    ("x-opal-request-timestamp", now.to_string()),
                    ("x-opal-signature", opal::sign(secret, now, body)),
                ],
            ),
            (
                "optare",
                vec![("x-optare-signature", hex::sign(secret, body))],
            ),
            ("hub", vec![("x-hub-signature", hub::sign(secret, body))]),
        ];
        for (scheme, sent) in signed {
            let mut headers = HeaderMap::new();
            for (name, value) in sent {
                headers.insert(name, value.parse().unwrap());
            }
            for only in [None, Some(scheme)] {
                let (named, verified) = signature_with(&headers, body, secret, only);
                assert_eq!(
                    verified,
                    Ok(()),
                    "{scheme} ({named}) with --scheme {only:?}"
                );
            }
        }
    }

    #[test]
    fn a_secret_herald_could_not_have_given_is_refused_at_start() {
        assert!(parse_secret("").unwrap_err().contains("16 to 256"));
        assert!(parse_secret("short").is_err());
        assert!(
            parse_secret("whsec_!!!notbase64")
                .unwrap_err()
                .contains("base64")
        );
        let key = herald_core::profile::SecretPolicy::StandardKey
            .generate()
            .unwrap();
        assert_eq!(parse_secret(&format!(" {key}\n")).unwrap(), key);
        let hex = herald_core::profile::SecretPolicy::Hex.generate().unwrap();
        assert_eq!(parse_secret(&hex).unwrap(), hex);
    }
}
