//! The `parallelworks` body: `{"type", "webhook": {"id", "organization", "name"}, "payload"}`.

use serde_json::json;

use super::{RenderInput, written};
use crate::js_json::ObjectWriter;

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let (e, w) = (input.event, input.webhook);
    let body = ObjectWriter::new()
        .string("type", &e.event_type)
        .value(
            "webhook",
            &json!({ "id": w.id.as_str(), "organization": input.org.handle.as_str(), "name": w.name }),
        )
        .raw("payload", e.data.get())
        .finish();
    written(body, "application/json")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;

    #[test]
    fn a_parallel_works_body_names_the_webhook() {
        let hook = webhook(
            ProfileName::ParallelWorks,
            &ProfileName::ParallelWorks
                .secret_policy()
                .generate()
                .unwrap(),
        );
        let (body, _) = render_with(
            &hook,
            &event(
                "USER_DISABLED",
                json!({ "username": "demo", "userId": "653c" }),
            ),
        );
        assert_eq!(
            body,
            r#"{"type":"USER_DISABLED","webhook":{"id":"wh_01jd0000000000000000000000","organization":"acme-inc","name":"crm"},"payload":{"username":"demo","userId":"653c"}}"#
        );
    }
}
