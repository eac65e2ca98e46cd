//! Setting a scenario up through Herald's public HTTP API with the admin token, exactly as a user
//! would: an organization, webhooks pointing at the receiver, and, for `backlog`, recovery and
//! the pending count from `/metrics`.

use anyhow::{Context, bail};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};

/// An admin client for one Herald server.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
}

impl Api {
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> anyhow::Result<Self> {
        let auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the admin token has characters that cannot go in an HTTP header")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth,
        })
    }

    pub fn auth(&self) -> &HeaderValue {
        &self.auth
    }

    /// Creates an organization (default catalog: optare) and answers its id.
    pub async fn create_org(&self, name: &str) -> anyhow::Result<String> {
        let org = self
            .post("/v1/orgs", json!({ "name": name }))
            .await
            .context("creating the benchmark's organization")?;
        id_of(&org)
    }

    /// Creates a webhook for `user.created` at `url`; `extra` fields are merged into the body.
    pub async fn create_webhook(
        &self,
        org: &str,
        name: &str,
        url: &str,
        extra: &Value,
    ) -> anyhow::Result<String> {
        let mut body = json!({ "name": name, "url": url, "events": ["user.created"] });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let hook = self
            .post(&format!("/v1/orgs/{org}/webhooks"), body)
            .await
            .with_context(|| format!("creating the webhook '{name}' for {url}"))?;
        id_of(&hook)
    }

    /// Sends every failed delivery of the webhook created since `since` (RFC 3339) again.
    pub async fn recover(&self, org: &str, hook: &str, since: &str) -> anyhow::Result<u64> {
        let answer = self
            .post(
                &format!("/v1/orgs/{org}/webhooks/{hook}/recover"),
                json!({ "since": since }),
            )
            .await
            .context("recovering failed deliveries")?;
        Ok(answer["recovered"].as_u64().unwrap_or(0))
    }

    /// The webhook's pending deliveries as `/metrics` reports them.
    pub async fn pending(&self, hook: &str) -> anyhow::Result<Option<u64>> {
        self.webhook_gauge("herald_webhook_pending_deliveries", hook)
            .await
    }

    /// How many requests the server may have in flight to the webhook now (its adaptive
    /// limit), if the webhook has work on the server.
    pub async fn concurrency_limit(&self, hook: &str) -> anyhow::Result<Option<u64>> {
        self.webhook_gauge("herald_webhook_concurrency_limit", hook)
            .await
    }

    /// One webhook's value of a per-webhook gauge of `/metrics`.
    async fn webhook_gauge(&self, name: &str, hook: &str) -> anyhow::Result<Option<u64>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("reading /metrics")?
            .text()
            .await?;
        // `name{webhook="…",active="…"} value`: whatever labels follow the webhook's.
        let prefix = format!("{name}{{webhook=\"{hook}\"");
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .find_map(|rest| rest.split_once("} "))
            .and_then(|(_, n)| n.trim().parse().ok()))
    }

    /// Deletes an organization and everything it owns (its pending deliveries are cancelled).
    pub async fn delete_org(&self, org: &str) -> anyhow::Result<()> {
        let url = format!("{}/v1/orgs/{org}", self.base);
        let resp = self
            .http
            .delete(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .with_context(|| format!("could not reach {url}"))?;
        if !resp.status().is_success() {
            bail!("{url} answered {}", resp.status());
        }
        Ok(())
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await
            .with_context(|| format!("could not reach {url}; is the server running?"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!(
                "{url} answered 401: the admin token is not this server's; pass it with --admin-token"
            );
        }
        if !status.is_success() {
            bail!("{url} answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{url} answered something that is not JSON: {text}"))
    }
}

fn id_of(value: &Value) -> anyhow::Result<String> {
    value["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the answer has no \"id\": {value}"))
}
