//! `bedrock-broker inject`: the webhook's mutation applied offline to
//! Kubernetes YAML (GitOps, CI, debugging).
//!
//! Every document is read, Pods and the pod templates of workloads are
//! mutated by the same [`super::inject()`] the webhook uses, and every
//! document is written back in order. Namespace, ServiceAccount and
//! LimitRange documents in the same input stand in for the cluster
//! (namespace opt-in, the IRSA role, the resources the sidecar must fit),
//! completed by `--namespace-label` and `--service-account-annotation`.
//!
//! YAML is read the way `kubectl` reads it (YAML 1.1 scalars: `0644` is
//! octal, `yes` is a boolean) and written so any YAML 1.1 or 1.2 reader
//! gets the same values back (ambiguous strings are quoted).

use std::fmt;
use std::io::{Read, Write};

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};

use super::inject::{self, rebase, Outcome, Skip};
use super::lookup::StaticLookup;
use super::SidecarDefaults;

mod documents;
mod kinds;
mod misplaced;
mod stand_in;
pub use documents::{parse_documents, write_documents};
use kinds::template_pointer;
use stand_in::cluster;

/// Configuration of `bedrock-broker inject`.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Namespace of documents that name none.
    pub namespace: String,
    /// Labels assumed for every namespace (merged under Namespace documents' own).
    pub namespace_labels: std::collections::BTreeMap<String, String>,
    /// Annotations assumed for ServiceAccounts not in the input.
    pub service_account_annotations: std::collections::BTreeMap<String, String>,
    /// Namespaces the webhook never sees (its selectors exclude them):
    /// their pods are left unchanged.
    pub exclude_namespaces: Vec<String>,
    pub sidecar: SidecarDefaults,
}

/// Why `inject` produced no output.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not YAML (exit status 2).
    #[error("the input is not valid YAML: {0}")]
    Yaml(String),
    /// The input began as JSON and is not a stream of JSON values (exit
    /// status 2).
    #[error("the input is not valid JSON: {0}")]
    Json(String),
    /// A document is past the parser's limits (exit status 2).
    #[error("the input is too large: {0}")]
    TooLarge(String),
    /// The input could not be read (exit status 2).
    #[error("cannot read the input: {0}")]
    Io(String),
    /// A document nests deeper than inject reads (exit status 2).
    #[error("the input nests too deeply: {0}")]
    TooDeep(String),
    /// Some pods were refused; one line per object (exit status 1).
    #[error("{}", .0.join("\n"))]
    Denied(Vec<String>),
}

/// What happened to one pod or pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind namespace/name`.
    pub object: String,
    /// `injected` or the skip reason.
    pub outcome: String,
    /// What the webhook would return as admission warnings.
    pub warnings: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.outcome)
    }
}

/// The hint for a label or annotation YAML reads as no string.
const QUOTE_IT: &str = "label and annotation values are strings: quote it";

/// Where a pod (template) does not fit the Pod type, as a path in the
/// object (`spec.template.metadata.labels.x`), and what is wrong there.
fn field_error(template: &[&str], e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.path().to_string();
    let path = template
        .iter()
        .copied()
        .chain((inner != ".").then_some(inner.as_str()))
        .collect::<Vec<_>>()
        .join(".");
    // `inject: true` unquoted is YAML's boolean: Kubernetes takes strings.
    let problem = crate::error_text::without_long_strings(&e.inner().to_string());
    if inner.starts_with("metadata.labels.") || inner.starts_with("metadata.annotations.") {
        format!("{path}: {problem} ({QUOTE_IT})")
    } else {
        format!("{path}: {problem}")
    }
}

pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Objects of a document: itself, or the items of a `List`, each with
/// where in the document it is (`items[2]`, empty for the document).
pub(crate) fn objects_mut(doc: &mut Value) -> Vec<(String, &mut Value)> {
    let is_list = str_at(doc, "/kind").is_some_and(|k| k == "List" || k.ends_with("List"))
        && doc.get("items").is_some_and(Value::is_array);
    if !is_list {
        return vec![(String::new(), doc)];
    }
    match doc.get_mut("items").and_then(Value::as_array_mut) {
        Some(items) => items
            .iter_mut()
            .enumerate()
            .flat_map(|(i, item)| {
                objects_mut(item).into_iter().map(move |(inner, obj)| {
                    let dot = if inner.is_empty() { "" } else { "." };
                    (format!("items[{i}]{dot}{inner}"), obj)
                })
            })
            .collect(),
        None => Vec::new(),
    }
}

