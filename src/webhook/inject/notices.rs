//! What an injected pod gets that its owner may not expect, for the
//! admission response's `warnings` (kubectl shows them) and `inject`'s
//! report: nothing here refuses a pod, each is a deliberate rule whose
//! effect on this pod is worth a line.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::annotations::names;
use super::fit::{Fitted, Kind, Raise};
use super::patch;
use super::render::{app_vars, AppVar};
use super::spec::{Resources, SidecarSpec};
use super::types::{Quantity, Resource, SidecarMode};
use crate::config::parse;
use crate::config::settings::{injected, vars};

/// Every notice for this pod, in a stable order.
pub fn notices(
    spec: &PodSpec,
    sidecar: &SidecarSpec,
    fitted: &Fitted,
    app_env: &[AppVar],
) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(qos_lost(spec, &fitted.resources, &fitted.pod_resources));
    // The containers that get the app variables: init containers too in
    // native mode, those starting after the sidecar.
    let init = match sidecar.mode.value {
        SidecarMode::Native => spec
            .init_containers
            .iter()
            .flatten()
            .skip(patch::sidecar_index(spec))
            .collect(),
        SidecarMode::Classic => Vec::new(),
    };
    for c in init.into_iter().chain(&spec.containers) {
        out.extend(env_from_overridden(c, app_env));
        out.extend(own_bedrock_endpoint(c, sidecar.port.get()));
        out.extend(endpoint_choice_not_followed(
            c,
            Choice::Fips,
            sidecar.use_fips,
        ));
        out.extend(endpoint_choice_not_followed(
            c,
            Choice::Dualstack,
            sidecar.use_dualstack,
        ));
        out.extend(sidecar_behind_proxy(c));
        out.extend(own_api_key(c, sidecar.api_key_secret.is_some()));
    }
    out
}

/// An API key of the app's own (literal or from a Secret): botocore reads
/// `AWS_BEARER_TOKEN_BEDROCK` too, and then refuses to send to the
/// sidecar's plain-HTTP endpoint, so boto3 and the clients on it
/// (langchain-aws, Strands) fail on their first call. Not refused: the
/// SDKs that send it (LiteLLM, Anthropic) work, the sidecar passing a
/// real key on.
/// Silent when it may come from `envFrom` only: unknown.
fn own_api_key(c: &Container, sidecar_has_key: bool) -> Option<String> {
    let name = vars::AWS_BEARER_TOKEN_BEDROCK.name;
    c.env.iter().flatten().any(|e| e.name == name).then(|| {
        let fix = if sidecar_has_key {
            "remove it: the sidecar adds the pod's key".to_owned()
        } else {
            format!(
                "remove it and let the sidecar sign, or give the key to the sidecar with {}",
                names::API_KEY_SECRET
            )
        };
        format!(
            "container {:?} sets {name}: botocore (boto3, langchain-aws) then refuses the sidecar's http:// endpoint; {fix}",
            c.name
        )
    })
}

/// The sidecar is `http://127.0.0.1`: a client honouring the app's
/// `HTTP_PROXY` (or `ALL_PROXY`) sends its calls there to the proxy unless
/// `NO_PROXY` exempts that address. Python's HTTP stacks, botocore and the
/// OpenAI SDK among them, exempt nothing by themselves (Go exempts
/// loopback), and read `NO_PROXY` differently: only an entry
/// `127.0.0.1`, or the whole list `*`, exempts it for all of them
/// (botocore and httpx ignore `127.0.0.0/8`, requests a port in an
/// entry). Lower case wins, as in Python. Silent when `NO_PROXY` is not
/// a literal here (`valueFrom`, or perhaps in `envFrom`): unknown.
fn sidecar_behind_proxy(c: &Container) -> Option<String> {
    const PROXY_VARS: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];
    let set = PROXY_VARS.into_iter().find(|v| literal(c, v).is_some())?;
    // botocore (urllib) reads no ALL_PROXY.
    let readers = if set.eq_ignore_ascii_case("ALL_PROXY") {
        "requests, httpx and the OpenAI SDK do"
    } else {
        "botocore, requests, httpx and the OpenAI SDK do"
    };
    let declared = |name: &str| c.env.iter().flatten().find(|e| e.name == name);
    let no_proxy = match (declared("no_proxy"), declared("NO_PROXY")) {
        (Some(e), _) | (None, Some(e)) if e.value_from.is_some() => return None,
        (Some(e), _) | (None, Some(e)) => e.value.as_deref().unwrap_or(""),
        (None, None) if c.env_from.as_ref().is_some_and(|f| !f.is_empty()) => return None,
        (None, None) => "",
    };
    if no_proxy.trim() == "*" || no_proxy.split(',').any(|e| e.trim() == "127.0.0.1") {
        return None;
    }
    Some(format!(
        "container {:?} sets {set} and its NO_PROXY does not name 127.0.0.1: clients that honour it ({readers}) send calls meant for the sidecar to that proxy",
        c.name
    ))
}

