//! What a request is, from its path, computed once: which upstream it goes
//! to, which operation it is (a bounded metric label) and which error
//! dialect its client speaks. The only place that knows the path prefixes.

use super::error::Dialect;
use super::operation::Operation;

/// The upstream family of a path; the prefix is removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// The Bedrock runtime: everything without another prefix.
    Runtime,
    /// `/agent-runtime/`: the Agents runtime.
    AgentRuntime,
    /// `/mantle/`: Bedrock Mantle.
    Mantle,
}

impl Prefix {
    /// The client path prefix, with its trailing slash; empty for the runtime.
    pub const fn path(self) -> &'static str {
        match self {
            Self::Runtime => "",
            Self::AgentRuntime => "/agent-runtime/",
            Self::Mantle => "/mantle/",
        }
    }
}

/// A request's path, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub prefix: Prefix,
    pub operation: Operation,
    pub dialect: Dialect,
}

/// Classifies a raw request path (the model id segment is never looked at
/// beyond its position, so ids with `:` or encoded `/` are fine).
pub fn classify(path: &str) -> Classified {
    if let Some(rest) = path.strip_prefix(Prefix::AgentRuntime.path()) {
        return Classified {
            prefix: Prefix::AgentRuntime,
            operation: agent_runtime_operation(rest),
            dialect: Dialect::Aws,
        };
    }
    if let Some(rest) = path.strip_prefix(Prefix::Mantle.path()) {
        // Mantle serves most models' OpenAI API under `v1/`, some under
        // `openai/v1/`, and Anthropic's Messages API under `anthropic/v1/`.
        let operation = if let Some(rest) = rest.strip_prefix("anthropic/v1/") {
            anthropic_operation(rest)
        } else {
            rest.strip_prefix("v1/")
                .or_else(|| rest.strip_prefix("openai/v1/"))
                .map_or(Operation::Other, openai_operation)
        };
        return Classified {
            prefix: Prefix::Mantle,
            operation,
            dialect: Dialect::OpenAi,
        };
    }
    let (operation, dialect) = if let Some(rest) = path.strip_prefix("/openai/") {
        (
            rest.strip_prefix("v1/")
                .map_or(Operation::Other, openai_operation),
            Dialect::OpenAi,
        )
    } else if let Some(rest) = path.strip_prefix("/anthropic/v1/") {
        (anthropic_operation(rest), Dialect::Aws)
    } else {
        (runtime_operation(path), Dialect::Aws)
    };
    Classified {
        prefix: Prefix::Runtime,
        operation,
        dialect,
    }
}

/// The model id of a `/model/{modelId}/...` path, still percent-encoded.
pub fn model_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/model/")?;
    // `memchr` rather than `split('/')`: this runs on every request with
    // usage metrics on, and the vectorised search is cheaper on ids.
    Some(memchr::memchr(b'/', rest.as_bytes()).map_or(rest, |end| &rest[..end]))
}

fn agent_runtime_operation(rest: &str) -> Operation {
    let rest = rest.trim_end_matches('/');
    let segments = || rest.split('/');
    if rest == "retrieveAndGenerate" || rest == "retrieveAndGenerateStream" {
        Operation::RetrieveAndGenerate
    } else if rest.starts_with("knowledgebases/") && rest.ends_with("/retrieve") {
        Operation::Retrieve
    } else if rest.starts_with("agents/") && (rest.ends_with("/text") || segments().count() == 2) {
        // InvokeAgent (`agents/{id}/agentAliases/{alias}/sessions/{s}/text`)
        // and InvokeInlineAgent (`agents/{sessionId}`).
        Operation::InvokeAgent
    } else if rest.starts_with("flows/")
        && segments().nth(2) == Some("aliases")
        && segments().count() == 4
    {
        Operation::InvokeFlow
    } else if rest == "rerank" {
        Operation::Rerank
    } else {
        Operation::Other
    }
}

fn openai_operation(rest: &str) -> Operation {
    match rest.trim_end_matches('/') {
        "chat/completions" => Operation::ChatCompletions,
        "completions" => Operation::Completions,
        "embeddings" => Operation::Embeddings,
        "models" => Operation::Models,
        r if r.starts_with("models/") => Operation::Models,
        r if r == "responses" || r.starts_with("responses/") => Operation::Responses,
        _ => Operation::Other,
    }
}

/// The Anthropic Messages API, as the runtime (`/anthropic/v1/`) and
/// Mantle (`/mantle/anthropic/v1/`) serve it.
fn anthropic_operation(rest: &str) -> Operation {
    match rest.trim_end_matches('/') {
        "messages" => Operation::Messages,
        "messages/count_tokens" => Operation::CountTokens,
        _ => Operation::Other,
    }
}

