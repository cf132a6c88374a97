//! The kube-backed ServiceAccount/namespace lookup against a tiny fake API
//! server on loopback: kube's real client, watcher and reflector, over HTTP.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bedrock_broker::metrics::webhook::WebhookMetrics;
use bedrock_broker::webhook::{ClusterLookup, KubeLookup, LookupError};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What the fake API server holds.
#[derive(Default)]
struct Objects {
    /// Returned by list calls (what the watch cache starts with).
    listed: Vec<Value>,
    /// Returned by direct GETs, keyed by "namespace/name" (or "name").
    gettable: HashMap<String, Value>,
    /// Status code for direct GETs of unknown objects (404 normally).
    missing_status: u16,
    /// Direct GETs that never answer (to exercise the timeout).
    hang: Vec<String>,
    /// The query of every list call (not watches), in order.
    list_queries: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    service_accounts: Arc<Mutex<Objects>>,
    namespaces: Arc<Mutex<Objects>>,
    /// LimitRanges (full objects: their spec is what the webhook reads).
    limit_ranges: Arc<Vec<Value>>,
    /// The cluster-wide LimitRange list never answers (the cache never
    /// syncs), so reads fall back to listing the namespace.
    limit_ranges_unsynced: bool,
    sa_events: broadcast::Sender<Value>,
    gets: Arc<AtomicUsize>,
    /// The query of every direct LimitRange list of a namespace.
    lr_queries: Arc<Mutex<Vec<String>>>,
}

fn meta(namespace: Option<&str>, name: &str, annotations: Value, labels: Value) -> Value {
    let mut m = json!({"name": name, "resourceVersion": "5", "uid": format!("uid-{name}"),
        "annotations": annotations, "labels": labels});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m})
}

fn list(items: &[Value]) -> Response {
    axum::Json(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "10"}, "items": items,
    }))
    .into_response()
}

fn not_found(name: &str, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND);
    let reason = if code == 404 { "NotFound" } else { "Forbidden" };
    (
        status,
        axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{name} {reason}"), "reason": reason, "code": code}),
        ),
    )
        .into_response()
}

/// A watch stream that stays open and carries whatever the test sends.
fn watch(events: Option<broadcast::Receiver<Value>>) -> Response {
    let stream = futures::stream::unfold(events, |rx| async move {
        match rx {
            Some(mut rx) => match rx.recv().await {
                Ok(event) => {
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    Some((Ok::<_, Infallible>(Bytes::from(line)), Some(rx)))
                }
                Err(_) => None,
            },
            None => std::future::pending().await,
        }
    });
    Response::new(Body::from_stream(stream))
}

fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

async fn list_sa(State(f): State<Fake>, uri: Uri) -> Response {
    if is_watch(&uri) {
        return watch(Some(f.sa_events.subscribe()));
    }
    listed(&f.service_accounts, &uri)
}

async fn list_ns(State(f): State<Fake>, uri: Uri) -> Response {
    if is_watch(&uri) {
        return watch(None);
    }
    listed(&f.namespaces, &uri)
}

/// Every listed object at once (no pages), the query noted.
fn listed(objects: &Mutex<Objects>, uri: &Uri) -> Response {
    let items = objects
        .lock()
        .map(|mut o| {
            o.list_queries
                .push(uri.query().unwrap_or_default().to_owned());
            o.listed.clone()
        })
        .unwrap_or_default();
    list(&items)
}

fn limit_range_list(items: Vec<Value>) -> Response {
    axum::Json(json!({"apiVersion": "v1", "kind": "LimitRangeList",
        "metadata": {"resourceVersion": "10"}, "items": items}))
    .into_response()
}

async fn list_lr(State(f): State<Fake>, uri: Uri) -> Response {
    if is_watch(&uri) {
        return watch(None);
    }
    if f.limit_ranges_unsynced {
        std::future::pending::<()>().await;
    }
    limit_range_list(f.limit_ranges.to_vec())
}

