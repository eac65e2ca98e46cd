//! The organization's event catalog: every type it can send, by channel, with its description
//! and example data.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use super::error::DashResult;
use super::orgs::org_id;
use super::session::Signed;
use super::templates::{self, Layout};
use crate::app::AppState;
use crate::service::{event_types, orgs};

pub fn router() -> Router<AppState> {
    Router::new().route("/orgs/{org}/catalog", get(show_catalog))
}

#[derive(Serialize)]
struct TypeView {
    name: String,
    description: Option<String>,
    source: String,
    example: Option<String>,
    has_schema: bool,
}

#[derive(Serialize)]
struct ChannelGroup {
    channel: String,
    types: Vec<TypeView>,
}

#[derive(Serialize)]
struct CatalogPage {
    catalogs: String,
    groups: Vec<ChannelGroup>,
}

async fn show_catalog(
    State(state): State<AppState>,
    signed: Signed,
    Path(org): Path<String>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let mut types = event_types::list_for_org(&state, &signed.scope, &org.id).await?;
    types.sort_by(|a, b| (&a.channel, &a.name).cmp(&(&b.channel, &b.name)));
    let mut groups: Vec<ChannelGroup> = Vec::new();
    for t in types {
        let channel = t.channel.clone().unwrap_or_else(|| "(no channel)".into());
        let view = TypeView {
            example: t
                .example
                .as_ref()
                .and_then(|e| serde_json::to_string_pretty(e).ok()),
            has_schema: t.schema.is_some(),
            name: t.name,
            description: t.description,
            source: t.source,
        };
        match groups.last_mut() {
            Some(g) if g.channel == channel => g.types.push(view),
            _ => groups.push(ChannelGroup {
                channel,
                types: vec![view],
            }),
        }
    }
    let page = CatalogPage {
        catalogs: org
            .catalogs
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        groups,
    };
    let layout = Layout::new(&state, &signed, "Event catalog", Some(&org));
    Ok(templates::render(
        StatusCode::OK,
        "catalog.html",
        &layout,
        page,
    ))
}