fn runtime_operation(path: &str) -> Operation {
    if let Some(rest) = path.strip_prefix("/model/") {
        // /model/{modelId}/{action}; the id has no raw '/' (it is encoded).
        return match rest.rsplit_once('/').map(|(_, action)| action) {
            Some("converse") => Operation::Converse,
            Some("converse-stream") => Operation::ConverseStream,
            Some("invoke") => Operation::Invoke,
            Some("invoke-with-response-stream") => Operation::InvokeStream,
            Some("invoke-with-bidirectional-stream") => Operation::InvokeBidirectionalStream,
            Some("count-tokens") => Operation::CountTokens,
            _ => Operation::Other,
        };
    }
    if path.starts_with("/guardrail/") && path.ends_with("/apply") {
        return Operation::ApplyGuardrail;
    }
    if path == "/guardrail-checks/invoke" {
        return Operation::GuardrailChecks;
    }
    if path == "/async-invoke" || path.starts_with("/async-invoke/") {
        return Operation::AsyncInvoke;
    }
    Operation::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_runtime_openai_mantle_and_agent_paths() {
        for (path, op) in [
            ("/openai/v1/chat/completions", "chat_completions"),
            ("/openai/v1/models", "models"),
            ("/openai/v1/responses", "responses"),
            ("/openai/v1/embeddings", "embeddings"),
            ("/model/anthropic.claude-3-haiku-20240307-v1:0/converse", "converse"),
            (
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3/converse-stream",
                "converse_stream",
            ),
            ("/model/m/invoke", "invoke"),
            ("/model/m/invoke-with-response-stream", "invoke_stream"),
            (
                "/model/amazon.nova-sonic-v1:0/invoke-with-bidirectional-stream",
                "invoke_bidirectional_stream",
            ),
            ("/model/m/count-tokens", "count_tokens"),
            ("/guardrail/gr1/version/1/apply", "apply_guardrail"),
            ("/guardrail-checks/invoke", "guardrail_checks"),
            ("/async-invoke", "async_invoke"),
            ("/async-invoke/arn%3A", "async_invoke"),
            ("/mantle/v1/chat/completions", "chat_completions"),
            ("/mantle/v1/responses", "responses"),
            ("/mantle/openai/v1/chat/completions", "chat_completions"),
            ("/mantle/anthropic/v1/messages", "messages"),
            ("/mantle/anthropic/v1/messages/count_tokens", "count_tokens"),
            ("/anthropic/v1/messages", "messages"),
            ("/anthropic/v1/messages/", "messages"),
            ("/anthropic/v1/messages/count_tokens", "count_tokens"),
            ("/anthropic/v1/models", "other"),
            ("/anthropic/messages", "other"),
            ("/agent-runtime/knowledgebases/KB12/retrieve", "retrieve"),
            ("/agent-runtime/retrieveAndGenerate", "retrieve_and_generate"),
            (
                "/agent-runtime/agents/A1/agentAliases/AL1/sessions/s-1/text",
                "invoke_agent",
            ),
            ("/agent-runtime/agents/session-9", "invoke_agent"),
            ("/agent-runtime/flows/F1/aliases/FA1", "invoke_flow"),
            ("/agent-runtime/flows/F1/aliases/FA1/executions", "other"),
            ("/agent-runtime/rerank", "rerank"),
            ("/agent-runtime/agents/A1/agentAliases/AL1/memories", "other"),
            ("/agent-runtime/flows/x", "other"),
            ("/model/m/unknown", "other"),
            ("/", "other"),
            ("/secret-looking-path/abc", "other"),
        ] {
            assert_eq!(classify(path).operation.as_str(), op, "{path}");
        }
    }

    #[test]
    fn prefixes_and_dialects() {
        let c = classify("/mantle/v1/models");
        assert_eq!((c.prefix, c.dialect), (Prefix::Mantle, Dialect::OpenAi));
        let c = classify("/openai/v1/models");
        assert_eq!((c.prefix, c.dialect), (Prefix::Runtime, Dialect::OpenAi));
        let c = classify("/mantle/anthropic/v1/messages");
        assert_eq!((c.prefix, c.dialect), (Prefix::Mantle, Dialect::OpenAi));
        let c = classify("/anthropic/v1/messages");
        assert_eq!((c.prefix, c.dialect), (Prefix::Runtime, Dialect::Aws));
        let c = classify("/agent-runtime/retrieveAndGenerate");
        assert_eq!((c.prefix, c.dialect), (Prefix::AgentRuntime, Dialect::Aws));
        // Not a prefix match: stays on the runtime.
        assert_eq!(classify("/mantle").prefix, Prefix::Runtime);
        assert_eq!(classify("/model/m/converse").dialect, Dialect::Aws);
        assert_eq!(model_in_path("/model/a%3A0/converse"), Some("a%3A0"));
        assert_eq!(model_in_path("/openai/v1/models"), None);
        assert_eq!(model_in_path("/model/just-an-id"), Some("just-an-id"));
        assert_eq!(model_in_path("/model//converse"), Some(""));
    }
}
