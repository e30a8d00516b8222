//! `docs/openapi.yaml` and the server agree. The document is parsed as YAML (a real parser, so a document
//! that YAML or OpenAPI tools reject fails here too) and checked: every route and method of the router is
//! documented and nothing else; per path, the documented statuses are exactly the ones the server can
//! answer there (`Route::statuses`); every status the error mapping gives for the errors a route can meet
//! is in that table; every `$ref` resolves; and every documented operation is routed.
//! (`python3 -m openapi_spec_validator docs/openapi.yaml` validates it fully; it is not needed here.)
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::TestServer;
use kv_app::AppError;
use kv_domain::EngineError;
use kv_infra_http::error::ApiError;
use kv_infra_http::route::Route;
use serde_norway::Value;

const METHODS: [&str; 7] = ["get", "head", "put", "post", "delete", "patch", "options"];

fn document() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.yaml"
    ))
    .unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("docs/openapi.yaml is not YAML: {e}"))
}

fn str_keys(v: &Value) -> Vec<(String, &Value)> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("expected a mapping, got {v:?}"))
        .iter()
        .map(|(k, v)| {
            let k = k
                .as_str()
                .unwrap_or_else(|| panic!("keys must be strings (quote status codes): {k:?}"));
            (k.to_string(), v)
        })
        .collect()
}

/// (path, METHOD) -> the statuses documented for that operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut out = BTreeMap::new();
    for (path, item) in str_keys(&doc["paths"]) {
        for (method, op) in str_keys(item) {
            if !METHODS.contains(&method.as_str()) {
                continue; // parameters, summary, ...
            }
            let statuses = str_keys(&op["responses"])
                .into_iter()
                .map(|(code, _)| {
                    code.parse::<u16>()
                        .unwrap_or_else(|_| panic!("{method} {path}: status {code:?}"))
                })
                .collect();
            out.insert((path.clone(), method.to_uppercase()), statuses);
        }
    }
    out
}

#[test]
fn the_document_is_openapi_3_and_every_ref_resolves() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi: {:?}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    fn walk(v: &Value, refs: &mut Vec<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() == Some("$ref") {
                        refs.push(v.as_str().unwrap().to_string());
                    } else {
                        walk(v, refs);
                    }
                }
            }
            Value::Sequence(s) => s.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let path = r
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("only local refs: {r}"));
        let target = path.split('/').fold(&doc, |v, part| &v[part]);
        assert!(!target.is_null(), "$ref {r} resolves to nothing");
    }
}

/// Checks that `v` is a mapping whose keys are all in `allowed` and whose `strings` keys hold strings.
/// (An unquoted YAML scalar with ", " in a flow mapping silently becomes extra keys: this catches it.)
fn check_object(what: &str, v: &Value, allowed: &[&str], strings: &[&str]) {
    if v.get("$ref").is_some() {
        assert_eq!(
            v.as_mapping().unwrap().len(),
            1,
            "{what}: $ref with siblings: {v:?}"
        );
        return;
    }
    for (k, value) in str_keys(v) {
        assert!(
            allowed.contains(&k.as_str()),
            "{what}: unexpected key {k:?} in {v:?}"
        );
        if strings.contains(&k.as_str()) {
            assert!(value.is_string(), "{what}: {k} must be a string: {value:?}");
        }
    }
}

const RESPONSE_KEYS: &[&str] = &["description", "headers", "content", "links"];
const PARAMETER_KEYS: &[&str] = &[
    "name",
    "in",
    "description",
    "required",
    "deprecated",
    "allowEmptyValue",
    "style",
    "explode",
    "allowReserved",
    "schema",
    "example",
    "examples",
    "content",
];

#[test]
fn paths_operations_parameters_and_responses_have_only_openapi_fields() {
    let doc = document();
    let parameters = |what: &str, v: &Value| {
        for p in v
            .as_sequence()
            .unwrap_or_else(|| panic!("{what}: parameters must be a list"))
        {
            check_object(what, p, PARAMETER_KEYS, &["name", "in", "description"]);
        }
    };
    for (name, r) in str_keys(&doc["components"]["responses"]) {
        check_object(&name, r, RESPONSE_KEYS, &["description"]);
        assert!(
            r["description"].is_string(),
            "{name}: a response needs a description"
        );
    }
    for (name, p) in str_keys(&doc["components"]["parameters"]) {
        check_object(&name, p, PARAMETER_KEYS, &["name", "in", "description"]);
    }
    for (path, item) in str_keys(&doc["paths"]) {
        let mut allowed = METHODS.to_vec();
        allowed.extend(["summary", "description", "parameters", "servers"]);
        check_object(&path, item, &allowed, &["summary", "description"]);
        if let Some(p) = item.get("parameters") {
            parameters(&path, p);
        }
        for (method, op) in str_keys(item)
            .into_iter()
            .filter(|(m, _)| METHODS.contains(&m.as_str()))
        {
            let what = format!("{method} {path}");
            check_object(
                &what,
                op,
                &[
                    "tags",
                    "summary",
                    "description",
                    "externalDocs",
                    "operationId",
                    "parameters",
                    "requestBody",
                    "responses",
                    "callbacks",
                    "deprecated",
                    "security",
                    "servers",
                ],
                &["summary", "description", "operationId"],
            );
            if let Some(p) = op.get("parameters") {
                parameters(&what, p);
            }
            for (code, r) in str_keys(&op["responses"]) {
                check_object(
                    &format!("{what} {code}"),
                    r,
                    RESPONSE_KEYS,
                    &["description"],
                );
            }
        }
    }
}

