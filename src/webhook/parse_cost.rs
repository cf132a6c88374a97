//! What a review will take in memory once parsed, estimated from its text
//! before it is parsed.
//!
//! A pod is read into k8s-openapi's types, where a JSON object in an array
//! becomes a struct with every field its type has: `{"name":""}` in
//! `volumes` is 12 bytes of text and a 3 KB `Volume`. A review of 1.5 MB
//! listing such objects parsed into 287 MB, and one near the size limit
//! into 1.4 GB. Room for parsed pods is therefore drawn for this estimate
//! before the pod is parsed (`intake`).
//!
//! The estimate errs high: each array element is counted as its key's
//! struct (the largest array element of a pod for keys it does not
//! know), every key as an allocated string, every array as possibly twice
//! as long as it is (a growing `Vec`).

use std::fmt;
use std::mem::size_of;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, DownwardAPIVolumeFile, EnvVar, EphemeralContainer, PodCondition,
    PodResourceClaim, Toleration, TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// What an element of the array under `key` may become.
fn element(key: &str) -> usize {
    match key {
        "containers" | "initContainers" => size_of::<Container>(),
        "ephemeralContainers" => size_of::<EphemeralContainer>(),
        "volumes" => size_of::<Volume>(),
        "containerStatuses" | "initContainerStatuses" | "ephemeralContainerStatuses" => {
            size_of::<ContainerStatus>()
        }
        "env" => size_of::<EnvVar>(),
        _ => ANY_ELEMENT,
    }
}

/// The largest element of any other array in a pod (a `projected`
/// volume's sources, managed fields, affinity terms, ...).
const ANY_ELEMENT: usize = max_of(&[
    size_of::<VolumeProjection>(),
    size_of::<ManagedFieldsEntry>(),
    size_of::<WeightedPodAffinityTerm>(),
    size_of::<TopologySpreadConstraint>(),
    size_of::<PodCondition>(),
    size_of::<DownwardAPIVolumeFile>(),
    size_of::<VolumeMount>(),
    size_of::<Toleration>(),
    size_of::<OwnerReference>(),
    size_of::<PodResourceClaim>(),
]);
/// An object that is not an array element: a struct inside its parent
/// (already counted there) or a map's node.
const OBJECT: usize = 64;
/// A `String` or `Vec` header; a string's bytes are counted with it.
const HEADER: usize = 24;
/// An entry of an object that may be a JSON value's map (anything in
/// `fieldsV1`): serde_json's ordered map keeps the hash, key and
/// value in a `Vec` and an index in a hash table, each growing to twice
/// what it holds. Counted for every object that is not one of the known
/// structs, and for every object inside a JSON value (see `visit_map`).
const MAP_ENTRY: usize = 2 * (size_of::<serde_json::Value>() + HEADER + 2 * size_of::<usize>());
/// A non-empty map's first allocations (room for a few entries, the hash
/// table's control bytes): a one-entry object took 366 bytes.
const MAP_NODE: usize = 256;
/// A number, boolean or null.
const SCALAR: usize = 16;

const fn max_of(sizes: &[usize]) -> usize {
    let mut max = 0;
    let mut i = 0;
    while i < sizes.len() {
        if sizes[i] > max {
            max = sizes[i];
        }
        i += 1;
    }
    max
}

/// Bytes the JSON text `text` may take once parsed into a pod, or an
/// error when it is not JSON. One pass, nothing kept.
pub fn estimate(text: &[u8]) -> Result<usize, serde_json::Error> {
    let mut total = 0;
    Cost {
        total: &mut total,
        object: OBJECT,
        element: ANY_ELEMENT,
        in_value: false,
    }
    .deserialize(&mut serde_json::Deserializer::from_slice(text))?;
    Ok(total)
}

/// One value's cost, added to `total`: `object` is what it weighs if it is
/// an object (its array's element struct, or [`OBJECT`]), `element` what
/// each element weighs if it is an array (by the key it is under).
/// `in_value`: inside a JSON value (`fieldsV1`), where every object is a
/// map whatever its key, and a key such as `env` means nothing to the pod.
struct Cost<'a> {
    total: &'a mut usize,
    object: usize,
    element: usize,
    in_value: bool,
}

impl Cost<'_> {
    fn add(&mut self, n: usize) {
        *self.total = self.total.saturating_add(n);
    }

    fn with(&mut self, object: usize, element: usize) -> Cost<'_> {
        Cost {
            total: &mut *self.total,
            object,
            element,
            in_value: self.in_value,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Cost<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The key of the only JSON value a pod holds (`managedFields[].fieldsV1`).
const JSON_VALUE_KEY: &str = "fieldsV1";

/// A key: counted as a string, and read to weigh the array under it (and
/// to tell whether its value is a JSON value).
struct Key<'a>(&'a mut usize);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = (usize, bool);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(usize, bool), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = (usize, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(usize, bool), E> {
        *self.0 = self.0.saturating_add(HEADER.saturating_add(key.len()));
        Ok((element(key), key == JSON_VALUE_KEY))
    }
}