/// The app's own `AWS_USE_FIPS_ENDPOINT` serves its other AWS calls; its
/// Bedrock calls now leave through the sidecar, which follows only the
/// webhook's setting (a platform policy: most regions have no FIPS host).
fn endpoint_choice_not_followed(
    c: &Container,
    choice: Choice,
    sidecar_uses: bool,
) -> Option<String> {
    use crate::config::settings::sidecar as own;
    let (app, webhook, what) = match choice {
        Choice::Fips => (&own::USE_FIPS, &injected::USE_FIPS, "FIPS"),
        Choice::Dualstack => (&own::USE_DUALSTACK, &injected::USE_DUALSTACK, "dual-stack"),
    };
    let name = app.var();
    let wants = literal(c, name).is_some_and(|v| parse::bool(v).unwrap_or(false));
    (wants && !sidecar_uses).then(|| {
        format!(
            "container {:?} sets {name}, but its Bedrock calls go through the sidecar, which uses {what} endpoints only with the webhook's --{}",
            c.name, webhook.flag
        )
    })
}

/// The endpoint variants an app may ask for that the sidecar follows only
/// by the webhook's setting.
#[derive(Clone, Copy)]
enum Choice {
    Fips,
    Dualstack,
}

/// A Guaranteed pod stays Guaranteed only if every container, the sidecar
/// too, has CPU and memory limits its requests equal (or, with pod-level
/// resources, if those stay equal once `fit` has raised them by the
/// sidecar's share). Losing the class costs exclusive CPUs under the
/// static CPU manager and moves the pod up the eviction order, silently.
fn qos_lost(spec: &PodSpec, sidecar: &Resources, raised: &[Raise]) -> Option<String> {
    let lost = match &spec.resources {
        Some(pod) => {
            let before = |kind: Kind, r: Resource| {
                let map = match kind {
                    Kind::Requests => pod.requests.as_ref(),
                    Kind::Limits => pod.limits.as_ref(),
                };
                units(map, r)
            };
            let after = |kind: Kind, r: Resource| {
                raised
                    .iter()
                    .find(|x| x.kind == kind && x.resource == r)
                    .map(|x| x.to.units(r))
                    .or_else(|| before(kind, r))
            };
            guaranteed(before) && !guaranteed(after)
        }
        None => {
            let mut all = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter());
            let sidecar = |kind: Kind, r: Resource| {
                let q = match (kind, r) {
                    (Kind::Requests, Resource::Cpu) => &sidecar.cpu_request,
                    (Kind::Requests, Resource::Memory) => &sidecar.memory_request,
                    (Kind::Limits, Resource::Cpu) => &sidecar.cpu_limit,
                    (Kind::Limits, Resource::Memory) => &sidecar.memory_limit,
                };
                q.as_ref().map(|q| q.units(r))
            };
            all.all(|c| {
                let r = c.resources.as_ref();
                guaranteed(|kind, res| {
                    let map = r.and_then(|r| match kind {
                        Kind::Requests => r.requests.as_ref(),
                        Kind::Limits => r.limits.as_ref(),
                    });
                    units(map, res)
                })
            }) && !guaranteed(sidecar)
        }
    };
    lost.then(|| {
        format!(
            "the sidecar makes this Guaranteed pod Burstable (requests below limits, or no CPU limit); to keep it Guaranteed set {} = {} and {} = {}",
            names::CPU_REQUEST,
            names::CPU_LIMIT,
            names::MEMORY_REQUEST,
            names::MEMORY_LIMIT
        )
    })
}