/// The pod a template stands for: the mutation reads a Pod, whatever holds it.
fn pod_of(kind: &str, template: &Map<String, Value>) -> Value {
    if kind == "Pod" {
        return Value::Object(template.clone());
    }
    let mut pod = Map::new();
    pod.insert("apiVersion".into(), "v1".into());
    pod.insert("kind".into(), "Pod".into());
    if let Some(m) = template.get("metadata") {
        pod.insert("metadata".into(), m.clone());
    }
    if let Some(s) = template.get("spec") {
        pod.insert("spec".into(), s.clone());
    }
    Value::Object(pod)
}

fn skip_reason(skip: &Skip) -> &'static str {
    match skip {
        Skip::NotOptedIn | Skip::OptInAnnotation => "not opted in",
        Skip::OptedOut => "opted out",
        Skip::AlreadyInjected => "already injected",
        Skip::HasBrokerContainer => "has a bedrock-broker container already",
        Skip::MirrorPod => "a mirror pod (a static pod's copy)",
    }
}

/// Mutates one object in place (`position`: where it is in the input,
/// for an object without a name); `Ok(None)` when it holds no pod.
fn inject_object(
    obj: &mut Value,
    position: &str,
    lookup: &StaticLookup,
    config: &InjectConfig,
) -> Result<Option<Report>, String> {
    let Some(kind) = str_at(obj, "/kind").map(str::to_owned) else {
        return Ok(None);
    };
    let Some(tokens) = template_pointer(str_at(obj, "/apiVersion"), &kind) else {
        return Ok(None);
    };
    let namespace = stand_in::namespace_of(obj, config);
    let name = str_at(obj, "/metadata/name")
        .or_else(|| str_at(obj, "/metadata/generateName"))
        .unwrap_or("")
        .to_owned();
    // Unnamed objects (a fragment piped in) are told apart by position.
    let object = if name.is_empty() {
        format!("{kind} {namespace}/(no name, {position})")
    } else {
        format!("{kind} {namespace}/{name}")
    };
    if config.exclude_namespaces.contains(&namespace) {
        return Ok(Some(Report {
            object,
            outcome: format!(
                "unchanged (namespace {namespace} is excluded: the webhook's selectors never send its pods; --exclude-namespaces)"
            ),
            warnings: Vec::new(),
        }));
    }
    let misplaced = misplaced::warnings(obj, &kind, tokens);
    let prefix = PointerBuf::from_tokens(tokens.iter().copied());

    let template = match obj.pointer_mut(prefix.as_str()) {
        Some(Value::Object(t)) => t,
        _ => return Err(format!("{object}: has no pod template at {prefix}")),
    };
    let pod: Pod = serde_path_to_error::deserialize(pod_of(&kind, template)).map_err(|e| {
        format!(
            "{object}: not a valid pod (template): {}",
            field_error(tokens, &e)
        )
    })?;

    let read = stand_in::read(lookup, config.sidecar.role_policy, &pod, &namespace)
        .map_err(|problem| format!("{object}: {problem}"))?;
    // Offline there is no server: injection assumes native sidecars are
    // available (the chart requires Kubernetes 1.29).
    let facts = read.facts(&namespace, None);
    let outcome = inject::inject(&pod, &facts, &config.sidecar)
        .map_err(|denial| format!("{object}: {denial}"))?;
    let injection = match outcome {
        Outcome::Skipped(skip) => {
            return Ok(Some(Report {
                object,
                outcome: format!("unchanged ({})", skip_reason(&skip)),
                warnings: misplaced.into_iter().chain(skip.warning()).collect(),
            }));
        }
        Outcome::Injected(injection) => *injection,
    };
    if !template.get("metadata").is_some_and(Value::is_object) {
        template.insert("metadata".into(), Value::Object(Map::new()));
    }
    let patch = rebase(injection.patch, &prefix);
    json_patch::patch(obj, &patch)
        .map_err(|e| format!("{object}: applying the patch failed: {e}"))?;
    Ok(Some(Report {
        object,
        outcome: "injected".to_owned(),
        warnings: misplaced.into_iter().chain(injection.warnings).collect(),
    }))
}

