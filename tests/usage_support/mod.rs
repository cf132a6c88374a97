//! Event-stream messages as Bedrock frames them, for the usage tap's
//! integration test and its benchmark (bench/usage_decode.rs includes
//! this file).

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;

/// One JSON event of type `kind`, framed by aws-smithy-eventstream.
pub fn event(kind: &str, payload: String) -> Vec<u8> {
    let message = Message::new(Bytes::from(payload))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(kind.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    // Writing to a Vec fails only for a message past the format's limits.
    if aws_smithy_eventstream::frame::write_message_to(&message, &mut out).is_err() {
        out.clear();
    }
    out
}