/// Pages as the API server does: `limit` objects, then a continue token
/// (here the offset of the next page).
async fn list_lr_in(State(f): State<Fake>, Path(ns): Path<String>, uri: Uri) -> Response {
    f.gets.fetch_add(1, Ordering::SeqCst);
    let query = uri.query().unwrap_or_default().to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let (limit, from): (usize, usize) = (
        param("limit").unwrap_or(usize::MAX),
        param("continue").unwrap_or(0),
    );
    f.lr_queries.lock().unwrap().push(query);
    let all: Vec<Value> = f
        .limit_ranges
        .iter()
        .filter(|lr| lr["metadata"]["namespace"] == ns.as_str())
        .cloned()
        .collect();
    let page: Vec<Value> = all.iter().skip(from).take(limit).cloned().collect();
    let next = from.saturating_add(limit);
    let mut list = json!({"apiVersion": "v1", "kind": "LimitRangeList",
        "metadata": {"resourceVersion": "10"}, "items": page});
    if next < all.len() {
        list["metadata"]["continue"] = json!(next.to_string());
    }
    axum::Json(list).into_response()
}

async fn direct_get(objects: &Mutex<Objects>, gets: &AtomicUsize, key: String) -> Response {
    gets.fetch_add(1, Ordering::SeqCst);
    let (found, code, hang) = match objects.lock() {
        Ok(o) => (
            o.gettable.get(&key).cloned(),
            o.missing_status,
            o.hang.contains(&key),
        ),
        Err(_) => (None, 500, false),
    };
    if hang {
        std::future::pending::<()>().await;
    }
    match found {
        Some(v) => axum::Json(v).into_response(),
        None => not_found(&key, if code == 0 { 404 } else { code }),
    }
}

async fn get_sa(State(f): State<Fake>, Path((ns, name)): Path<(String, String)>) -> Response {
    direct_get(&f.service_accounts, &f.gets, format!("{ns}/{name}")).await
}

async fn get_ns(State(f): State<Fake>, Path(name): Path<String>) -> Response {
    direct_get(&f.namespaces, &f.gets, name).await
}

