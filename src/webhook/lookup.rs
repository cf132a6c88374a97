//! What the webhook reads from the cluster: namespace labels (namespace
//! opt-in), ServiceAccount annotations (the IRSA role and token audience) and LimitRanges
//! (what the sidecar's resources must fit).
//!
//! Behind a trait so the admission handler is tested without a cluster. The
//! kube implementation keeps a metadata-only watch cache of namespaces and
//! ServiceAccounts (annotations and labels are all we need, and metadata
//! watches are cheap) and a watch cache of LimitRanges (few and small), and
//! falls back to a direct read when a cache has not seen an object yet: a
//! ServiceAccount applied together with its Deployment usually reaches the
//! webhook before it reaches the watch.
//!
//! The caches hold every ServiceAccount of the cluster, and anyone allowed
//! to create them (the `edit` role) decides how large they are: up to
//! 256 KiB of annotations each and more of labels. So only what injection
//! reads is kept ([`Keep`]), and lists come in small pages, since a page is
//! read whole before anything is dropped.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ServiceAccount};
use kube::api::ListParams;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::inject::annotations::names;
use crate::metrics::webhook::WebhookMetrics;

/// Objects per list page. A page is read whole: at 20, a namespace whose
/// ServiceAccounts carry 256 KiB of annotations each costs 5 MiB while it
/// is read (client-go's default of 500: 125 MiB, past the webhook's memory
/// limit once parsed), and 10,000 ServiceAccounts take 500 requests.
const LIST_PAGE: u32 = 20;

/// The labels and annotations of an object that injection reads; the
/// caches and direct reads keep only these, with the name, namespace and
/// version the watch needs.
#[derive(Debug, Clone, Copy)]
struct Keep {
    labels: &'static [&'static str],
    annotations: &'static [&'static str],
}

impl Keep {
    /// A ServiceAccount's IRSA role and token audience.
    const SERVICE_ACCOUNT: Self = Self {
        labels: &[],
        annotations: &[names::EKS_ROLE_ARN, names::EKS_AUDIENCE],
    };
    /// A namespace's opt-in label.
    const NAMESPACE: Self = Self {
        labels: &[names::INJECT_LABEL],
        annotations: &[],
    };
    /// A LimitRange's spec is what counts.
    const NO_METADATA: Self = Self {
        labels: &[],
        annotations: &[],
    };

    fn slim(self, meta: &mut ObjectMeta) {
        fn only(map: Option<StringMap>, keys: &[&str]) -> Option<StringMap> {
            let kept: StringMap = map?
                .into_iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .collect();
            (!kept.is_empty()).then_some(kept)
        }
        let full = std::mem::take(meta);
        *meta = ObjectMeta {
            name: full.name,
            namespace: full.namespace,
            resource_version: full.resource_version,
            uid: full.uid,
            labels: only(full.labels, self.labels),
            annotations: only(full.annotations, self.annotations),
            ..ObjectMeta::default()
        };
    }
}

/// Labels or annotations.
pub type StringMap = BTreeMap<String, String>;

/// Why a namespace or ServiceAccount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    /// A refusal, or no answer at all (unreachable, connection lost).
    #[error("the read from the API server failed: {0}")]
    Api(String),
}

