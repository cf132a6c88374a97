//! The webhook's audit trail: one structured `info` line per admission
//! decision (namespace, pod or owner, decision, reason), never a secret.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod webhook_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bedrock_broker::webhook::review;
use serde_json::{json, Value};
use tracing_subscriber::fmt::MakeWriter;
use webhook_support::{cluster, fixtures, state};

/// Log lines written while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    /// The JSON lines at `info` and above, as the webhook's JSON logs show them.
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Reviews `body` with logs captured at `info` in JSON.
async fn logged(body: &Value) -> (Value, Captured) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let st = state(cluster());
    let (_, r) = review(&st, &serde_json::to_vec(body).unwrap()).await;
    (serde_json::to_value(r).unwrap(), captured)
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("{name}.json"))).unwrap())
        .unwrap()
}

fn the_decision(c: &Captured) -> Value {
    let lines: Vec<Value> = c
        .lines()
        .into_iter()
        .filter(|l| l["fields"]["message"] == "admission")
        .collect();
    assert_eq!(lines.len(), 1, "one decision line per review: {}", c.text());
    assert_eq!(lines[0]["level"], "INFO");
    lines[0]["fields"].clone()
}

#[tokio::test]
async fn an_injection_is_logged_with_pod_and_reason() {
    let (_, c) = logged(&fixture("plain")).await;
    let d = the_decision(&c);
    assert_eq!(d["decision"], "injected");
    assert_eq!(d["namespace"], "default");
    assert_eq!(d["pod"], "chat-6d8f9c7b5-x7k2p");
    assert_eq!(d["uid"], "a5d0f1c7-1b67-58f2-984d-a1f85b7384c8");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("native") && reason.contains("ServiceAccount"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_controller_made_pod_is_logged_with_its_owner() {
    let (_, c) = logged(&fixture("job-pod")).await;
    let d = the_decision(&c);
    assert_eq!(d["pod"], "nightly-summary-");
    assert_eq!(d["owner"], "Job/nightly-summary");
    assert_eq!(d["decision"], "injected");
}

#[tokio::test]
async fn skips_and_refusals_say_why_without_values() {
    let (_, c) = logged(&fixture("not-opted-in")).await;
    let d = the_decision(&c);
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("skipped"), Some("not_opted_in"))
    );

    // A key pasted where the Secret's name belongs, and a secret in the
    // app's env: the refusal is logged by what is wrong, never by value.
    let mut body = fixture("plain");
    let object = &mut body["request"]["object"];
    object["metadata"]["annotations"] = json!({"bedrock-broker.io/api-key-secret": "ABSK-not-a-ref-0123456789", "bedrock-broker.io/port": "80"});
    object["spec"]["containers"][0]["env"] =
        json!([{"name": "DB_PASSWORD", "value": "hunter2-secret"}]);
    let (r, c) = logged(&body).await;
    assert_eq!(r["response"]["allowed"], false);
    let d = the_decision(&c);
    assert_eq!(d["decision"], "denied");
    assert_eq!(
        d["reason"],
        "bedrock-broker.io/port; bedrock-broker.io/api-key-secret"
    );
    let all = c.text();
    for secret in ["ABSK-not-a-ref", "hunter2-secret"] {
        assert!(!all.contains(secret), "{secret} logged: {all}");
    }
}

#[tokio::test]
async fn unreadable_reviews_are_logged_too() {
    let (_, c) = logged(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "kind": "nonsense", "object": {"secret": "hunter2-secret"}}}),
    )
    .await;
    let d = the_decision(&c);
    assert_eq!(d["decision"], "invalid");
    assert_eq!(d["uid"], "u1");
    assert!(!c.text().contains("hunter2"), "{}", c.text());
}
