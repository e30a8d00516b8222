//! `docs/openapi.yaml` and the router agree: every route and method the server serves is documented, and
//! every documented one is served (a request to it is not a 404 or 405).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use kv_infra_http::routes::ROUTES;

/// (path, method) pairs of the document: paths at two spaces of indent, methods at four.
fn documented() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.yaml"
    ))
    .unwrap();
    let mut in_paths = false;
    let mut path = String::new();
    let mut out = BTreeSet::new();
    for line in doc.lines() {
        if line == "paths:" {
            in_paths = true;
            continue;
        }
        if !in_paths || line.trim().is_empty() {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = format!("/{}", p.trim_end_matches(':'));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "put", "post", "delete", "patch", "head"].contains(&m) {
                out.insert((path.clone(), m.to_uppercase()));
            }
        }
    }
    out
}

#[test]
fn every_served_route_is_documented_and_nothing_else() {
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .iter()
                .map(move |m| (path.to_string(), m.to_string()))
        })
        .collect();
    assert_eq!(documented(), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let s = TestServer::default().await;
    for (path, method) in documented() {
        let path = path.replace("{key}", "k");
        let r = s.request(&method, &path, None, b"").await;
        assert!(
            !(r.status == 404 && r.text().contains("no route")),
            "{method} {path} is documented but not routed"
        );
        assert_ne!(
            r.status, 405,
            "{method} {path} is documented but not allowed"
        );
    }
}
