//! Reading an AdmissionReview body, holding no more of it in memory than
//! the answer needs.
//!
//! A generic JSON tree of a pod costs many times its text (a small map and
//! its strings per entry), and kube's typed review holds the object as one
//! again: a review of 8 MiB with many small entries grew the webhook by
//! about 280 MiB. So the envelope is read into a small struct, the object is
//! kept as the raw text it came in (borrowed from the body), and the pod is
//! deserialized from that text straight into its typed form, the only copy
//! that is built. The answer is built from the envelope alone.

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionResponse;
use kube::core::TypeMeta;
use serde::Deserialize;
use serde_json::value::RawValue;

/// What the review is about (`request.kind`).
#[derive(Debug, Deserialize)]
pub struct Kind {
    #[serde(default)]
    pub group: String,
    pub kind: String,
}

/// The parts of an `AdmissionRequest` the webhook uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    pub uid: String,
    pub kind: Kind,
    pub operation: String,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub dry_run: bool,
    /// The object as it came, not parsed yet.
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    /// `apiVersion` and `kind` of the review, echoed in the answer.
    #[serde(skip)]
    pub types: TypeMeta,
}

impl Request<'_> {
    /// An allowing answer to this request (uid and review version echoed).
    pub fn response(&self) -> AdmissionResponse {
        let mut response = AdmissionResponse::invalid("");
        response.types = self.types.clone();
        response.uid = self.uid.clone();
        response.allowed = true;
        response.result = Default::default();
        response
    }

    /// A pod creation is the only thing the webhook mutates.
    pub fn is_pod_create(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.kind == "Pod"
            && self.operation == "CREATE"
            && self.sub_resource.is_none()
            && self.object.is_some()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

/// Only the uid, to echo it when the rest cannot be read.
#[derive(Deserialize)]
struct UidOnly {
    request: Option<UidRequest>,
}

#[derive(Deserialize)]
struct UidRequest {
    uid: Option<String>,
}

/// A review that could not be read.
pub struct Unreadable {
    /// The uid, if one could be read.
    pub uid: Option<String>,
    /// What was wrong, in words that quote nothing from the body (logged).
    pub what: &'static str,
    /// The parser's error, which may quote the body (answered only).
    pub detail: String,
}

/// The review, or what was wrong with it.
pub fn parse(body: &[u8]) -> Result<Request<'_>, Unreadable> {
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| {
        let what = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
            "the body is not JSON"
        } else {
            "not an AdmissionReview"
        };
        unreadable(body, what, e)
    })?;
    let mut request = envelope.request.ok_or_else(|| {
        unreadable(
            body,
            "the AdmissionReview has no request",
            "request missing",
        )
    })?;
    request.types = TypeMeta {
        api_version: envelope
            .api_version
            .unwrap_or_else(|| "admission.k8s.io/v1".to_owned()),
        kind: envelope
            .kind
            .unwrap_or_else(|| "AdmissionReview".to_owned()),
    };
    Ok(request)
}

/// A body the parse-cost estimate could not read as JSON.
pub fn not_json(body: &[u8], detail: &str) -> Unreadable {
    unreadable(body, "the body is not valid JSON", detail)
}

/// The pod of a pod creation, deserialized from its text.
pub fn pod(request: &Request<'_>, body: &[u8]) -> Result<Pod, Unreadable> {
    let raw = request.object.map_or("null", RawValue::get);
    serde_json::from_str(raw).map_err(|e| unreadable(body, "request.object is not a valid Pod", e))
}

fn unreadable(body: &[u8], what: &'static str, detail: impl ToString) -> Unreadable {
    let uid = serde_json::from_slice::<UidOnly>(body)
        .ok()
        .and_then(|u| u.request?.uid)
        .filter(|u| !u.is_empty());
    Unreadable {
        uid,
        what,
        detail: shortened(crate::error_text::without_long_strings(&detail.to_string())),
    }
}

/// The parser's error quotes what it could not read, whole: a review with
/// megabytes in one string had them sent back, once per review, to a peer
/// that need not read its answers.
fn shortened(mut detail: String) -> String {
    const LONGEST: usize = 256;
    if detail.len() > LONGEST {
        let mut end = LONGEST;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(request: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request,
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_pod_is_read_from_its_text_without_type_fields() {
        let b = body(
            serde_json::json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "userInfo": {"username": "x"},
            "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}}),
        );
        let req = parse(&b).map_err(|e| e.detail).expect("parses");
        assert!(req.is_pod_create());
        let pod = pod(&req, &b).map_err(|e| e.detail).expect("a pod");
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        let r = req.response();
        assert_eq!((r.uid.as_str(), r.allowed), ("u", true));
        assert_eq!(r.types.api_version, "admission.k8s.io/v1");
    }

    #[test]
    fn what_is_not_a_pod_creation_is_told_apart() {
        for (kind, op) in [("Pod", "UPDATE"), ("Deployment", "CREATE")] {
            let b = body(
                serde_json::json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": kind},
                "operation": op, "object": {}}),
            );
            assert!(!parse(&b)
                .map_err(|e| e.detail)
                .expect("parses")
                .is_pod_create());
        }
    }

    #[test]
    fn unreadable_reviews_say_what_and_keep_the_uid_when_they_can() {
        let bad = parse(b"not json").expect_err("refused");
        assert_eq!((bad.what, bad.uid), ("the body is not JSON", None));
        let b = body(serde_json::json!({"uid": "abc", "kind": "nonsense"}));
        let bad = parse(&b).expect_err("refused");
        assert_eq!(
            (bad.what, bad.uid.as_deref()),
            ("not an AdmissionReview", Some("abc"))
        );
        let b = body(
            serde_json::json!({"uid": "abc", "kind": {"kind": "Pod"}, "operation": "CREATE",
            "object": {"kind": "Deployment"}}),
        );
        let req = parse(&b).map_err(|e| e.detail).expect("parses");
        let bad = pod(&req, &b).expect_err("refused");
        assert_eq!(bad.what, "request.object is not a valid Pod");
    }
}