/// Injects every pod and pod template in `input`; returns the YAML to
/// print and one report per pod. Nothing is returned if any pod is refused.
pub fn inject_yaml(
    input: &str,
    config: &InjectConfig,
) -> Result<(String, Vec<Report>), InjectError> {
    // The YAML reader recurses per level of nesting, with large frames
    // in debug builds: the depth it admits must not depend on the
    // caller's stack (a test thread's 2 MiB, a lowered `ulimit -s`).
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("inject".into())
            .stack_size(READER_STACK_BYTES)
            .spawn_scoped(scope, || inject_documents(input, config))
            .map_err(|e| InjectError::Io(format!("cannot start the reader: {e}")))?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Stack of the thread `inject` reads on: what `MAX_DEPTH` levels take in
/// a debug build (about 8 MiB) with room; only what is used is committed.
const READER_STACK_BYTES: usize = 64 * 1024 * 1024;

fn inject_documents(
    input: &str,
    config: &InjectConfig,
) -> Result<(String, Vec<Report>), InjectError> {
    let mut docs = parse_documents(input)?;
    let (lookup, mut problems) = cluster(&mut docs, config);
    let mut reports = Vec::new();
    for (n, doc) in docs.iter_mut().enumerate() {
        for (path, obj) in objects_mut(doc) {
            // Documents with content are counted: empty ones (helm's
            // `# Source:` headers of empty templates) are never seen.
            let position = if path.is_empty() {
                format!("document {}", n + 1)
            } else {
                format!("document {}, {path}", n + 1)
            };
            match inject_object(obj, &position, &lookup, config) {
                Ok(Some(report)) => reports.push(report),
                Ok(None) => {}
                Err(problem) => problems.push(problem),
            }
        }
    }
    if !problems.is_empty() {
        return Err(InjectError::Denied(problems));
    }
    Ok((write_documents(&docs)?, reports))
}

/// How `bedrock-broker inject` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectStatus {
    Ok,
    /// At least one pod was refused (exit status 1).
    Denied,
    /// The input could not be read (exit status 2).
    BadInput,
}

/// Runs `bedrock-broker inject`: YAML from `input` to `output`, reports and
/// errors to `errors`.
pub fn run_inject(
    config: &InjectConfig,
    mut input: impl Read,
    mut output: impl Write,
    mut errors: impl Write,
) -> InjectStatus {
    let mut text = String::new();
    if let Err(e) = input.read_to_string(&mut text) {
        let _ = writeln!(
            errors,
            "bedrock-broker inject: {}",
            InjectError::Io(e.to_string())
        );
        return InjectStatus::BadInput;
    }
    match inject_yaml(&text, config) {
        Ok((yaml, reports)) => {
            for r in &reports {
                let _ = writeln!(errors, "bedrock-broker inject: {r}");
                for w in &r.warnings {
                    let _ = writeln!(errors, "bedrock-broker inject: {}: warning: {w}", r.object);
                }
            }
            if let Err(e) = output
                .write_all(yaml.as_bytes())
                .and_then(|()| output.flush())
            {
                let _ = writeln!(
                    errors,
                    "bedrock-broker inject: cannot write the output: {e}"
                );
                return InjectStatus::BadInput;
            }
            InjectStatus::Ok
        }
        Err(
            e @ (InjectError::Yaml(_)
            | InjectError::Json(_)
            | InjectError::TooLarge(_)
            | InjectError::TooDeep(_)
            | InjectError::Io(_)),
        ) => {
            let _ = writeln!(errors, "bedrock-broker inject: {e}");
            InjectStatus::BadInput
        }
        Err(InjectError::Denied(problems)) => {
            for p in problems {
                let _ = writeln!(errors, "bedrock-broker inject: {p}");
            }
            InjectStatus::Denied
        }
    }
}
