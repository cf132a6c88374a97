//! The API server's Kubernetes version, read once when the webhook starts:
//! native sidecars (an init container with `restartPolicy: Always`) are on
//! by default from 1.29 only. An older server without the
//! `SidecarContainers` gate drops that field, so the sidecar would run as
//! an init container that never ends and the pod would never start.

use std::fmt;

/// `major.minor` of the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    /// The first release with native sidecars on by default.
    pub const NATIVE_SIDECARS: Self = Self {
        major: 1,
        minor: 29,
    };

    /// From `/version`'s `major` and `minor`, which managed clusters
    /// suffix (`"28+"` on EKS and GKE): the leading digits count.
    pub fn parse(major: &str, minor: &str) -> Option<Self> {
        let number = |s: &str| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some(Self {
            major: number(major)?,
            minor: number(minor)?,
        })
    }

    pub fn has_native_sidecars(self) -> bool {
        self >= Self::NATIVE_SIDECARS
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}