/// Reads what [`super::inject()`] may need from the cluster.
pub trait ClusterLookup: Send + Sync + 'static {
    /// Annotations of a ServiceAccount; `Ok(None)` when it does not exist.
    fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<StringMap>, LookupError>> + Send;

    /// Labels of a namespace; `Ok(None)` when it does not exist.
    fn namespace_labels(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Option<StringMap>, LookupError>> + Send;

    /// The LimitRanges of a namespace (empty when it has none).
    fn limit_ranges(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<LimitRange>, LookupError>> + Send;

    /// Whether the lookup has what it needs to answer quickly (readiness).
    fn ready(&self) -> bool {
        true
    }
}

/// Fixed answers: used by `inject` (from the documents and flags) and tests.
#[derive(Debug, Clone, Default)]
pub struct StaticLookup {
    /// Keyed by (namespace, name).
    pub service_accounts: HashMap<(String, String), StringMap>,
    pub namespaces: HashMap<String, StringMap>,
    /// Annotations of any ServiceAccount not listed.
    pub default_service_account: StringMap,
    /// Labels of any namespace not listed (merged under listed ones).
    pub default_namespace: StringMap,
    /// LimitRanges by namespace.
    pub limit_ranges: HashMap<String, Vec<LimitRange>>,
}

impl StaticLookup {
    pub fn service_account(&self, namespace: &str, name: &str) -> StringMap {
        self.service_accounts
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_else(|| self.default_service_account.clone())
    }

    pub fn namespace(&self, namespace: &str) -> StringMap {
        let mut labels = self.default_namespace.clone();
        if let Some(own) = self.namespaces.get(namespace) {
            labels.extend(own.clone());
        }
        labels
    }
}

impl ClusterLookup for StaticLookup {
    async fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StringMap>, LookupError> {
        Ok(Some(self.service_account(namespace, name)))
    }

    async fn namespace_labels(&self, namespace: &str) -> Result<Option<StringMap>, LookupError> {
        Ok(Some(self.namespace(namespace)))
    }

    async fn limit_ranges(&self, namespace: &str) -> Result<Vec<LimitRange>, LookupError> {
        Ok(self
            .limit_ranges
            .get(namespace)
            .cloned()
            .unwrap_or_default())
    }
}

/// The kube-backed lookup: watch caches with a GET fallback.
#[derive(Clone)]
pub struct KubeLookup {
    client: Client,
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    limit_ranges: Store<LimitRange>,
    /// Latched once every cache has completed its first list.
    synced: Arc<AtomicBool>,
    timeout: Duration,
    metrics: WebhookMetrics,
}

impl KubeLookup {
    /// Starts both watches in the background (until `shutdown`).
    pub fn start(
        client: Client,
        timeout: Duration,
        metrics: WebhookMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (service_accounts, sa_writer) = reflector::store();
        let (namespaces, ns_writer) = reflector::store();
        let (limit_ranges, lr_writer) = reflector::store();
        spawn_watch(
            Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()),
            sa_writer,
            "serviceaccounts",
            Keep::SERVICE_ACCOUNT,
            shutdown.clone(),
        );
        spawn_watch(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            ns_writer,
            "namespaces",
            Keep::NAMESPACE,
            shutdown.clone(),
        );
        spawn_watch(
            Api::<LimitRange>::all(client.clone()),
            lr_writer,
            "limitranges",
            Keep::NO_METADATA,
            shutdown.clone(),
        );
        let synced = Arc::new(AtomicBool::new(false));
        {
            let (sa, ns, lr, synced) = (
                service_accounts.clone(),
                namespaces.clone(),
                limit_ranges.clone(),
                synced.clone(),
            );
            tokio::spawn(async move {
                let both = async {
                    let _ = sa.wait_until_ready().await;
                    let _ = ns.wait_until_ready().await;
                    let _ = lr.wait_until_ready().await;
                };
                tokio::select! {
                    _ = both => {
                        synced.store(true, Ordering::Release);
                        tracing::info!(
                            service_accounts = sa.len(),
                            namespaces = ns.len(),
                            limit_ranges = lr.len(),
                            "cluster caches synced"
                        );
                    }
                    _ = shutdown.cancelled() => {}
                }
            });
        }
        Self {
            client,
            service_accounts,
            namespaces,
            limit_ranges,
            synced,
            timeout,
            metrics,
        }
    }

    async fn get<K>(
        &self,
        api: Api<K>,
        name: &str,
        keep: Keep,
    ) -> Result<Option<PartialObjectMeta<K>>, LookupError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match tokio::time::timeout(self.timeout, api.get_metadata_opt(name)).await {
            Err(_) => Err(LookupError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(LookupError::Api(e.to_string())),
            Ok(Ok(found)) => Ok(found.map(|mut object| {
                keep.slim(&mut object.metadata);
                object
            })),
        }
    }

    fn record(&self, object: &str, result: &Result<Option<StringMap>, LookupError>, cached: bool) {
        let outcome = match (result, cached) {
            (Ok(Some(_)), true) => "cache",
            (Ok(Some(_)), false) => "api",
            (Ok(None), _) => "not_found",
            (Err(_), _) => "error",
        };
        self.metrics
            .lookups
            .with_label_values(&[object, outcome])
            .inc();
    }
}