impl<'de> Visitor<'de> for Cost<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.add(self.object);
        // A known struct's fields are in its size; any other object may be
        // a map (inside a JSON value, every object is one, whatever the key
        // above it: `env` or `containers` there mean nothing to the pod).
        let maybe_a_map = self.in_value || self.object == OBJECT || self.object == ANY_ELEMENT;
        let mut entries = 0usize;
        while let Some((element, value)) = map.next_key_seed(Key(&mut *self.total))? {
            let mut inner = self.with(OBJECT, element);
            inner.in_value |= value;
            map.next_value_seed(inner)?;
            entries += 1;
        }
        if maybe_a_map && entries > 0 {
            self.add(MAP_NODE.saturating_add(entries.saturating_mul(MAP_ENTRY)));
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.add(HEADER);
        // The elements' own room once more: a growing `Vec` may hold up
        // to twice what its elements need.
        let slot = self.element;
        let mut elements = 0usize;
        while seq
            .next_element_seed(self.with(slot, ANY_ELEMENT))?
            .is_some()
        {
            elements += 1;
        }
        self.add(elements.saturating_mul(slot));
        Ok(())
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.add(HEADER.saturating_add(v.len()));
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.add(SCALAR);
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.add(SCALAR);
        Ok(())
    }

    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.add(SCALAR);
        Ok(())
    }

    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.add(SCALAR);
        Ok(())
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.add(SCALAR);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(pod: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "operation": "CREATE", "object": pod},
        }))
        .unwrap_or_default()
    }

    #[test]
    fn tiny_objects_cost_what_their_structs_take() {
        let volumes = vec![serde_json::json!({"name": ""}); 1000];
        let text = review(serde_json::json!({"spec": {"containers": [], "volumes": volumes}}));
        let cost = estimate(&text).unwrap();
        // Each 12-byte `{"name":""}` may become a `Volume`, twice over.
        assert!(cost >= 2 * 1000 * size_of::<Volume>(), "{cost}");
        assert!(cost > 400 * text.len(), "{cost} for {} bytes", text.len());
        // The same objects where the pod keeps no such struct cost less,
        // but never less than any of a pod's other array elements.
        let other = review(
            serde_json::json!({"spec": {"tolerations": vec![serde_json::json!({"key": ""}); 1000]}}),
        );
        let cost = estimate(&other).unwrap();
        assert!(cost >= 2 * 1000 * size_of::<VolumeProjection>(), "{cost}");
        assert!(cost < 2 * 1000 * size_of::<Volume>(), "{cost}");
    }

    #[test]
    fn an_ordinary_pod_costs_tens_of_kilobytes() {
        let env: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"name": format!("VAR_{i}"), "value": "some value"}))
            .collect();
        let container = serde_json::json!({"name": "app", "image": "registry.example/team/app:1.2.3",
            "env": env, "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}});
        let text = review(serde_json::json!({
            "metadata": {"name": "p", "labels": {"app": "x"}},
            "spec": {"containers": [container.clone(), container], "volumes": [{"name": "v", "emptyDir": {}}]},
        }));
        let cost = estimate(&text).unwrap();
        // Two containers, a volume and 40 variables: about 21 KB as
        // structs, estimated at twice that (every array may be half empty).
        assert!(
            (21_000..64 * 1024).contains(&cost),
            "{cost} for {} bytes",
            text.len()
        );
    }

    #[test]
    fn empty_objects_outside_arrays_weigh_little() {
        // An empty JSON value map allocates nothing; its parent's entry
        // is what it costs (tests/webhook_parse_cost.rs measures both).
        let fields: serde_json::Map<_, _> = (0..1000)
            .map(|i| (format!("f:k{i}"), serde_json::json!({})))
            .collect();
        let text = serde_json::to_vec(&serde_json::json!({"fieldsV1": fields})).unwrap();
        let cost = estimate(&text).unwrap();
        assert!(
            cost < 1000 * (OBJECT + 2 * HEADER + MAP_ENTRY) + 2 * MAP_NODE,
            "{cost}"
        );
    }

    #[test]
    fn escaped_keys_weigh_as_their_names() {
        let plain = estimate(br#"{"volumes":[{}]}"#).unwrap();
        let escaped = estimate(br#"{"vol\u0075mes":[{}]}"#).unwrap();
        assert_eq!(plain, escaped);
    }

    #[test]
    fn text_that_is_not_json_is_an_error() {
        assert!(estimate(b"{\"a\":").is_err());
        assert!(estimate(b"nope").is_err());
        assert!(
            estimate(&b"[".repeat(200)).is_err(),
            "past serde_json's depth limit"
        );
        // Values the pod's parse would skip unread in a field it ignores:
        // the estimate must refuse them, not skip them too.
        assert!(estimate(br#"{"x":1e400}"#).is_err());
        assert!(estimate(br#"{"x":"\ud800"}"#).is_err());
        assert!(estimate(b"{\"x\":\"\xff\"}").is_err());
    }
}
