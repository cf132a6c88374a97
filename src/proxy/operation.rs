//! The bounded `operation` label, derived from the request path.

/// What kind of Bedrock call a request is. A small fixed set, so it can be a
/// metric label; anything unrecognised is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    Models,
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
    InvokeBidirectionalStream,
    CountTokens,
    ApplyGuardrail,
    AsyncInvoke,
    Retrieve,
    RetrieveAndGenerate,
    InvokeAgent,
    Other,
}

impl Operation {
    pub const ALL: [Operation; 17] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Responses,
        Self::Embeddings,
        Self::Models,
        Self::Converse,
        Self::ConverseStream,
        Self::Invoke,
        Self::InvokeStream,
        Self::InvokeBidirectionalStream,
        Self::CountTokens,
        Self::ApplyGuardrail,
        Self::AsyncInvoke,
        Self::Retrieve,
        Self::RetrieveAndGenerate,
        Self::InvokeAgent,
        Self::Other,
    ];

    /// Position in [`Operation::ALL`], for per-operation arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Responses => "responses",
            Self::Embeddings => "embeddings",
            Self::Models => "models",
            Self::Converse => "converse",
            Self::ConverseStream => "converse_stream",
            Self::Invoke => "invoke",
            Self::InvokeStream => "invoke_stream",
            Self::InvokeBidirectionalStream => "invoke_bidirectional_stream",
            Self::CountTokens => "count_tokens",
            Self::ApplyGuardrail => "apply_guardrail",
            Self::AsyncInvoke => "async_invoke",
            Self::Retrieve => "retrieve",
            Self::RetrieveAndGenerate => "retrieve_and_generate",
            Self::InvokeAgent => "invoke_agent",
            Self::Other => "other",
        }
    }

    /// Classifies a raw request path (the model id segment is never looked at
    /// beyond its position, so ids with `:` or encoded `/` are fine).
    pub fn from_path(path: &str) -> Self {
        if let Some(rest) = path.strip_prefix("/agent-runtime/") {
            let rest = rest.trim_end_matches('/');
            return if rest == "retrieveAndGenerate" || rest == "retrieveAndGenerateStream" {
                Self::RetrieveAndGenerate
            } else if rest.starts_with("knowledgebases/") && rest.ends_with("/retrieve") {
                Self::Retrieve
            } else if rest.starts_with("agents/") && rest.ends_with("/text") {
                Self::InvokeAgent
            } else {
                Self::Other
            };
        }
        let openai = path
            .strip_prefix("/openai/v1/")
            .or_else(|| path.strip_prefix("/mantle/v1/"));
        if let Some(rest) = openai {
            return match rest.trim_end_matches('/') {
                "chat/completions" => Self::ChatCompletions,
                "completions" => Self::Completions,
                "embeddings" => Self::Embeddings,
                "models" => Self::Models,
                r if r.starts_with("models/") => Self::Models,
                r if r == "responses" || r.starts_with("responses/") => Self::Responses,
                _ => Self::Other,
            };
        }
        if let Some(rest) = path.strip_prefix("/model/") {
            // /model/{modelId}/{action}; the id has no raw '/' (it is encoded).
            return match rest.rsplit_once('/').map(|(_, action)| action) {
                Some("converse") => Self::Converse,
                Some("converse-stream") => Self::ConverseStream,
                Some("invoke") => Self::Invoke,
                Some("invoke-with-response-stream") => Self::InvokeStream,
                Some("invoke-with-bidirectional-stream") => Self::InvokeBidirectionalStream,
                Some("count-tokens") => Self::CountTokens,
                _ => Self::Other,
            };
        }
        if path.starts_with("/guardrail/") && path.ends_with("/apply") {
            return Self::ApplyGuardrail;
        }
        if path == "/async-invoke" || path.starts_with("/async-invoke/") {
            return Self::AsyncInvoke;
        }
        Self::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_sits_at_its_index() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }

    #[test]
    fn classifies_runtime_and_openai_paths() {
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
            ("/async-invoke", "async_invoke"),
            ("/async-invoke/arn%3A", "async_invoke"),
            ("/mantle/v1/chat/completions", "chat_completions"),
            ("/mantle/v1/responses", "responses"),
            ("/agent-runtime/knowledgebases/KB12/retrieve", "retrieve"),
            ("/agent-runtime/retrieveAndGenerate", "retrieve_and_generate"),
            (
                "/agent-runtime/agents/A1/agentAliases/AL1/sessions/s-1/text",
                "invoke_agent",
            ),
            ("/agent-runtime/flows/x", "other"),
            ("/model/m/unknown", "other"),
            ("/", "other"),
            ("/secret-looking-path/abc", "other"),
        ] {
            assert_eq!(Operation::from_path(path).as_str(), op, "{path}");
        }
    }
}