/// CPU and memory limits, with requests unset (they default to the
/// limits) or equal to them, in whole units as `get` reads them.
fn guaranteed(get: impl Fn(Kind, Resource) -> Option<u64>) -> bool {
    Resource::BOTH
        .into_iter()
        .all(|r| match (get(Kind::Requests, r), get(Kind::Limits, r)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(request), Some(limit)) => request == limit,
        })
}

/// A quantity of a resource list, in whole units.
fn units(map: Option<&BTreeMap<String, K8sQuantity>>, r: Resource) -> Option<u64> {
    Quantity::parse(&map?.get(r.as_str())?.0)
        .ok()
        .map(|q| q.units(r))
}

/// A literal value of `name` in `c` (not `valueFrom`).
fn literal<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name && e.value_from.is_none())
        .and_then(|e| e.value.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Variables from `envFrom` lose to an explicit `env` entry of the same
/// name, so the injected client variables override any there.
fn env_from_overridden(c: &Container, app_env: &[AppVar]) -> Option<String> {
    if c.env_from.as_ref().is_none_or(Vec::is_empty) {
        return None;
    }
    let sets = |name: &&str| c.env.iter().flatten().any(|e| e.name == *name);
    let added: Vec<&str> = app_env
        .iter()
        .filter(|v| !v.unless_set.iter().any(sets))
        .map(|v| v.var.name.as_str())
        .filter(|n| {
            *n != app_vars::BEDROCK_BROKER_URL && *n != app_vars::BEDROCK_BROKER_PROXY_TOKEN
        })
        .collect();
    if added.is_empty() {
        return None;
    }
    let say = |list: &str| {
        format!(
            "container {:?}: injected {list} win over envFrom; keep yours under env or set {}: \"false\"",
            c.name,
            names::CLIENT_ENV
        )
    };
    // The API server may cut a warning past 256 characters: the names
    // that do not fit are counted instead (a container's name takes up to
    // 63 of them).
    let mut shown = added.len();
    loop {
        let list = match added.len() - shown {
            0 => added.join(", "),
            more => format!("{} and {more} more", added[..shown].join(", ")),
        };
        let warning = say(&list);
        if warning.len() <= WARNING_MAX || shown <= 1 {
            return Some(warning);
        }
        shown -= 1;
    }
}

/// The longest warning the API server passes on whole.
const WARNING_MAX: usize = 256;

/// A container pointing a Bedrock client elsewhere keeps it (explicit
/// variables are never overridden), and that client bypasses the sidecar.
fn own_bedrock_endpoint(c: &Container, proxy_port: u16) -> Vec<String> {
    let ours: [String; 3] = [
        format!("http://127.0.0.1:{proxy_port}"),
        format!("http://localhost:{proxy_port}"),
        format!("http://[::1]:{proxy_port}"),
    ];
    [
        app_vars::AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
        app_vars::AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME,
        app_vars::AWS_BEDROCK_RUNTIME_ENDPOINT,
        app_vars::ANTHROPIC_BEDROCK_BASE_URL,
    ]
    .into_iter()
    .filter_map(|name| {
        let value = literal(c, name)?;
        let rest = ours.iter().find_map(|o| {
            value
                .strip_prefix(o.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        match rest {
            None => Some(format!(
                "container {:?} sets {name} to another endpoint: clients reading it call Bedrock there, not through the sidecar",
                c.name
            )),
            // The sidecar serves the Agents runtime under its own prefix.
            Some(rest)
                if name == app_vars::AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME
                    && rest.trim_end_matches('/') != "/agent-runtime" =>
            {
                Some(format!(
                    "container {:?} sets {name} to the sidecar without /agent-runtime: agent calls reach another of its routes, which serves none of them",
                    c.name
                ))
            }
            Some(_) => None,
        }
    })
    .collect()
}
