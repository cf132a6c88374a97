//! Reading and writing the manifests `inject` takes: YAML documents or
//! a stream of JSON objects, as kubectl reads them, within limits that
//! stop alias bombs.

use serde_json::Value;

use super::InjectError;

/// Nodes one document may hold: a Kubernetes object is at most the API
/// server's 3 MiB request, and a node takes a few bytes at least.
const MAX_NODES_PER_DOCUMENT: usize = 1_000_000;

/// Levels of nesting a document may reach. A CRD's schema nests two a
/// field, and real ones go past the YAML reader's default of 64;
/// serde_json reads JSON to 127 (its recursion limit of 128 counts the
/// value past the last), so both readers stop at the same depth.
const MAX_DEPTH: usize = 127;

/// Reads YAML documents as `kubectl` would. The parser's limits (which
/// stop alias bombs) hold per document: `helm template` of a chart with
/// large CRDs is many documents, each within them.
pub fn parse_documents(input: &str) -> Result<Vec<Value>, InjectError> {
    // JSON objects one after another (`jq -c '.items[]'`): kubectl reads
    // such a stream, YAML does not. As kubectl's decoder, YAML is read
    // instead when the first value is no JSON (a flow mapping) or only one
    // came before what is not (`---` and YAML after a JSON object).
    if input.trim_start().starts_with('{') {
        let mut docs = Vec::new();
        for doc in serde_json::Deserializer::from_str(input).into_iter::<Value>() {
            match doc {
                Ok(doc) => docs.push(doc),
                Err(e) if too_deep(&e) => {
                    return Err(InjectError::TooDeep(format!(
                        "a JSON value nests deeper than {MAX_DEPTH} levels ({e})"
                    )))
                }
                Err(_) if docs.len() < 2 => return parse_yaml(input),
                Err(e) => return Err(InjectError::Json(e.to_string())),
            }
        }
        docs.retain(|d| !d.is_null());
        return Ok(docs);
    }
    parse_yaml(input)
}

fn parse_yaml(input: &str) -> Result<Vec<Value>, InjectError> {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    // A key written twice: kubectl (and JSON input here) takes the last;
    // refusing it stopped a pipeline kubectl would have applied.
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::LastWins;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_NODES_PER_DOCUMENT;
    budget.max_events = 4 * MAX_NODES_PER_DOCUMENT;
    budget.max_reader_input_bytes = None;
    budget.max_depth = MAX_DEPTH;
    // Past the depth limit, so that deep flow collections trip it too
    // (and get its message) rather than the parser's own.
    budget.flow_nesting_limit = 2 * MAX_DEPTH;
    options.budget = Some(budget);
    let mut reader = input.as_bytes();
    let mut docs = Vec::new();
    // The limits above hold per document: aliases in many small documents
    // would expand past them in all. Without aliases a node takes a byte
    // of input at least, so past one document's worth more nodes than
    // bytes means expansion.
    let most = MAX_NODES_PER_DOCUMENT + input.len();
    let mut total = 0;
    for doc in serde_saphyr::read_with_options::<_, Value>(&mut reader, options) {
        match doc {
            Ok(doc) if doc.is_null() => {}
            Ok(doc) => {
                total += nodes(&doc);
                if total > most {
                    return Err(InjectError::TooLarge(format!(
                        "its {} documents so far hold over {most} nodes, aliases expanded, for {} bytes: aliases expand past what inject reads",
                        docs.len() + 1,
                        input.len()
                    )));
                }
                docs.push(doc);
            }
            Err(e) => return Err(yaml_error(&e)),
        }
    }
    Ok(docs)
}

/// Nodes of a document as the YAML reader counts them: each collection,
/// key and scalar.
fn nodes(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nodes).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(|v| 1 + nodes(v)).sum::<usize>(),
        _ => 1,
    }
}

/// A limit breached is no syntax error: say which, and where.
fn yaml_error(e: &serde_saphyr::Error) -> InjectError {
    let mut inner = e;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    match inner {
        serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Depth { .. },
            ..
        } => too_deep_at(e),
        serde_saphyr::Error::Budget { breach, .. } => {
            let line = e.location().map(|l| l.line()).unwrap_or_default();
            let limit = match breach {
                serde_saphyr::budget::BudgetBreach::Nodes { .. } => {
                    format!(
                        "; a document may hold {MAX_NODES_PER_DOCUMENT} nodes, aliases expanded"
                    )
                }
                _ => String::new(),
            };
            InjectError::TooLarge(format!(
                "the document around line {line} is past a limit of the YAML reader ({breach:?}{limit})"
            ))
        }
        // The scanner reads a flow collection ahead of the limit above,
        // and has a limit of its own (`flow_nesting_limit`) for it.
        serde_saphyr::Error::ExternalMessage { source, .. }
            if matches!(
                &**source,
                serde_saphyr::ExternalMessageSource::Parser(scan)
                    if matches!(scan.kind(), serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded)
            ) =>
        {
            too_deep_at(e)
        }
        _ => InjectError::Yaml(e.to_string()),
    }
}

fn too_deep_at(e: &serde_saphyr::Error) -> InjectError {
    let line = e.location().map(|l| l.line()).unwrap_or_default();
    InjectError::TooDeep(format!(
        "the document around line {line} nests deeper than {MAX_DEPTH} levels, the most inject reads"
    ))
}

/// serde_json's recursion limit (128), which it reports as a syntax error.
fn too_deep(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("recursion limit exceeded")
}

/// Writes documents as a YAML stream.
pub fn write_documents(docs: &[Value]) -> Result<String, InjectError> {
    serde_saphyr::to_string_multiple(docs).map_err(|e| InjectError::Yaml(e.to_string()))
}
