//! STS's answers as the Query protocol sends them: XML bodies, a `Date`
//! header, a request id. The SDK parses these exactly as it parses the
//! real service's, so error codes reach `sts::source_error` unchanged.

use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::date_time::{DateTime, Format};

const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Whole seconds, as STS writes timestamps.
fn format(t: SystemTime, f: Format) -> String {
    let secs = DateTime::from(t).secs();
    DateTime::from_secs(secs)
        .fmt(f)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn response(status: u16, body: String, now: SystemTime, request_id: &str) -> HttpResponse {
    let status = StatusCode::try_from(status)
        .unwrap_or(StatusCode::from(http::StatusCode::INTERNAL_SERVER_ERROR));
    let mut r = HttpResponse::new(status, SdkBody::from(body));
    r.headers_mut().insert("content-type", "text/xml");
    r.headers_mut()
        .insert("x-amzn-requestid", request_id.to_owned());
    r.headers_mut()
        .insert("date", format(now, Format::HttpDate));
    r
}

/// A Query-protocol error: `Sender` faults are 4xx, `Receiver` faults 5xx.
pub fn error(status: u16, code: &str, message: &str, now: SystemTime, id: &str) -> HttpResponse {
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let body = format!(
        "<ErrorResponse xmlns=\"{NAMESPACE}\">\n  <Error>\n    <Type>{kind}</Type>\n    \
         <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  \
         <RequestId>{id}</RequestId>\n</ErrorResponse>\n"
    );
    response(status, body, now, id)
}

/// Credentials valid for `lifetime` from `now`, for the pod whose session
/// name is `session`. The keys are labels, not secrets: nothing signs with them.
pub fn issued(session: &str, lifetime: Duration, now: SystemTime, id: &str) -> HttpResponse {
    let expiration = format(now + lifetime, Format::DateTime);
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{NAMESPACE}\">\n  \
         <AssumeRoleWithWebIdentityResult>\n    \
         <SubjectFromWebIdentityToken>system:serviceaccount:fleet:{session}</SubjectFromWebIdentityToken>\n    \
         <Audience>sts.amazonaws.com</Audience>\n    <AssumedRoleUser>\n      \
         <Arn>arn:aws:sts::123456789012:assumed-role/fleet/{session}</Arn>\n      \
         <AssumedRoleId>AROAFLEETSIMULATION:{session}</AssumedRoleId>\n    </AssumedRoleUser>\n    \
         <Credentials>\n      <AccessKeyId>ASIAFLEET{id}</AccessKeyId>\n      \
         <SecretAccessKey>simulated-{id}</SecretAccessKey>\n      \
         <SessionToken>simulated-session-{id}</SessionToken>\n      \
         <Expiration>{expiration}</Expiration>\n    </Credentials>\n    \
         <Provider>oidc.fleet.example</Provider>\n  </AssumeRoleWithWebIdentityResult>\n  \
         <ResponseMetadata>\n    <RequestId>{id}</RequestId>\n  </ResponseMetadata>\n\
         </AssumeRoleWithWebIdentityResponse>\n"
    );
    response(200, body, now, id)
}
