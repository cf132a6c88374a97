//! Kubernetes resource quantities: parsed from what a user writes, kept as
//! written, and added up in whole units when the sidecar's share is added
//! to a pod's own resources.

use crate::config::parse::ParseError;

/// The resources the sidecar requests and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    pub const BOTH: [Self; 2] = [Self::Cpu, Self::Memory];

    /// The key in a `ResourceList`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
        }
    }

    /// The smallest amount Kubernetes tells apart: a millicore, a byte
    /// (`resource.Quantity.MilliValue` / `Value`, which round up).
    fn unit(self) -> f64 {
        match self {
            Self::Cpu => 1e-3,
            Self::Memory => 1.0,
        }
    }
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`).
///
/// Kept as written (Kubernetes canonicalises it), with its numeric value so a
/// request above its limit is caught here with a clear message instead of by
/// the API server's validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    raw: String,
    value: f64,
}

impl Quantity {
    pub const ACCEPTED: &'static str =
        "a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi (not negative)";

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::value_of(raw)
            .map(|value| Self {
                raw: raw.to_owned(),
                value,
            })
            .ok_or_else(|| ParseError::not_a(raw, "a resource quantity", Self::ACCEPTED))
    }

    /// The quantity's value, following the grammar in
    /// k8s.io/apimachinery/pkg/api/resource (signed numbers are refused: a
    /// negative request or limit is never valid).
    fn value_of(raw: &str) -> Option<f64> {
        let s = raw.strip_prefix('+').unwrap_or(raw);
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return None;
        }
        let base: f64 = format!("{}.{}", if int.is_empty() { "0" } else { int }, frac)
            .parse()
            .ok()?;
        let multiplier = match suffix {
            "" => 1.0,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exp => {
                let digits = exp.strip_prefix(['e', 'E'])?;
                let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                10f64.powi(digits.parse::<i32>().ok()?)
            }
        };
        let value = base * multiplier;
        value.is_finite().then_some(value)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn value(&self) -> f64 {
        self.value
    }
}

/// A resource limit: a quantity, or explicitly none (`none` removes a
/// default limit).
pub fn parse_limit(raw: &str) -> Result<Option<Quantity>, ParseError> {
    if raw == "none" {
        Ok(None)
    } else {
        Quantity::parse(raw)
            .map_err(|_| {
                ParseError::not_a(
                    raw,
                    "a resource limit",
                    format!("{} or none", Quantity::ACCEPTED),
                )
            })
            .map(Some)
    }
}

impl Quantity {
    /// The value in whole units of `resource` (millicores, bytes), rounded
    /// up as Kubernetes rounds. Written quantities are decimal, so a value
    /// within a rounding error of a whole unit is that unit; but never of
    /// zero, which only a written zero is (anything more is at least 1n to
    /// the API server).
    pub fn units(&self, resource: Resource) -> u64 {
        let x = self.value / resource.unit();
        let nearest = x.round();
        let whole = if nearest > 0.0 && (x - nearest).abs() <= 1e-9 * nearest {
            nearest
        } else {
            x.ceil()
        };
        // Saturating: quantities this large are refused by the API server anyway.
        if whole >= u64::MAX as f64 {
            u64::MAX
        } else {
            whole.max(0.0) as u64
        }
    }

    /// A quantity of `units` of `resource`, written the way a person would:
    /// `110m`, `2`, `96Mi`, `1Gi`, or plain bytes.
    pub fn from_units(resource: Resource, units: u64) -> Self {
        let raw = match resource {
            Resource::Cpu if units.is_multiple_of(1000) => (units / 1000).to_string(),
            Resource::Cpu => format!("{units}m"),
            Resource::Memory => {
                let binary = [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
                binary
                    .iter()
                    .find(|(_, size)| units >= *size && units.is_multiple_of(*size))
                    .map(|(suffix, size)| format!("{}{suffix}", units / size))
                    .unwrap_or_else(|| units.to_string())
            }
        };
        Self {
            value: units as f64 * resource.unit(),
            raw,
        }
    }

    /// `self + other`, in whole units of `resource`.
    pub fn plus(&self, other: &Self, resource: Resource) -> Self {
        Self::from_units(
            resource,
            self.units(resource).saturating_add(other.units(resource)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for (raw, value) in [
            ("100m", 0.1),
            ("1", 1.0),
            ("0.5", 0.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1Gi", 1024f64.powi(3)),
            ("2k", 2000.0),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("+1", 1.0),
        ] {
            let q = Quantity::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!((q.value() - value).abs() < 1e-9, "{raw}");
            assert_eq!(q.as_str(), raw);
        }
        for raw in [
            "", "-1", "abc", "1.2.3", "1Mb", "1e", "1ee3", "Mi", ".", " 1", "1 ",
        ] {
            assert!(Quantity::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn limits_accept_none() {
        assert_eq!(parse_limit("none"), Ok(None));
        assert!(parse_limit("128Mi").is_ok_and(|q| q.is_some()));
        let err = parse_limit("lots").unwrap_err().to_string();
        assert!(err.contains("or none"), "{err}");
    }

    #[test]
    fn sums_are_exact_in_whole_units() {
        let q = |raw: &str| Quantity::parse(raw).expect("parses");
        for (a, b, resource, sum) in [
            ("100m", "10m", Resource::Cpu, "110m"),
            ("0.1", "0.01", Resource::Cpu, "110m"),
            ("1", "1000m", Resource::Cpu, "2"),
            ("64Mi", "32Mi", Resource::Memory, "96Mi"),
            ("100Mi", "128Mi", Resource::Memory, "228Mi"),
            ("1Gi", "1Gi", Resource::Memory, "2Gi"),
            ("1G", "0", Resource::Memory, "1000000000"),
            ("1.5Ki", "0", Resource::Memory, "1536"),
            ("0.5m", "0", Resource::Cpu, "1m"),
            // Below any rounding error, still more than nothing: the API
            // server rounds it up to 1n, a whole millicore in limits.
            ("0.000000001m", "0", Resource::Cpu, "1m"),
            ("1e-30", "0", Resource::Memory, "1"),
        ] {
            let s = q(a).plus(&q(b), resource);
            assert_eq!(s.as_str(), sum, "{a} + {b}");
            assert_eq!(
                Quantity::parse(s.as_str()).map(|p| p.units(resource)),
                Ok(s.units(resource))
            );
        }
    }
}
