//! Settings written on a workload's own metadata: the webhook reads pods,
//! which get only their template's labels and annotations, so there they
//! change nothing, and a workload meant to opt in is silently left out.

use serde_json::Value;

use crate::webhook::inject::annotations::names;

/// A warning per kind of setting (the opt-in label, `bedrock-broker.io/`
/// annotations) on the workload's metadata and not on its pod template
/// (at `template`; empty for a Pod, which has none). Set on both
/// (kustomize's `commonLabels`), the template's counts and nothing is said.
pub fn warnings(obj: &Value, kind: &str, template: &[&str]) -> Vec<String> {
    if template.is_empty() {
        return Vec::new();
    }
    let template_metadata = pointer(obj, template, "metadata");
    let in_template = |map: &str, key: &str| {
        template_metadata
            .and_then(|m| m.get(map))
            .is_some_and(|m| m.get(key).is_some())
    };
    let own = |map: &str| -> Vec<&str> {
        obj.pointer(&format!("/metadata/{map}"))
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
            .map(String::as_str)
            .collect()
    };
    let place = format!("{}.metadata", template.join("."));
    let mut warnings = Vec::new();

    let label = names::INJECT_LABEL;
    // The opt-in written as an annotation belongs in the labels as well.
    let written_as = if own("labels").contains(&label) {
        Some("label")
    } else if own("annotations").contains(&label) {
        Some("annotation")
    } else {
        None
    };
    if let Some(written_as) = written_as.filter(|_| !in_template("labels", label)) {
        // `"false"` there was meant to keep the pods out (of an opted-in
        // namespace): advice to opt them in would say the opposite.
        let map = if written_as == "label" {
            "labels"
        } else {
            "annotations"
        };
        let opting = match obj.pointer(&format!("/metadata/{map}/{}", label.replace('/', "~1"))) {
            Some(Value::String(v)) if v == "false" => "out",
            _ => "in",
        };
        warnings.push(format!(
            "the {written_as} {label} is on the {kind}'s own metadata, which no pod gets: to opt its pods {opting}, put it on the pod template as a label, {place}.labels"
        ));
    }
    let annotations: Vec<&str> = own("annotations")
        .into_iter()
        .filter(|k| k.starts_with(names::PREFIX) && *k != label)
        .filter(|k| !in_template("annotations", k))
        .collect();
    match annotations.as_slice() {
        [] => {}
        [one] => warnings.push(format!(
            "the annotation {one} is on the {kind}'s own metadata, which no pod gets: put it on the pod template, {place}.annotations"
        )),
        many => warnings.push(format!(
            "the annotations {} are on the {kind}'s own metadata, which no pod gets: put them on the pod template, {place}.annotations",
            many.join(", ")
        )),
    }
    warnings
}

/// The value at `template` then `field` inside `obj`.
fn pointer<'v>(obj: &'v Value, template: &[&str], field: &str) -> Option<&'v Value> {
    template
        .iter()
        .chain([&field])
        .try_fold(obj, |v, key| v.get(key))
}