async fn start(fake: Fake) -> SocketAddr {
    let app = Router::new()
        .route("/api/v1/serviceaccounts", get(list_sa))
        .route("/api/v1/namespaces", get(list_ns))
        .route("/api/v1/namespaces/{name}", get(get_ns))
        .route("/api/v1/limitranges", get(list_lr))
        .route("/api/v1/namespaces/{ns}/limitranges", get(list_lr_in))
        .route(
            "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
            get(get_sa),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn client(addr: SocketAddr) -> kube::Client {
    let url = format!("http://{addr}").parse().expect("url");
    kube::Client::try_from(kube::Config::new(url)).expect("client")
}

fn fake() -> Fake {
    let mut sa = Objects::default();
    sa.listed.push(meta(
        Some("default"),
        "chat-app",
        json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/chat-app"}),
        json!({}),
    ));
    sa.gettable.insert(
        "default/brand-new".into(),
        meta(
            Some("default"),
            "brand-new",
            json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/new"}),
            json!({}),
        ),
    );
    let mut ns = Objects::default();
    ns.listed.push(meta(
        None,
        "team-a",
        json!({}),
        json!({"bedrock-broker.io/inject": "true"}),
    ));
    ns.gettable.insert(
        "team-b".into(),
        meta(
            None,
            "team-b",
            json!({}),
            json!({"bedrock-broker.io/inject": "false"}),
        ),
    );
    let limit_ranges = vec![json!({"apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "limits", "namespace": "team-a", "resourceVersion": "7", "uid": "uid-lr"},
        "spec": {"limits": [{"type": "Container", "min": {"cpu": "50m"}}]}})];
    Fake {
        service_accounts: Arc::new(Mutex::new(sa)),
        namespaces: Arc::new(Mutex::new(ns)),
        limit_ranges: Arc::new(limit_ranges),
        limit_ranges_unsynced: false,
        sa_events: broadcast::channel(16).0,
        gets: Arc::new(AtomicUsize::new(0)),
        lr_queries: Arc::default(),
    }
}

/// A lookup against the fake at `addr`: 2 s lookups, metrics of its own.
fn started(addr: SocketAddr, shutdown: &CancellationToken) -> KubeLookup {
    KubeLookup::start(
        client(addr),
        Duration::from_secs(2),
        WebhookMetrics::new(),
        shutdown.clone(),
    )
}

async fn synced(lookup: &KubeLookup) {
    let end = Instant::now() + Duration::from_secs(10);
    while !lookup.ready() {
        assert!(Instant::now() < end, "caches never synced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_the_watch_cache_and_falls_back_to_a_get() {
    let f = fake();
    let addr = start(f.clone()).await;
    let shutdown = CancellationToken::new();
    let metrics = WebhookMetrics::new();
    let lookup = KubeLookup::start(
        client(addr),
        Duration::from_secs(2),
        metrics.clone(),
        shutdown.clone(),
    );
    synced(&lookup).await;

    // Cached: no request to the API server.
    let sa = lookup
        .service_account_annotations("default", "chat-app")
        .await
        .expect("read");
    assert_eq!(
        sa.and_then(|a| a.get("eks.amazonaws.com/role-arn").cloned())
            .as_deref(),
        Some("arn:aws:iam::123456789012:role/chat-app")
    );
    let ns = lookup.namespace_labels("team-a").await.expect("read");
    assert_eq!(
        ns.and_then(|l| l.get("bedrock-broker.io/inject").cloned())
            .as_deref(),
        Some("true")
    );
    assert_eq!(f.gets.load(Ordering::SeqCst), 0);

    // Not seen by the watch yet: a direct GET finds it.
    let sa = lookup
        .service_account_annotations("default", "brand-new")
        .await
        .expect("read");
    assert!(sa.is_some_and(|a| a.contains_key("eks.amazonaws.com/role-arn")));
    let ns = lookup.namespace_labels("team-b").await.expect("read");
    assert_eq!(
        ns.and_then(|l| l.get("bedrock-broker.io/inject").cloned())
            .as_deref(),
        Some("false")
    );
    assert_eq!(f.gets.load(Ordering::SeqCst), 2);

    // Nowhere: not found is an answer, not an error.
    assert_eq!(
        lookup.service_account_annotations("default", "ghost").await,
        Ok(None)
    );

    // A ServiceAccount arriving through the watch is served from the cache.
    let event = json!({"type": "ADDED", "object": meta(Some("team-a"), "watched",
        json!({"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/watched"}), json!({}))});
    let gets_before = f.gets.load(Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = f.sa_events.send(event.clone());
        if lookup
            .service_account_annotations("team-a", "watched")
            .await
            == Ok(None)
        {
            // Not applied yet (the GET fallback found nothing): try again.
        } else {
            break;
        }
        assert!(Instant::now() < end, "watch event never reached the cache");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gets_after = f.gets.load(Ordering::SeqCst);
    let from_cache = lookup
        .service_account_annotations("team-a", "watched")
        .await
        .expect("read");
    assert!(from_cache.is_some());
    assert_eq!(
        f.gets.load(Ordering::SeqCst),
        gets_after,
        "served from the cache"
    );
    assert!(gets_after >= gets_before);

    let text = metrics.render();
    assert!(
        text.contains(
            "bedrock_broker_webhook_lookups_total{object=\"service_account\",source=\"cache\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "bedrock_broker_webhook_lookups_total{object=\"service_account\",source=\"api\"} 1"
        ),
        "{text}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refusals_and_silence_are_errors() {
    let f = fake();
    if let Ok(mut sa) = f.service_accounts.lock() {
        sa.missing_status = 403;
        sa.hang.push("default/slow".into());
    }
    let addr = start(f.clone()).await;
    let shutdown = CancellationToken::new();
    let lookup = KubeLookup::start(
        client(addr),
        Duration::from_millis(200),
        WebhookMetrics::new(),
        shutdown.clone(),
    );
    synced(&lookup).await;
    match lookup
        .service_account_annotations("default", "forbidden")
        .await
    {
        Err(LookupError::Api(m)) => assert!(m.contains("Forbidden") || m.contains("403"), "{m}"),
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(
        lookup.service_account_annotations("default", "slow").await,
        Err(LookupError::Timeout(Duration::from_millis(200)))
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_come_from_the_cache_or_a_direct_list() {
    let min_cpu = |found: Vec<k8s_openapi::api::core::v1::LimitRange>| {
        found
            .iter()
            .filter_map(|lr| lr.spec.as_ref())
            .flat_map(|s| s.limits.iter())
            .filter_map(|i| i.min.as_ref()?.get("cpu").map(|q| q.0.clone()))
            .collect::<Vec<_>>()
    };
    // Synced: from the cache, none for a namespace without any.
    let f = fake();
    let addr = start(f.clone()).await;
    let shutdown = CancellationToken::new();
    let lookup = started(addr, &shutdown);
    synced(&lookup).await;
    let found = lookup.limit_ranges("team-a").await.expect("read");
    assert_eq!(min_cpu(found), ["50m"]);
    assert!(lookup
        .limit_ranges("default")
        .await
        .expect("read")
        .is_empty());
    assert_eq!(f.gets.load(Ordering::SeqCst), 0);
    shutdown.cancel();

    // Not synced yet: the namespace is listed directly, in pages of 20
    // (a page is read whole), and kept as the cache keeps it.
    let mut f = fake();
    f.limit_ranges_unsynced = true;
    let mut limit_ranges = f.limit_ranges.to_vec();
    limit_ranges.extend((0..24).map(|i| {
        json!({"apiVersion": "v1", "kind": "LimitRange",
            "metadata": {"name": format!("bulky-{i}"), "namespace": "team-a",
                "annotations": {"notes": "x".repeat(64 * 1024)}},
            "spec": {"limits": [{"type": "Container", "min": {"cpu": format!("{}m", i + 1)}}]}})
    }));
    f.limit_ranges = Arc::new(limit_ranges);
    let addr = start(f.clone()).await;
    let shutdown = CancellationToken::new();
    let lookup = started(addr, &shutdown);
    assert!(!lookup.ready());
    let found = lookup.limit_ranges("team-a").await.expect("read");
    assert!(
        found.iter().all(|lr| lr.metadata.annotations.is_none()),
        "annotations are dropped"
    );
    let cpus = min_cpu(found);
    assert_eq!(cpus.len(), 25, "every page is read: {cpus:?}");
    assert_eq!(cpus[0], "50m");
    let queries = f.lr_queries.lock().unwrap().clone();
    assert_eq!(queries.len(), 2, "{queries:?}");
    for query in &queries {
        assert!(query.split('&').any(|kv| kv == "limit=20"), "{query}");
    }
    assert_eq!(f.gets.load(Ordering::SeqCst), 2);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caches_keep_only_what_injection_reads() {
    // Anyone allowed to create ServiceAccounts (the `edit` role) filled
    // the webhook's cache, which held every ServiceAccount of the cluster
    // with all its labels and annotations (up to 256 KiB of annotations
    // each, more of labels): a thousand such are 250 MiB, past its memory
    // limit, and each restart lists them again.
    let f = fake();
    let bulk = "x".repeat(200 * 1024);
    let labels: serde_json::Map<String, Value> = (0..2000)
        .map(|i| (format!("label-{i}"), json!("v".repeat(60))))
        .collect();
    let role = "arn:aws:iam::123456789012:role/bulky";
    let bulky = |name: &str| {
        meta(
            Some("tenant"),
            name,
            json!({"eks.amazonaws.com/role-arn": role, "notes": bulk}),
            Value::Object(labels.clone()),
        )
    };
    {
        let mut sa = f.service_accounts.lock().unwrap();
        sa.listed.push(bulky("bulky"));
        sa.gettable
            .insert("tenant/bulky-new".into(), bulky("bulky-new"));
        let mut ns_labels = labels.clone();
        ns_labels.insert("bedrock-broker.io/inject".into(), json!("true"));
        f.namespaces.lock().unwrap().listed.push(meta(
            None,
            "tenant",
            json!({"notes": bulk}),
            Value::Object(ns_labels),
        ));
    }
    let addr = start(f.clone()).await;
    let shutdown = CancellationToken::new();
    let lookup = started(addr, &shutdown);
    synced(&lookup).await;

    // Keys compared, not whole maps: a failure would print 200 KiB.
    let keys = |found: Option<std::collections::BTreeMap<String, String>>| {
        found.map(|m| m.into_iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>())
    };
    let only_the_role = Some(vec![("eks.amazonaws.com/role-arn".to_owned(), role.len())]);
    let cached = lookup.service_account_annotations("tenant", "bulky").await;
    assert_eq!(keys(cached.expect("read")), only_the_role);
    let fetched = lookup
        .service_account_annotations("tenant", "bulky-new")
        .await;
    assert_eq!(
        keys(fetched.expect("read")),
        only_the_role,
        "a direct read too"
    );
    let ns = lookup.namespace_labels("tenant").await.expect("read");
    assert_eq!(
        keys(ns),
        Some(vec![("bedrock-broker.io/inject".to_owned(), 4)])
    );
    // A list is read whole before anything is dropped: pages stay small.
    for objects in [&f.service_accounts, &f.namespaces] {
        let queries = objects.lock().unwrap().list_queries.clone();
        assert!(!queries.is_empty());
        for query in queries {
            assert!(query.split('&').any(|kv| kv == "limit=20"), "{query}");
        }
    }
    shutdown.cancel();
}