#[test]
fn every_served_route_is_documented_and_nothing_else() {
    let served: BTreeSet<(String, String)> = Route::ALL
        .iter()
        .flat_map(|route| {
            route
                .methods()
                .iter()
                .map(move |m| (route.pattern().to_string(), m.to_string()))
        })
        .collect();
    let documented: BTreeSet<_> = operations(&document()).into_keys().collect();
    assert_eq!(documented, served);
}

#[test]
fn every_status_a_route_can_answer_is_documented_and_nothing_else() {
    let ops = operations(&document());
    for (route, statuses) in Route::ALL.map(|r| (r.pattern(), r.statuses())) {
        let documented: BTreeSet<u16> = ops
            .iter()
            .filter(|((path, _), _)| path == route)
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        let served: BTreeSet<u16> = statuses.iter().copied().collect();
        assert_eq!(documented, served, "statuses of {route}");
    }
}

/// The status the error mapping gives each error a group of routes can meet is in their status list.
#[test]
fn the_error_mapping_is_covered_by_the_route_status_table() {
    let io = || EngineError::Io {
        context: "x".into(),
        source: std::io::Error::other("x"),
    };
    let engine = || {
        vec![
            EngineError::InvalidInput("x".into()),
            EngineError::Corrupted {
                file: "f".into(),
                offset: 0,
                reason: "x".into(),
            },
            io(),
        ]
    };
    let write_errors = || {
        let mut v = vec![
            AppError::EmptyKey,
            AppError::KeyTooLarge { len: 2, max: 1 },
            AppError::ValueTooLarge {
                key: "k".into(),
                len: 2,
                max: 1,
            },
            AppError::Engine(EngineError::Poisoned { reason: "x".into() }),
            AppError::Engine(EngineError::Locked { path: "p".into() }),
            AppError::Engine(EngineError::DiskFull {
                context: "x".into(),
            }),
        ];
        v.extend(engine().into_iter().map(AppError::Engine));
        v
    };
    let groups: Vec<(&[&str], Vec<AppError>)> = vec![
        (
            &["/put", "/batchput", "/delete", "/v1/kv/{key}"],
            write_errors(),
        ),
        (
            &["/batchput"],
            vec![AppError::BatchTooLarge { len: 2, max: 1 }],
        ),
        (
            &["/read", "/v1/kv/{key}"],
            vec![
                AppError::EmptyKey,
                AppError::NotFound("k".into()),
                AppError::Engine(io()),
            ],
        ),
        (
            &["/readrange", "/v1/kv"],
            vec![
                AppError::InvertedRange {
                    start: "b".into(),
                    end: "a".into(),
                },
                AppError::Engine(io()),
            ],
        ),
        (
            // Busy comes from compaction only.
            &["/v1/admin/compact"],
            vec![
                AppError::Engine(EngineError::Busy("x".into())),
                AppError::Engine(EngineError::Poisoned { reason: "x".into() }),
                AppError::Engine(EngineError::DiskFull {
                    context: "x".into(),
                }),
                AppError::Engine(io()),
            ],
        ),
    ];
    let table: BTreeMap<&str, &[u16]> = Route::ALL
        .into_iter()
        .map(|r| (r.pattern(), r.statuses()))
        .collect();
    for (routes, errors) in groups {
        for e in errors {
            let what = e.to_string();
            let status = ApiError::from(e).status.as_u16();
            for route in routes {
                assert!(
                    table[route].contains(&status),
                    "{route} can answer {status} ({what}) but its route's statuses do not list it"
                );
            }
        }
    }
}

#[test]
fn put_requires_a_key_and_exactly_one_of_value_and_data() {
    let doc = document();
    let schema =
        &doc["paths"]["/put"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let required: Vec<_> = schema["required"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["key"]);
    let one_of: BTreeSet<Vec<&str>> = schema["oneOf"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| {
            s["required"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(one_of, BTreeSet::from([vec!["value"], vec!["data"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let s = TestServer::default().await;
    for (path, method) in operations(&document()).into_keys() {
        let path = path.replace("{key}", "k");
        let r = s.request(&method, &path, None, b"").await;
        assert_ne!(
            r.status, 405,
            "{method} {path} is documented but not allowed"
        );
        if method != "HEAD" {
            assert!(
                !(r.status == 404 && r.text().contains("no route")),
                "{method} {path} is documented but not routed"
            );
        }
    }
}
