//! `relay`: what the machine itself can move, with no Herald in the path. A bare relay takes
//! each producer's request and posts its body on to the receiver, answering 202 once the
//! receiver has answered: one HTTP exchange in and one out per event, as in `burst`, but no
//! storage, signing or scheduling. It is built from the pieces Herald uses for those two
//! exchanges (axum on hyper to serve, hyper's pooled client to deliver), on a runtime of its
//! own as the in-process server has.
//!
//! The figure calibrates the others: the reference machine moves about 48,000
//! requests/s through such a relay, so `burst` on a machine whose relay moves half as many is
//! not comparable with that machine's `burst`. It is a reference point, not a hard ceiling:
//! the relay holds each request until the receiver answered, so it depends on `--connections`
//! as `burst` does, while Herald answers once an event is stored and delivers beside that.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;

use super::Ctx;
use super::load::Producer;
use super::receiver::{Behaviour, Receiver};
use super::report::{Outcome, thousands};
use super::scenarios::{Finished, measure, push_and_wait};

/// Where the relay sends everything it is given.
struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    /// Whether a failure was already printed.
    failed: AtomicBool,
}

/// How long the receiver may take to answer one event.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's listener, on a runtime of its own.
struct Relay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Relay {
    async fn start(target: &str, connections: usize) -> anyhow::Result<Self> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        let upstream = Arc::new(Upstream {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(connections)
                .build(tcp),
            url: target.parse().context("the receiver's URL")?,
            failed: AtomicBool::new(false),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("the relay could not listen on 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("bench-relay")
            .enable_all()
            .build()
            .context("could not start the relay's runtime")?;
        // From here on the runtime is in `relay`, whose Drop shuts it down without waiting (a
        // runtime may not be dropped inside another one).
        let mut relay = Self {
            addr,
            stop: None,
            runtime: Some(runtime),
        };
        let runtime = relay.runtime.as_ref().expect("set just above");
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("the relay could not listen")?
        };
        let app = Router::new().fallback(relay_one).with_state(upstream);
        let (stop, stopped) = oneshot::channel::<()>();
        runtime.spawn(serve_until(listener, app, stopped, "relay"));
        relay.stop = Some(stop);
        Ok(relay)
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Posts the body on and answers 202 if the receiver took it, 502 if not (the first failure is
/// printed, since the producers only see the status).
async fn relay_one(State(up): State<Arc<Upstream>>, body: Bytes) -> StatusCode {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = up.url.clone();
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let forwarded = async {
        let response = up
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the answer to its end so the connection goes back to the pool.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    };
    let failure = match tokio::time::timeout(UPSTREAM_TIMEOUT, forwarded).await {
        Ok(Ok(())) => return StatusCode::ACCEPTED,
        Ok(Err(why)) => why,
        Err(_) => format!("the receiver did not answer within {UPSTREAM_TIMEOUT:?}"),
    };
    if !up.failed.swap(true, Ordering::Relaxed) {
        note!("the relay could not pass an event on: {failure}");
    }
    StatusCode::BAD_GATEWAY
}

/// `relay`: `burst`'s load through the bare relay instead of Herald.
pub(super) async fn relay_scenario(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let events = ctx.events(50_000);
    let receiver = Receiver::start(
        ctx.clock,
        &[Behaviour::Accept],
        events,
        ctx.args.receiver_threads,
    )
    .await?;
    let relay = Relay::start(&receiver.url(0), ctx.args.connections).await?;
    // The relay reads no header, so any token does.
    let producer = Arc::new(
        Producer::new(
            ctx.load_client.clone(),
            &relay.base(),
            "relay",
            HeaderValue::from_static("Bearer relay"),
            ctx.clock,
        )?
        .shaped(ctx.event_shape()),
    );
    let shared = receiver.endpoints().clone();
    let counters = push_and_wait(ctx, "relay", &producer, &shared, &[0], events, 1).await;
    relay.stop();
    receiver.stop().await;
    let mut o = Outcome::new("relay");
    measure(&mut o, &Finished::one_endpoint(counters, shared));
    o.note(format!(
        "{} events, one per request, over {} connections, through a bare relay with no \
         storage (axum in, hyper's client out): what this machine moves with `burst`'s load",
        thousands(events),
        ctx.args.connections
    ));
    Ok(o)
}

/// Serves `app` until `stopped` fires (or the sender is dropped); a failure is printed, naming
/// `what` stopped, since nobody awaits the task's result.
async fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    stopped: oneshot::Receiver<()>,
    what: &'static str,
) {
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await;
    if let Err(e) = served {
        note!("the {what} stopped: {e}");
    }
}
