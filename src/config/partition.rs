//! The AWS partition a region belongs to, and so the DNS suffix of its
//! endpoints: `amazonaws.com` is only the commercial (and GovCloud) one.
//! Matched as the SDKs' `partitions.json` matches them (its region
//! patterns, tried in its order), with the same fallback: a region of no
//! known shape is taken as commercial.

/// The DNS suffixes of a partition's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suffixes {
    pub dns: &'static str,
    pub dual_stack: &'static str,
}

const AWS: Suffixes = Suffixes {
    dns: "amazonaws.com",
    dual_stack: "api.aws",
};

/// `(first labels, suffixes)`: a region is the first labels, one name,
/// then a number (`cn-north-1`, `us-gov-west-1`, `eusc-de-east-1`).
const PARTITIONS: &[(&[&str], Suffixes)] = &[
    (
        &["cn"],
        Suffixes {
            dns: "amazonaws.com.cn",
            dual_stack: "api.amazonwebservices.com.cn",
        },
    ),
    (
        &["eusc", "de"],
        Suffixes {
            dns: "amazonaws.eu",
            dual_stack: "api.amazonwebservices.eu",
        },
    ),
    (
        &["us", "iso"],
        Suffixes {
            dns: "c2s.ic.gov",
            dual_stack: "api.aws.ic.gov",
        },
    ),
    (
        &["us", "isob"],
        Suffixes {
            dns: "sc2s.sgov.gov",
            dual_stack: "api.aws.scloud",
        },
    ),
    (
        &["eu", "isoe"],
        Suffixes {
            dns: "cloud.adc-e.uk",
            dual_stack: "api.cloud-aws.adc-e.uk",
        },
    ),
    (
        &["us", "isof"],
        Suffixes {
            dns: "csp.hci.ic.gov",
            dual_stack: "api.aws.hci.ic.gov",
        },
    ),
    (&["us", "gov"], AWS),
];

/// The suffixes of `region`'s endpoints.
pub fn suffixes(region: &str) -> Suffixes {
    let labels: Vec<&str> = region.split('-').collect();
    let Some((number, names)) = labels.split_last() else {
        return AWS;
    };
    let word =
        |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || !names.iter().all(word) {
        return AWS;
    }
    PARTITIONS
        .iter()
        .find(|(first, _)| names.len() == first.len() + 1 && names.starts_with(first))
        .map_or(AWS, |(_, suffixes)| *suffixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_fall_in_their_partitions() {
        for (region, dns) in [
            ("us-east-1", "amazonaws.com"),
            ("il-central-1", "amazonaws.com"),
            ("us-gov-west-1", "amazonaws.com"),
            ("cn-north-1", "amazonaws.com.cn"),
            ("cn-northwest-1", "amazonaws.com.cn"),
            ("eusc-de-east-1", "amazonaws.eu"),
            ("us-iso-east-1", "c2s.ic.gov"),
            ("us-isob-east-1", "sc2s.sgov.gov"),
            ("eu-isoe-west-1", "cloud.adc-e.uk"),
            ("us-isof-south-1", "csp.hci.ic.gov"),
            // No known shape: commercial, as the SDKs fall back.
            ("cn-north", "amazonaws.com"),
            ("us-iso-1", "amazonaws.com"),
            ("local", "amazonaws.com"),
        ] {
            assert_eq!(suffixes(region).dns, dns, "{region}");
        }
        assert_eq!(suffixes("us-gov-east-1").dual_stack, "api.aws");
        assert_eq!(
            suffixes("cn-north-1").dual_stack,
            "api.amazonwebservices.com.cn"
        );
    }
}
