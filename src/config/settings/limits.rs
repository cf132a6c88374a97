//! The limits of every listener: header-read and idle timeouts, a
//! connection limit and the largest request head, each a flag with a
//! documented default. The proxy is reached from inside the pod only; the
//! admin ports and the webhook from other pods, so theirs are tighter and
//! also count connections per peer.

use crate::config::setting::{Setting, WhenUnset::Value};

/// The four limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_read_timeout: Setting,
    pub idle_timeout: Setting,
    pub max_connections: Setting,
    pub max_header_bytes: Setting,
}

impl ServerLimits {
    pub const fn all(&self) -> [Setting; 4] {
        [
            self.header_read_timeout,
            self.idle_timeout,
            self.max_connections,
            self.max_header_bytes,
        ]
    }
}

/// What a full listener does with a newcomer: inside the pod, or reached
/// by other pods (which count connections per peer).
macro_rules! when_full {
    (in_pod) => {
        "beyond it a kept-alive connection idle a second or more is closed to make room, else the newcomer is closed at once"
    };
    (reached_by_pods) => {
        "beyond it a busier peer's idle or stalled connection (else one of a peer at its whole share, else a request whose head or body is still arriving from a peer holding two more, or a head or body that has been arriving for a second from a peer holding more) is closed to make room for a peer with fewer, else the newcomer is closed at once"
    };
}

/// What the timeouts' help says of HTTP/2, on the one listener that
/// speaks it; the others speak HTTP/1 only.
macro_rules! protocol_note {
    (http2, header) => {
        " (HTTP/1: HTTP/2 connections are bounded by the idle timeout)"
    };
    (http2, idle) => {
        " (HTTP/2 PINGs do not keep it open)"
    };
    (http1, header) => {
        " (it speaks HTTP/1 only)"
    };
    (http1, idle) => {
        ""
    };
}

macro_rules! server_limits {
    ($flag:literal, $env:literal, $what:literal, $header:literal, $idle:literal, $conns:literal, $bytes:literal, $full:ident, $protocol:ident) => {
        ServerLimits {
            header_read_timeout: Setting {
                flag: concat!($flag, "header-read-timeout"),
                env: &[concat!($env, "HEADER_READ_TIMEOUT")],
                default: Value($header),
                help: concat!(
                    "Time a client of the ", $what,
                    " has to send a request's headers, and how long a kept-alive connection may wait for its next request",
                    protocol_note!($protocol, header)
                ),
            },
            idle_timeout: Setting {
                flag: concat!($flag, "idle-timeout"),
                env: &[concat!($env, "IDLE_TIMEOUT")],
                default: Value($idle),
                help: concat!(
                    "A connection to the ", $what,
                    " that has had no request in flight for this long is closed",
                    protocol_note!($protocol, idle)
                ),
            },
            max_connections: Setting {
                flag: concat!($flag, "max-connections"),
                env: &[concat!($env, "MAX_CONNECTIONS")],
                default: Value($conns),
                help: concat!(
                    "Open connections to the ", $what,
                    " at most; ", when_full!($full)
                ),
            },
            max_header_bytes: Setting {
                flag: concat!($flag, "max-header-bytes"),
                env: &[concat!($env, "MAX_HEADER_BYTES")],
                default: Value($bytes),
                help: concat!(
                    "Largest request head (request line and headers) the ", $what,
                    " reads, in bytes (at least 8192); with the connection limit, its memory budget for heads"
                ),
            },
        }
    };
}

/// The signing proxy: in-pod clients only, which may keep pools of
/// connections and send large headers (long tracing baggage).
pub const PROXY: ServerLimits = server_limits!(
    "",
    "BEDROCK_BROKER_",
    "proxy",
    "30s",
    "90s",
    "256",
    "32768",
    in_pod,
    http2
);

/// The sidecar's admin port: probes and Prometheus, a handful of clients.
pub const ADMIN: ServerLimits = server_limits!(
    "admin-",
    "BEDROCK_BROKER_ADMIN_",
    "admin server",
    "5s",
    "30s",
    "32",
    "8192",
    reached_by_pods,
    http1
);

/// The container-credentials endpoint: a few SDKs in the pod.
pub const CREDENTIALS: ServerLimits = server_limits!(
    "credentials-",
    "BEDROCK_BROKER_CREDENTIALS_",
    "container-credentials endpoint",
    "5s",
    "30s",
    "32",
    "8192",
    in_pod,
    http1
);

/// The webhook: the API server pools a few connections.
pub const WEBHOOK: ServerLimits = server_limits!(
    "",
    "BEDROCK_BROKER_WEBHOOK_",
    "webhook",
    "10s",
    "60s",
    "256",
    "16384",
    reached_by_pods,
    http1
);

/// The webhook's admin port.
pub const WEBHOOK_ADMIN: ServerLimits = server_limits!(
    "admin-",
    "BEDROCK_BROKER_WEBHOOK_ADMIN_",
    "webhook's admin server",
    "5s",
    "30s",
    "32",
    "8192",
    reached_by_pods,
    http1
);

/// Kubelet probes and a Prometheus scrape need a few connections each; a
/// neighbour pod flooding the port gets no more than this.
pub const ADMIN_PER_PEER: Setting = Setting {
    flag: "admin-max-connections-per-peer",
    env: &["BEDROCK_BROKER_ADMIN_MAX_CONNECTIONS_PER_PEER"],
    default: Value("8"),
    help: "Open connections to the admin server from one address at most",
};

/// Half the listener: one other pod cannot starve the API server, which
/// speaks HTTP/1.1 here and so opens a connection per review in flight (a
/// large scale-up sends well over 32 at once; 32 refused the rest).
pub const WEBHOOK_PER_PEER: Setting = Setting {
    flag: "max-connections-per-peer",
    env: &["BEDROCK_BROKER_WEBHOOK_MAX_CONNECTIONS_PER_PEER"],
    default: Value("128"),
    help: "Connections (TLS handshakes included) to the webhook from one address at most",
};

pub const WEBHOOK_ADMIN_PER_PEER: Setting = Setting {
    flag: "admin-max-connections-per-peer",
    env: &["BEDROCK_BROKER_WEBHOOK_ADMIN_MAX_CONNECTIONS_PER_PEER"],
    default: Value("8"),
    help: "Open connections to the webhook's admin server from one address at most",
};

/// The API server completes its handshake in milliseconds; a peer that
/// does not within this holds no slot.
pub const WEBHOOK_TLS_HANDSHAKE_TIMEOUT: Setting = Setting {
    flag: "tls-handshake-timeout",
    env: &["BEDROCK_BROKER_WEBHOOK_TLS_HANDSHAKE_TIMEOUT"],
    default: Value("5s"),
    help: "Time a client of the webhook has to complete the TLS handshake",
};