impl KubeLookup {
    fn record_list(&self, object: &str, result: &Result<(), &LookupError>, cached: bool) {
        let outcome = match (result, cached) {
            (Ok(()), true) => "cache",
            (Ok(()), false) => "api",
            (Err(_), _) => "error",
        };
        self.metrics
            .lookups
            .with_label_values(&[object, outcome])
            .inc();
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    keep: Keep,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let stream = watcher(api, watcher::Config::default().page_size(LIST_PAGE))
        .default_backoff()
        .modify(move |o: &mut K| keep.slim(o.meta_mut()))
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = shutdown.cancelled() => break,
            };
            match item {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(resource = what, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    });
}

/// A namespace's LimitRanges, page by page like the watches, each kept
/// as the cache keeps it: a page is all that is held in full at once.
async fn list_slim(api: &Api<LimitRange>) -> Result<Vec<LimitRange>, kube::Error> {
    let mut found = Vec::new();
    let mut params = ListParams::default().limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await?;
        found.extend(page.items.into_iter().map(|mut lr| {
            Keep::NO_METADATA.slim(&mut lr.metadata);
            lr
        }));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(found),
        }
    }
}

impl ClusterLookup for KubeLookup {
    async fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StringMap>, LookupError> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(sa) = self.service_accounts.get(&key) {
            let result = Ok(Some(sa.annotations().clone()));
            self.record("service_account", &result, true);
            return result;
        }
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace);
        let result = self
            .get(api, name, Keep::SERVICE_ACCOUNT)
            .await
            .map(|found| found.map(|sa| sa.annotations().clone()));
        self.record("service_account", &result, false);
        result
    }

    async fn namespace_labels(&self, namespace: &str) -> Result<Option<StringMap>, LookupError> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) {
            let result = Ok(Some(ns.labels().clone()));
            self.record("namespace", &result, true);
            return result;
        }
        let api = Api::<Namespace>::all(self.client.clone());
        let result = self
            .get(api, namespace, Keep::NAMESPACE)
            .await
            .map(|found| found.map(|ns| ns.labels().clone()));
        self.record("namespace", &result, false);
        result
    }

    /// From the cache once it has synced (a namespace missing there has
    /// none); before that, a direct list.
    async fn limit_ranges(&self, namespace: &str) -> Result<Vec<LimitRange>, LookupError> {
        if self.synced.load(Ordering::Acquire) {
            let found: Vec<LimitRange> = self
                .limit_ranges
                .state()
                .iter()
                .filter(|lr| lr.metadata.namespace.as_deref() == Some(namespace))
                .map(|lr| (**lr).clone())
                .collect();
            self.record_list("limit_range", &Ok(()), true);
            return Ok(found);
        }
        let api = Api::<LimitRange>::namespaced(self.client.clone(), namespace);
        let result = match tokio::time::timeout(self.timeout, list_slim(&api)).await {
            Err(_) => Err(LookupError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(LookupError::Api(e.to_string())),
            Ok(Ok(found)) => Ok(found),
        };
        self.record_list("limit_range", &result.as_ref().map(|_| ()), false);
        result
    }

    fn ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}
