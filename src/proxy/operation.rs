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
    GuardrailChecks,
    AsyncInvoke,
    Retrieve,
    RetrieveAndGenerate,
    InvokeAgent,
    InvokeFlow,
    Rerank,
    /// The Anthropic Messages API (`/anthropic/v1/messages`).
    Messages,
    Other,
}

impl Operation {
    pub const ALL: [Operation; 21] = [
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
        Self::GuardrailChecks,
        Self::AsyncInvoke,
        Self::Retrieve,
        Self::RetrieveAndGenerate,
        Self::InvokeAgent,
        Self::InvokeFlow,
        Self::Rerank,
        Self::Messages,
        Self::Other,
    ];

    /// Whether Bedrock's answer to this operation counts tokens the proxy
    /// reads. The others (guardrails, token counting, async jobs, the
    /// agents runtime, whatever is unrecognised) open no usage tap and
    /// take no `model` slot: an agent's `chunk` events carry its answer's
    /// text, and an answer that reads like a usage object (a JSON report)
    /// was counted as tokens.
    ///
    /// Only the call that makes the tokens counts them: a `POST`, and for
    /// the Responses API its creation (`/responses`), not a retrieval or a
    /// cancellation, which repeat the usage already counted.
    pub fn reports_usage(self, method: &http::Method, path: &str) -> bool {
        if method != http::Method::POST {
            return false;
        }
        match self {
            Self::Responses => matches!(
                path.trim_end_matches('/'),
                "/openai/v1/responses" | "/mantle/v1/responses" | "/mantle/openai/v1/responses"
            ),
            Self::ChatCompletions
            | Self::Messages
            | Self::Completions
            | Self::Embeddings
            | Self::Converse
            | Self::ConverseStream
            | Self::Invoke
            | Self::InvokeStream => true,
            _ => false,
        }
    }

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
            Self::GuardrailChecks => "guardrail_checks",
            Self::AsyncInvoke => "async_invoke",
            Self::Retrieve => "retrieve",
            Self::RetrieveAndGenerate => "retrieve_and_generate",
            Self::InvokeAgent => "invoke_agent",
            Self::InvokeFlow => "invoke_flow",
            Self::Rerank => "rerank",
            Self::Messages => "messages",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calls_that_make_tokens_are_read_for_them() {
        use http::Method;
        let post = |op: Operation, path| op.reports_usage(&Method::POST, path);
        assert!(post(Operation::Converse, "/model/m/converse"));
        assert!(post(Operation::Responses, "/openai/v1/responses"));
        // Retrieving a response (or cancelling one) repeats the usage its
        // creation reported: counted twice, under `unknown`.
        assert!(!Operation::Responses.reports_usage(&Method::GET, "/openai/v1/responses/r1"));
        assert!(!post(
            Operation::Responses,
            "/openai/v1/responses/r1/cancel"
        ));
        assert!(!post(
            Operation::Responses,
            "/openai/v1/responses/r1/responses"
        ));
        assert!(post(Operation::Responses, "/mantle/v1/responses/"));
        assert!(post(Operation::Responses, "/mantle/openai/v1/responses"));
        assert!(post(Operation::Messages, "/anthropic/v1/messages"));
        assert!(
            !Operation::ChatCompletions.reports_usage(&Method::GET, "/openai/v1/chat/completions")
        );
        assert!(!post(Operation::InvokeAgent, "/agent-runtime/agents/s1"));
    }

    #[test]
    fn every_operation_sits_at_its_index() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}
