//! The `cloudevents` profile: CloudEvents 1.0 over HTTP, structured mode
//! (`application/cloudevents+json`) by default, binary mode (`ce-*` headers, the data as the
//! body) as a webhook option.

use super::{RenderInput, written};
use crate::js_json::ObjectWriter;
use crate::webhook::ContentMode;

fn source(input: &RenderInput<'_>) -> String {
    format!(
        "{}/v1/orgs/{}",
        input.public_url.trim_end_matches('/'),
        input.org.id
    )
}

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let e = input.event;
    match input.webhook.options.content_mode.unwrap_or_default() {
        ContentMode::Structured => {
            let mut ce = ObjectWriter::new()
                .string("specversion", "1.0")
                .string("id", &e.id)
                .string("source", &source(input))
                .string("type", &e.event_type)
                .string("time", &e.occurred_at.to_rfc3339())
                .string("datacontenttype", "application/json");
            if let Some(c) = &e.correlation_id {
                ce = ce.string("correlationid", c);
            }
            written(
                ce.raw("data", e.data.get()).finish(),
                "application/cloudevents+json",
            )
        }
        ContentMode::Binary => {
            let (body, mut headers) = written(e.data.get().to_owned(), "application/json");
            headers.extend([
                ("ce-specversion", "1.0".to_owned()),
                ("ce-id", e.id.clone()),
                ("ce-source", source(input)),
                ("ce-type", e.event_type.clone()),
                ("ce-time", e.occurred_at.to_rfc3339()),
            ]);
            if let Some(c) = &e.correlation_id {
                headers.push(("ce-correlationid", c.clone()));
            }
            (body, headers)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;
    use crate::webhook::ContentMode;

    #[test]
    fn structured_mode_wraps_the_data_in_a_cloudevent() {
        let hook = webhook(
            ProfileName::CloudEvents,
            &ProfileName::CloudEvents.secret_policy().generate().unwrap(),
        );
        let (body, headers) = render_with(
            &hook,
            &event("user.created", json!({ "user": { "id": "u1" } })),
        );
        assert_eq!(
            header(&headers, "content-type"),
            "application/cloudevents+json"
        );
        assert_eq!(
            body,
            r#"{"specversion":"1.0","id":"evt_1","source":"https://herald.example.com/v1/orgs/org_01jd0000000000000000000000","type":"user.created","time":"2023-11-14T22:13:20.000Z","datacontenttype":"application/json","correlationid":"req-9","data":{"user":{"id":"u1"}}}"#
        );
    }

    #[test]
    fn binary_mode_puts_the_attributes_in_headers() {
        let mut hook = webhook(
            ProfileName::CloudEvents,
            &ProfileName::CloudEvents.secret_policy().generate().unwrap(),
        );
        hook.options.content_mode = Some(ContentMode::Binary);
        let (body, headers) = render_with(
            &hook,
            &event("user.created", json!({ "user": { "id": "u1" } })),
        );
        assert_eq!(body, r#"{"user":{"id":"u1"}}"#);
        assert_eq!(header(&headers, "ce-type"), "user.created");
        assert_eq!(header(&headers, "ce-id"), "evt_1");
        assert_eq!(header(&headers, "content-type"), "application/json");
    }
}
