//! A Kubernetes API server for Leases on 127.0.0.1: `coordination.k8s.io/v1` Lease GET,
//! POST and PATCH with the API server's rules that fencing relies on. A server-side apply
//! (`application/apply-patch+yaml`) that changes a field another field manager owns is
//! refused with 409 Conflict; a strategic merge patch takes the fields it sets, and a null
//! removes one. Errors are `Status` objects, as the API server sends them. It can be made to
//! fail every request (503 as an outage, 403 as missing RBAC).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Lease {
    spec: BTreeMap<String, Value>,
    /// Field → the field manager that set it last.
    owners: HashMap<String, String>,
    version: u64,
}

type Leases = Arc<Mutex<HashMap<(String, String), Lease>>>;

#[derive(Clone)]
pub struct KubeApi {
    pub addr: SocketAddr,
    leases: Leases,
    failing: Arc<AtomicU16>,
}

impl KubeApi {
    pub async fn start() -> KubeApi {
        let leases = Leases::default();
        let failing = Arc::new(AtomicU16::new(0));
        let base = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = Router::new()
            .route(base, post(create))
            .route(&format!("{base}/{{name}}"), get(read).patch(patch))
            .with_state(leases.clone())
            .layer(axum::middleware::from_fn_with_state(
                failing.clone(),
                outage,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        KubeApi {
            addr,
            leases,
            failing,
        }
    }

    /// Every request gets this status from now on (`None`: served again).
    pub fn fail_with(&self, status: Option<StatusCode>) {
        self.failing
            .store(status.map_or(0, |s| s.as_u16()), Ordering::SeqCst);
    }

    /// A kubeconfig that points at this server, for `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// `(lease name, holderIdentity)` of every Lease in `namespace` that has a holder.
    pub fn holders(&self, namespace: &str) -> Vec<(String, String)> {
        let leases = self.leases.lock().unwrap();
        let mut out: Vec<_> = leases
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|((_, name), lease)| {
                let holder = lease.spec.get("holderIdentity")?.as_str()?.to_string();
                Some((name.clone(), holder))
            })
            .collect();
        out.sort();
        out
    }

    /// Another party takes (or renews) the Lease for `duration_secs`, as a second holder would.
    pub fn give_to(&self, namespace: &str, name: &str, holder: &str, duration_secs: u64) {
        let mut leases = self.leases.lock().unwrap();
        let lease = leases
            .get_mut(&(namespace.to_string(), name.to_string()))
            .expect("the Lease exists");
        let now = now();
        for (field, value) in [
            ("holderIdentity", json!(holder)),
            ("acquireTime", json!(now)),
            ("renewTime", json!(now)),
            ("leaseDurationSeconds", json!(duration_secs)),
        ] {
            lease.spec.insert(field.into(), value);
            lease.owners.insert(field.into(), holder.into());
        }
        lease.version += 1;
    }

    /// The Lease is free again, as if its holder released it.
    pub fn release(&self, namespace: &str, name: &str) {
        let mut leases = self.leases.lock().unwrap();
        let lease = leases
            .get_mut(&(namespace.to_string(), name.to_string()))
            .expect("the Lease exists");
        for field in [
            "holderIdentity",
            "acquireTime",
            "renewTime",
            "leaseDurationSeconds",
        ] {
            lease.spec.remove(field);
            lease.owners.remove(field);
        }
        lease.version += 1;
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Microsecond)
        .unwrap()
        .to_string()
}

async fn outage(State(failing): State<Arc<AtomicU16>>, request: Request, next: Next) -> Response {
    match failing.load(Ordering::SeqCst) {
        403 => status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:sfzb-test:default\" cannot get resource \"leases\"".into(),
        ),
        0 => next.run(request).await,
        code => status(
            StatusCode::from_u16(code).unwrap(),
            "ServiceUnavailable",
            "the API server is failing".into(),
        ),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn object(ns: &str, name: &str, lease: &Lease) -> Response {
    axum::Json(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": lease.version.to_string()},
        "spec": lease.spec,
    }))
    .into_response()
}

async fn read(State(leases): State<Leases>, Path((ns, name)): Path<(String, String)>) -> Response {
    let leases = leases.lock().unwrap();
    match leases.get(&(ns.clone(), name.clone())) {
        Some(lease) => object(&ns, &name, lease),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn create(State(leases): State<Leases>, Path(ns): Path<String>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let name = body["metadata"]["name"].as_str().unwrap().to_string();
    let mut leases = leases.lock().unwrap();
    let key = (ns.clone(), name.clone());
    if leases.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    let mut lease = Lease {
        version: 1,
        ..Lease::default()
    };
    if let Some(spec) = body["spec"].as_object() {
        for (field, value) in spec.iter().filter(|(_, v)| !v.is_null()) {
            lease.spec.insert(field.clone(), value.clone());
        }
    }
    let response = object(&ns, &name, &lease);
    leases.insert(key, lease);
    (StatusCode::CREATED, response).into_response()
}

async fn patch(
    State(leases): State<Leases>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let manager = query.get("fieldManager").cloned().unwrap_or_default();
    let apply = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    let mut leases = leases.lock().unwrap();
    let Some(lease) = leases.get_mut(&(ns.clone(), name.clone())) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
        );
    };
    let spec = body["spec"].as_object().cloned().unwrap_or_default();
    if apply {
        let conflicts: Vec<String> = spec
            .iter()
            .filter(|(field, value)| {
                lease
                    .owners
                    .get(*field)
                    .is_some_and(|owner| *owner != manager)
                    && lease.spec.get(*field) != Some(value)
            })
            .map(|(field, _)| format!(".spec.{field}"))
            .collect();
        if !conflicts.is_empty() {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Apply failed with {} conflicts: {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            );
        }
    }
    for (field, value) in spec {
        if value.is_null() {
            lease.spec.remove(&field);
            lease.owners.remove(&field);
        } else {
            lease.spec.insert(field.clone(), value);
            lease.owners.insert(field, manager.clone());
        }
    }
    lease.version += 1;
    object(&ns, &name, lease)
}
