//! The admin API holds to its OpenAPI document.
//!
//! The real API (router, directory, hosts, migrations and the cluster endpoint) runs on 127.0.0.1
//! port 0 with a bearer token; two scripted host agents ([`FakeHost`]) register over the control
//! protocol so that creating, stopping, moving and cancelling can succeed as well as fail. The
//! checker reads `/openapi.json` and, for every operation in it, sends requests built from the
//! document: valid ones from the schemas (their bounds and examples, and the ids the API has
//! answered so far) and malformed ones (ids like `-1`, `3621.0`, `abc`; no token or a wrong one;
//! bodies that are not JSON, mistyped, incomplete, with unknown fields or too large). The document
//! alone decides whether a request is valid ([`validate`] is a small JSON Schema validator that
//! refuses keywords it does not know), and every answer must
//!
//! - have a status the document lists for the operation, and never a 5xx;
//! - carry the documented media type and a body valid against the documented schema (or no body
//!   when none is documented);
//! - agree with the document: a valid request is never refused as malformed (400) or unauthorised
//!   (401); a malformed one is refused with a 4xx; a secured operation without a valid token
//!   answers 401.
//!
//! Deterministic: one fixed scenario order, no random inputs, no sleeps and no timing asserted
//! (the fake hosts answer at once; the HTTP client's timeout only ends a hung run). Which of two
//! documented statuses a request gets may depend on scheduling (a cancelled migration's driver
//! may or may not have aborted it when the region is stopped), never whether the test passes.
//! Bounded: at most [`MAX_REQUESTS`] requests.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_coordinator::api::{ApiState, router};
use baton_coordinator::directory::Directory;
use baton_coordinator::hosts::Hosts;
use baton_coordinator::migrations::{Migrations, Timeouts};
use baton_net::framed::{read_frames, spawn_writer};
use baton_net::{ClusterIdentity, DevCa, LinkSettings};
use baton_wire::authority::{Ownership, OwnershipAuthority};
use baton_wire::control::{ALPN_CONTROL, AgentMessage, CONTROL_VERSION, CoordinatorMessage, HostLoad};
use baton_wire::serve::{AsJson, ServerCommand, ServerEvent};
use baton_wire::{Epoch, RegionId};
use serde_json::{Map, Value, json};

type Outcome<T> = Result<T, Box<dyn Error>>;

/// Most requests one run sends.
const MAX_REQUESTS: usize = 1500;

/// axum's default limit on a request body, in bytes.
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The API's bearer token.
const TOKEN: &str = "contract-test-token-0123456789";

/// The order operations are exercised in, by `operationId`: reads first, then what creates
/// things, then what uses them (a migration's id, a stopped region's checkpoint), then draining,
/// which makes later creations conflict; the reads again to check full lists. An operation of the
/// document that is not named here runs at the end.
const SCENARIO: &[&str] = &[
    "openapi_document",
    "metrics",
    "list_hosts",
    "list_regions",
    "list_migrations",
    "create_region",
    "start_migration",
    "get_migration",
    "cancel_migration",
    "stop_region",
    "create_region",
    "drain_host",
    "list_hosts",
    "list_regions",
    "list_migrations",
];

/// The hosts the fake agents register.
const HOSTS: [&str; 2] = ["h1", "h2"];

/// Values tried in every property of a body: wrong types, negative, fractional, beyond 64 bits,
/// empty; the document decides which are malformed where.
fn odd_values() -> Vec<Value> {
    vec![
        json!(-1),
        json!(0),
        json!(3621.0),
        json!(18_446_744_073_709_551_616.0_f64),
        json!("1"),
        json!(""),
        Value::Null,
        json!(true),
        json!(false),
        json!([]),
        json!({}),
        json!({"objects": 1}),
    ]
}

/// Path segments tried for every path parameter (sent as written, percent-escapes included).
const ODD_SEGMENTS: &[&str] =
    &["-1", "3621.0", "abc", "", "+1", "1e3", "0x10", "18446744073709551616", "%FF", "%201", "%31", "nowhere"];

#[test]
fn every_answer_of_the_admin_api_is_one_its_openapi_document_lists() {
    let cluster = Cluster::start().unwrap();
    let api = Api::new(&cluster.base);
    let document = api.document().unwrap();
    let operations = operations(&document);
    assert!(!operations.is_empty(), "the document lists no operation");
    for id in SCENARIO {
        assert!(operations.iter().any(|operation| operation.id == *id), "the scenario names {id}, not in the document");
    }
    let mut order: Vec<&Operation> =
        SCENARIO.iter().filter_map(|id| operations.iter().find(|operation| operation.id == *id)).collect();
    order.extend(operations.iter().filter(|operation| !SCENARIO.contains(&operation.id.as_str())));

    let mut checker = Checker::new(&document, api, HOSTS.iter().map(|host| host.to_string()).collect());
    for operation in order {
        checker.exercise(operation);
    }

    for (operation, statuses) in &checker.seen {
        println!("{operation}: {statuses:?}");
    }
    println!("{} requests", checker.sent);
    let differences = checker.mismatches.join("\n");
    assert!(
        checker.mismatches.is_empty(),
        "{} answers differ from the document:\n{differences}",
        checker.mismatches.len()
    );
    assert!(checker.sent <= MAX_REQUESTS, "{} requests", checker.sent);
    // The requests the document calls valid did succeed somewhere: the checker built real ones.
    for operation in &operations {
        let statuses = checker.seen.get(&operation.id).cloned().unwrap_or_default();
        assert!(
            statuses.keys().any(|status| (200..300).contains(status)),
            "{} never succeeded: {statuses:?}",
            operation.id
        );
        assert!(
            statuses.keys().any(|status| (400..500).contains(status)) || !operation.secured,
            "{} never refused a request: {statuses:?}",
            operation.id
        );
    }
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// The checker.

/// One operation of the document.
#[derive(Debug)]
struct Operation {
    id: String,
    method: String,
    template: String,
    /// The path parameters: name and schema.
    parameters: Vec<(String, Value)>,
    /// The schema of the JSON body, if the operation takes one.
    body: Option<Value>,
    /// Status (or `default`) to response object.
    responses: Map<String, Value>,
    /// Whether a bearer token is required.
    secured: bool,
}

/// Every operation of `document`.
fn operations(document: &Value) -> Vec<Operation> {
    let global_security = document.get("security").cloned().unwrap_or(json!([]));
    let mut found = Vec::new();
    for (template, item) in document["paths"].as_object().into_iter().flatten() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"] {
            let Some(operation) = item.get(method) else { continue };
            let mut parameters = Vec::new();
            for parameter in operation.get("parameters").and_then(Value::as_array).into_iter().flatten() {
                let parameter = resolve(document, parameter);
                assert_eq!(parameter["in"], "path", "the checker only knows path parameters: {parameter}");
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                parameters.push((name, parameter["schema"].clone()));
            }
            let body = operation.get("requestBody").map(|body| {
                let body = resolve(document, body);
                assert_eq!(body["required"], true, "the checker only knows required bodies: {body}");
                let content = body["content"].as_object().cloned().unwrap_or_default();
                assert!(
                    content.keys().all(|media| media == "application/json"),
                    "the checker only knows JSON bodies: {body}"
                );
                content["application/json"]["schema"].clone()
            });
            let security = operation.get("security").unwrap_or(&global_security);
            let secured = security.as_array().is_some_and(|requirements| {
                !requirements.is_empty()
                    && requirements.iter().all(|requirement| requirement.as_object().is_some_and(|r| !r.is_empty()))
            });
            found.push(Operation {
                id: operation["operationId"].as_str().unwrap_or(template).to_owned(),
                method: method.to_uppercase(),
                template: template.clone(),
                parameters,
                body,
                responses: operation["responses"].as_object().cloned().unwrap_or_default(),
                secured,
            });
        }
    }
    found
}

/// Which token a request carries.
#[derive(Clone, Copy, Debug)]
enum Token {
    Valid,
    Missing,
    Wrong,
    /// The right token with the scheme written `bearer` (schemes are case-insensitive).
    LowerCaseScheme,
}

/// A request's body.
#[derive(Clone, Debug)]
enum Body {
    None,
    Json(Value),
    Raw { content_type: Option<&'static str>, bytes: Vec<u8> },
}

/// What the document says of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Well formed, with a valid token if one is needed: never 400 or 401.
    Valid,
    /// A parameter or the body is outside the document: a 4xx other than 401.
    Malformed,
    /// A secured operation without a valid token: 401.
    Unauthorized,
}

struct Request {
    token: Token,
    path: String,
    body: Body,
    expect: Expect,
}

/// An answer.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

struct Checker<'a> {
    document: &'a Value,
    api: Api,
    hosts: Vec<String>,
    /// Ids the API answered with, by the schema naming them (`RegionId`, `MigrationId`).
    ids: BTreeMap<&'static str, BTreeSet<u64>>,
    sent: usize,
    mismatches: Vec<String>,
    /// Per operation: how many answers of each status.
    seen: BTreeMap<String, BTreeMap<u16, usize>>,
}

impl<'a> Checker<'a> {
    fn new(document: &'a Value, api: Api, hosts: Vec<String>) -> Checker<'a> {
        let mut hosts = hosts;
        hosts.push("nowhere".into());
        Checker { document, api, hosts, ids: BTreeMap::new(), sent: 0, mismatches: Vec::new(), seen: BTreeMap::new() }
    }

    /// Sends `operation` its valid and malformed requests.
    fn exercise(&mut self, operation: &Operation) {
        let samples: Vec<Vec<String>> =
            operation.parameters.iter().map(|(name, schema)| self.segment_samples(schema, name)).collect();
        let base_segments: Vec<String> =
            samples.iter().map(|values| values.first().cloned().unwrap_or_default()).collect();
        let bodies = operation.body.as_ref().map(|schema| self.body_candidates(schema)).unwrap_or_default();
        let base_body = match bodies.iter().find(|body| self.body_expectation(operation, body) == Expect::Valid) {
            Some(body) => body.clone(),
            None => Body::None,
        };
        let path = |segments: &[String]| fill(&operation.template, &operation.parameters, segments);
        let base_path = path(&base_segments);
        let base_expect = self.expectation(operation, &base_segments, &base_body);

        // The token.
        for token in [Token::Valid, Token::Missing, Token::Wrong, Token::LowerCaseScheme] {
            let expect = match token {
                Token::Missing | Token::Wrong if operation.secured => Expect::Unauthorized,
                _ => base_expect,
            };
            self.check(operation, Request { token, path: base_path.clone(), body: base_body.clone(), expect });
        }
        // Each path parameter: the values the API knows and odd segments.
        for (index, values) in samples.iter().enumerate() {
            let schema = &operation.parameters[index].1;
            let beyond = self.beyond_bounds(schema).into_iter().map(|value| value.to_string());
            let odd = ODD_SEGMENTS.iter().map(|segment| segment.to_string());
            for value in values.iter().skip(1).cloned().chain(beyond).chain(odd) {
                let mut segments = base_segments.clone();
                segments[index] = value;
                let expect = self.expectation(operation, &segments, &base_body);
                self.check(
                    operation,
                    Request { token: Token::Valid, path: path(&segments), body: base_body.clone(), expect },
                );
            }
        }
        // The body.
        for body in bodies {
            let expect = self.expectation(operation, &base_segments, &body);
            self.check(operation, Request { token: Token::Valid, path: base_path.clone(), body, expect });
        }
    }

    /// The document's verdict on a request with a valid token.
    fn expectation(&self, operation: &Operation, segments: &[String], body: &Body) -> Expect {
        let segments_valid = operation
            .parameters
            .iter()
            .zip(segments)
            .all(|((_, schema), segment)| segment_is_valid(self.document, schema, segment));
        if segments_valid && self.body_expectation(operation, body) == Expect::Valid {
            Expect::Valid
        } else {
            Expect::Malformed
        }
    }

    fn body_expectation(&self, operation: &Operation, body: &Body) -> Expect {
        let valid = match (&operation.body, body) {
            (None, Body::None) => true,
            (None, _) | (Some(_), Body::None) => false,
            (Some(schema), Body::Json(value)) => validate(self.document, schema, value).is_ok(),
            (Some(schema), Body::Raw { content_type, bytes }) => {
                let json_media = content_type
                    .and_then(|content_type| content_type.split(';').next())
                    .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
                // The 400's description: a body over 2 MiB is refused whatever it holds.
                json_media
                    && bytes.len() <= BODY_LIMIT
                    && serde_json::from_slice::<Value>(bytes)
                        .is_ok_and(|value| validate(self.document, schema, &value).is_ok())
            }
        };
        if valid { Expect::Valid } else { Expect::Malformed }
    }

    /// Path segments the document calls valid for a parameter: its bounds, examples and the ids
    /// the API answered with; host names for a host.
    fn segment_samples(&self, schema: &Value, name: &str) -> Vec<String> {
        self.value_samples(schema, name)
            .into_iter()
            .map(|value| match value {
                Value::String(text) => text,
                other => other.to_string(),
            })
            .collect()
    }

    fn value_samples(&self, schema: &Value, name: &str) -> Vec<Value> {
        let resolved = resolve(self.document, schema);
        if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
            return values.clone();
        }
        match schema_type(self.document, schema) {
            Some("integer") => {
                let mut values: BTreeSet<u64> = BTreeSet::new();
                for bound in ["minimum", "maximum"] {
                    values.extend(resolved.get(bound).and_then(Value::as_u64));
                }
                values.extend(
                    resolved.get("examples").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_u64),
                );
                if let Some(known) = ref_name(schema).and_then(|name| self.ids.get(name)) {
                    values.extend(known);
                }
                // The smallest two and the largest two: bounded, and always the bounds.
                let values: Vec<u64> = values.into_iter().collect();
                let mut chosen: Vec<u64> = values.iter().take(2).chain(values.iter().rev().take(2)).copied().collect();
                chosen.sort_unstable();
                chosen.dedup();
                chosen.into_iter().map(Value::from).collect()
            }
            Some("string") if name.contains("host") => self.hosts.iter().map(|host| json!(host)).collect(),
            Some("string") => vec![json!("x")],
            Some("boolean") => vec![json!(false), json!(true)],
            Some("number") => vec![json!(0), json!(1.5)],
            Some("object") => {
                let mut values = vec![json!({})];
                values.extend(resolved.get("examples").and_then(Value::as_array).into_iter().flatten().cloned());
                values
            }
            _ => vec![Value::Null],
        }
    }

    /// Objects a body schema describes: per `oneOf` branch its required properties, all of them,
    /// its examples, and one property at a time changed to its other samples.
    fn object_samples(&self, schema: &Value) -> Vec<Map<String, Value>> {
        let resolved = resolve(self.document, schema);
        if let Some(branches) = resolved.get("oneOf").and_then(Value::as_array) {
            return branches.iter().flat_map(|branch| self.object_samples(branch)).collect();
        }
        let properties = resolved.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
        let required: Vec<&str> = resolved
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut minimal = Map::new();
        let mut full = Map::new();
        for (name, property) in &properties {
            let first = self.value_samples(property, name).into_iter().next().unwrap_or(Value::Null);
            if required.contains(&name.as_str()) {
                minimal.insert(name.clone(), first.clone());
            }
            full.insert(name.clone(), first);
        }
        let mut samples = vec![minimal, full.clone()];
        samples.extend(
            resolved
                .get("examples")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .cloned(),
        );
        for (name, property) in &properties {
            for other in self.value_samples(property, name).into_iter().skip(1) {
                let mut changed = full.clone();
                changed.insert(name.clone(), other);
                samples.push(changed);
            }
        }
        samples
    }

    /// The integers just outside an integer schema's `minimum` and `maximum` (as far as JSON
    /// integers go), so that an API accepting more than its document says is caught.
    fn beyond_bounds(&self, schema: &Value) -> Vec<Value> {
        if schema_type(self.document, schema) != Some("integer") {
            return Vec::new();
        }
        let resolved = resolve(self.document, schema);
        let bound = |name: &str| {
            resolved
                .get(name)
                .and_then(Value::as_number)
                .and_then(|number| number.as_u64().map(i128::from).or_else(|| number.as_i64().map(i128::from)))
        };
        let beyond = [bound("minimum").map(|minimum| minimum - 1), bound("maximum").map(|maximum| maximum + 1)];
        beyond
            .into_iter()
            .flatten()
            .filter_map(|value| {
                u64::try_from(value).map(Value::from).ok().or_else(|| i64::try_from(value).map(Value::from).ok())
            })
            .collect()
    }

    /// Bodies to send: the samples, each branch's example spoilt one property at a time (odd
    /// values, the property missing, an unknown one added), the branches' examples merged, bodies
    /// that are not objects, not JSON, not declared JSON or too large.
    fn body_candidates(&self, schema: &Value) -> Vec<Body> {
        let samples = self.object_samples(schema);
        let resolved = resolve(self.document, schema);
        let branches: Vec<Value> = match resolved.get("oneOf").and_then(Value::as_array) {
            Some(branches) => branches.clone(),
            None => vec![schema.clone()],
        };
        let mut bodies: Vec<Value> = samples.iter().cloned().map(Value::Object).collect();
        let mut merged = Map::new();
        for branch in &branches {
            let branch = resolve(self.document, branch);
            let base = branch
                .get("examples")
                .and_then(Value::as_array)
                .and_then(|examples| examples.first())
                .and_then(Value::as_object)
                .cloned()
                .or_else(|| self.object_samples(branch).into_iter().nth(1))
                .unwrap_or_default();
            merged.extend(base.clone());
            let properties = branch.get("properties").and_then(Value::as_object);
            for name in base.keys() {
                let property = properties.and_then(|properties| properties.get(name));
                let beyond = property.map(|property| self.beyond_bounds(property)).unwrap_or_default();
                for odd in beyond.into_iter().chain(odd_values()) {
                    let mut spoilt = base.clone();
                    spoilt.insert(name.clone(), odd);
                    bodies.push(Value::Object(spoilt));
                }
                let mut missing = base.clone();
                missing.remove(name);
                bodies.push(Value::Object(missing));
            }
            let mut unknown = base.clone();
            unknown.insert("unexpected".into(), json!(1));
            bodies.push(Value::Object(unknown));
        }
        bodies.push(Value::Object(merged));
        bodies.extend([json!({}), json!([]), Value::Null, json!("x"), json!(1)]);
        let mut unique = BTreeSet::new();
        bodies.retain(|body| unique.insert(body.to_string()));

        let base = samples.first().map(|sample| Value::Object(sample.clone()).to_string()).unwrap_or_default();
        let mut candidates: Vec<Body> = bodies.into_iter().map(Body::Json).collect();
        for (content_type, bytes) in [
            (Some("application/json"), Vec::new()),
            (Some("application/json"), b"{".to_vec()),
            (Some("application/json"), b"{\"region\": 3.621e3}".to_vec()),
            (Some("application/json; charset=utf-8"), base.clone().into_bytes()),
            (Some("text/plain"), base.clone().into_bytes()),
            (None, base.clone().into_bytes()),
            // Valid against the schema, one byte over the limit. Exactly one: the server reads it
            // all before it answers, so the client sees the answer instead of a connection the
            // server closed while the rest of a larger body was still being sent.
            (Some("application/json"), padded(&base, BODY_LIMIT + 1)),
        ] {
            candidates.push(Body::Raw { content_type, bytes });
        }
        candidates
    }

    /// Sends `request` and compares the answer with the document.
    fn check(&mut self, operation: &Operation, request: Request) {
        self.sent += 1;
        let shown_body = match &request.body {
            Body::None => String::new(),
            Body::Json(value) => value.to_string(),
            Body::Raw { content_type, bytes } => {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
                format!("{content_type:?} {text} ({} bytes)", bytes.len())
            }
        };
        let what = format!(
            "{} {} token {:?} body {shown_body} (expected {:?})",
            operation.method, request.path, request.token, request.expect
        );
        let answer = match self.api.send(&operation.method, &request.path, request.token, &request.body) {
            Ok(answer) => answer,
            Err(error) => {
                self.mismatches.push(format!("{what}: no answer: {error}"));
                return;
            }
        };
        *self.seen.entry(operation.id.clone()).or_default().entry(answer.status).or_default() += 1;
        let mut problems = Vec::new();
        if answer.status >= 500 {
            problems.push("a server error".to_owned());
        }
        match request.expect {
            Expect::Valid if matches!(answer.status, 400 | 401) => {
                problems.push("the document calls this request valid".to_owned());
            }
            Expect::Malformed if !(400..500).contains(&answer.status) || answer.status == 401 => {
                problems.push("the document calls this request malformed".to_owned());
            }
            Expect::Unauthorized if answer.status != 401 => problems.push("no valid token".to_owned()),
            _ => {}
        }
        let status = answer.status.to_string();
        match operation.responses.get(&status).or_else(|| operation.responses.get("default")) {
            None => problems.push(format!("status {status} is not documented")),
            Some(response) => {
                if let Err(problem) = self.matches_response(response, &answer) {
                    problems.push(problem);
                }
            }
        }
        if problems.is_empty() {
            if (200..300).contains(&answer.status)
                && let Ok(body) = serde_json::from_str::<Value>(&answer.body)
            {
                self.harvest(&body);
            }
        } else {
            let body: String = answer.body.chars().take(300).collect();
            self.mismatches.push(format!("{what}: answered {} {body}: {}", answer.status, problems.join("; ")));
        }
    }

    /// The answer's media type and body against the documented response.
    fn matches_response(&self, response: &Value, answer: &Answer) -> Result<(), String> {
        let response = resolve(self.document, response);
        let content = response.get("content").and_then(Value::as_object).filter(|content| !content.is_empty());
        let Some(content) = content else {
            return if answer.body.is_empty() { Ok(()) } else { Err("a body where none is documented".into()) };
        };
        let media = answer
            .content_type
            .as_deref()
            .and_then(|content_type| content_type.split(';').next())
            .map(|media| media.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let Some(documented) = content.get(&media) else {
            return Err(format!("media type {media:?} is not documented ({:?})", content.keys().collect::<Vec<_>>()));
        };
        if media == "application/json" {
            let body: Value = serde_json::from_str(&answer.body).map_err(|error| format!("not JSON: {error}"))?;
            if let Some(schema) = documented.get("schema") {
                validate(self.document, schema, &body).map_err(|error| format!("body: {error}"))?;
            }
        }
        Ok(())
    }

    /// Remembers the ids an answer names, for later requests.
    fn harvest(&mut self, value: &Value) {
        match value {
            Value::Object(object) => {
                for (key, value) in object {
                    match (key.as_str(), value) {
                        ("region", Value::Number(number)) => {
                            self.ids.entry("RegionId").or_default().extend(number.as_u64());
                        }
                        ("regions", Value::Array(regions)) => {
                            self.ids.entry("RegionId").or_default().extend(regions.iter().filter_map(Value::as_u64));
                        }
                        ("id", Value::Number(number)) => {
                            self.ids.entry("MigrationId").or_default().extend(number.as_u64());
                        }
                        _ => self.harvest(value),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.harvest(item)),
            _ => {}
        }
    }
}

/// The path of `template` with its parameters replaced by `segments` (sent as given).
fn fill(template: &str, parameters: &[(String, Value)], segments: &[String]) -> String {
    let mut path = template.to_owned();
    for ((name, _), segment) in parameters.iter().zip(segments) {
        path = path.replace(&format!("{{{name}}}"), segment);
    }
    path
}

/// `text` followed by spaces, `length` bytes in all.
fn padded(text: &str, length: usize) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(length.max(bytes.len()), b' ');
    bytes
}

/// Whether the document admits `segment` (as sent, percent-escaped) for a path parameter. A path
/// parameter is required, so an empty one is not; an integer is decimal digits (the id schemas'
/// description); a string is any UTF-8 text.
fn segment_is_valid(document: &Value, schema: &Value, segment: &str) -> bool {
    let Some(text) = percent_decoded(segment) else { return false };
    if text.is_empty() {
        return false;
    }
    match schema_type(document, schema) {
        Some("integer") => {
            text.bytes().all(|byte| byte.is_ascii_digit())
                && text
                    .parse::<u128>()
                    .ok()
                    .and_then(|value| u64::try_from(value).ok())
                    .is_some_and(|value| validate(document, schema, &json!(value)).is_ok())
        }
        Some("string") => validate(document, schema, &json!(text)).is_ok(),
        other => panic!("the checker does not know path parameters of type {other:?}"),
    }
}

fn percent_decoded(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = segment.get(index + 1..index + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

// ---------------------------------------------------------------------------------------------
// A small JSON Schema validator: the keywords the document uses, and a panic on any other, so a
// new keyword in the document is taught to the checker before it is trusted.

const KNOWN_KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "format",
    "minimum",
    "maximum",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "maxProperties",
    "items",
    "oneOf",
    "description",
    "title",
    "examples",
    "default",
];

/// `schema` itself, or what its `$ref` points to (transitively).
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let target = reference.strip_prefix('#').and_then(|pointer| document.pointer(pointer));
            resolve(document, target.unwrap_or_else(|| panic!("dangling reference {reference}")))
        }
        None => schema,
    }
}

/// The component a schema refers to (`RegionId` for `#/components/schemas/RegionId`).
fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str).and_then(|reference| reference.rsplit('/').next())
}

fn schema_type<'a>(document: &'a Value, schema: &'a Value) -> Option<&'a str> {
    resolve(document, schema).get("type").and_then(Value::as_str)
}

fn validate(document: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    let Some(keywords) = schema.as_object() else { return Err(format!("not a schema: {schema}")) };
    if let Some(unknown) = keywords.keys().find(|keyword| !KNOWN_KEYWORDS.contains(&keyword.as_str())) {
        panic!("the checker does not know the keyword {unknown:?} (in {schema})");
    }
    if keywords.contains_key("$ref") {
        validate(document, resolve(document, schema), value)?;
    }
    if let Some(types) = keywords.get("type") {
        let names: Vec<&str> = match types {
            Value::String(name) => vec![name.as_str()],
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            other => return Err(format!("a type that is not a name: {other}")),
        };
        if !names.iter().any(|name| has_type(value, name)) {
            return Err(format!("{value} is not of type {names:?}"));
        }
    }
    if let (Some(format), Value::Number(number)) = (keywords.get("format").and_then(Value::as_str), value) {
        let fits = match format {
            "uint64" => number.is_u64(),
            "int64" => number.is_i64(),
            "uint32" => number.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
            "int32" => number.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "double" | "float" => true,
            other => panic!("the checker does not know the number format {other:?}"),
        };
        if !fits {
            return Err(format!("{value} is not a {format}"));
        }
    }
    if let Value::Number(number) = value {
        if let Some(minimum) = keywords.get("minimum").and_then(Value::as_number)
            && compare(number, minimum).is_lt()
        {
            return Err(format!("{value} is below {minimum}"));
        }
        if let Some(maximum) = keywords.get("maximum").and_then(Value::as_number)
            && compare(number, maximum).is_gt()
        {
            return Err(format!("{value} is above {maximum}"));
        }
    }
    if let Some(allowed) = keywords.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{value} is not one of {allowed:?}"));
    }
    if let Value::Object(object) = value {
        let properties = keywords.get("properties").and_then(Value::as_object);
        for (name, property) in properties.into_iter().flatten() {
            if let Some(field) = object.get(name) {
                validate(document, property, field).map_err(|error| format!("{name}: {error}"))?;
            }
        }
        for name in keywords.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                return Err(format!("{name} is missing"));
            }
        }
        let declared = |name: &String| properties.is_some_and(|properties| properties.contains_key(name));
        match keywords.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                if let Some(extra) = object.keys().find(|name| !declared(name)) {
                    return Err(format!("{extra} is not a property of {schema}"));
                }
            }
            Some(Value::Bool(true)) | None => {}
            Some(extra) => {
                for (name, field) in object.iter().filter(|(name, _)| !declared(name)) {
                    validate(document, extra, field).map_err(|error| format!("{name}: {error}"))?;
                }
            }
        }
        if let Some(most) = keywords.get("maxProperties").and_then(Value::as_u64)
            && object.len() as u64 > most
        {
            return Err(format!("more than {most} properties"));
        }
    }
    if let (Value::Array(items), Some(item)) = (value, keywords.get("items")) {
        for (index, element) in items.iter().enumerate() {
            validate(document, item, element).map_err(|error| format!("[{index}]: {error}"))?;
        }
    }
    if let Some(branches) = keywords.get("oneOf").and_then(Value::as_array) {
        let fitting: Vec<usize> =
            (0..branches.len()).filter(|&index| validate(document, &branches[index], value).is_ok()).collect();
        if fitting.len() != 1 {
            return Err(format!("{value} fits {} of the oneOf's {} branches", fitting.len(), branches.len()));
        }
    }
    Ok(())
}

/// JSON Schema's types, except that an `integer` is a JSON integer literal: serde refuses
/// `3621.0` where it reads an integer, and the id schemas' description says so.
fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "integer" => value.as_number().is_some_and(|number| number.is_u64() || number.is_i64()),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        other => panic!("the checker does not know the type {other:?}"),
    }
}

fn compare(left: &serde_json::Number, right: &serde_json::Number) -> std::cmp::Ordering {
    let exact =
        |number: &serde_json::Number| number.as_u64().map(i128::from).or_else(|| number.as_i64().map(i128::from));
    match (exact(left), exact(right)) {
        (Some(left), Some(right)) => left.cmp(&right),
        _ => left.as_f64().unwrap_or(f64::NAN).total_cmp(&right.as_f64().unwrap_or(f64::NAN)),
    }
}

// ---------------------------------------------------------------------------------------------
// The API over HTTP.

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(base: &str) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Not a timing assertion: the longest handler wait is 120 s; this only ends a hung run.
            .timeout_global(Some(Duration::from_secs(300)))
            // A fresh connection per request. The server closes a connection after answering a
            // request whose body it did not read (a 401, a malformed path); a pooled connection
            // reused at that moment ends with "Peer disconnected" and no answer, which says
            // nothing about the document.
            .max_idle_connections(0)
            .build()
            .new_agent();
        Api { base: base.to_owned(), agent }
    }

    /// `/openapi.json`, fetched without a token.
    fn document(&self) -> Outcome<Value> {
        let answer = self.send("GET", "/openapi.json", Token::Missing, &Body::None)?;
        if answer.status != 200 {
            return Err(format!("/openapi.json answered {}: {}", answer.status, answer.body).into());
        }
        Ok(serde_json::from_str(&answer.body)?)
    }

    fn send(&self, method: &str, path: &str, token: Token, body: &Body) -> Outcome<Answer> {
        let mut request = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        let authorization = match token {
            Token::Valid => Some(format!("Bearer {TOKEN}")),
            Token::Missing => None,
            Token::Wrong => Some("Bearer not-the-token-of-this-api".to_owned()),
            Token::LowerCaseScheme => Some(format!("bearer {TOKEN}")),
        };
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = match body {
            Body::None => self.agent.run(request.body(())?)?,
            Body::Json(value) => self
                .agent
                .run(request.header("Content-Type", "application/json").body(value.to_string().into_bytes())?)?,
            Body::Raw { content_type, bytes } => {
                if let Some(content_type) = content_type {
                    request = request.header("Content-Type", *content_type);
                }
                self.agent.run(request.body(bytes.clone())?)?
            }
        };
        let content_type =
            response.headers().get("content-type").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = response.body_mut().read_to_string()?;
        Ok(Answer { status: response.status().as_u16(), content_type, body })
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator and its fake hosts.

/// The coordinator's API and cluster endpoint with [`HOSTS`] registered.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    base: String,
    scratch: PathBuf,
    endpoint: quinn::Endpoint,
    fake_hosts: Vec<FakeHost>,
}

impl Cluster {
    fn start() -> Outcome<Cluster> {
        let scratch = std::env::temp_dir().join(format!("baton-openapi-contract-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let certs = scratch.join("certs");
        let ca = DevCa::open_or_create(&certs)?;
        ca.issue("coordinator")?;
        ca.issue("agent")?;
        let coordinator_identity = ClusterIdentity::load(&certs, "coordinator")?;
        let agent_identity = ClusterIdentity::load(&certs, "agent")?;
        let directory = Arc::new(Directory::open(&scratch.join("data"))?);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let (base, endpoint, fake_hosts) = runtime.block_on(async {
            let hosts = Arc::new(Hosts::default());
            let endpoint = baton_coordinator::authority::serve(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &coordinator_identity,
                directory.clone(),
                hosts.clone(),
                directory.clone(),
                Arc::new(baton_coordinator::routes::RouteNotices::default()),
            )?;
            // A migration's target never gets ready (see `FakeHost`); no phase timeout may end it
            // while the test wants to cancel it.
            let timeouts = Timeouts { prepare: Duration::from_secs(24 * 3600), ..Timeouts::default() };
            let migrations = Migrations::open(hosts.clone(), directory.clone(), 2, timeouts)?;
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
            // The balancer is not driven here (its rounds would move the fake hosts' regions); its
            // API still answers: status, plan, and changes.
            // Standbys only for regions created asking for one: the fake hosts do not feed any.
            let standbys = baton_coordinator::standby::Standbys::start(
                hosts.clone(),
                directory.clone(),
                migrations.clone(),
                baton_coordinator::standby::StandbySettings { by_default: false, ..Default::default() },
            );
            let balancing = baton_coordinator::balancing::Balancing::new(
                hosts.clone(),
                migrations.clone(),
                baton_coordinator::balancer::Mode::Off,
                baton_coordinator::balancer::Settings::default(),
                Duration::from_secs(1),
                None,
                Some(standbys.clone()),
            )?;
            let state = ApiState {
                token: Arc::new(TOKEN.to_owned()),
                directory: directory.clone(),
                hosts: hosts.clone(),
                migrations,
                balancing,
                metrics: Some(metrics),
                standbys: Some(standbys),
            };
            let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let base = format!("http://{}", listener.local_addr()?);
            tokio::spawn(async move { axum::serve(listener, router(state)).await });
            let checkpoints = Arc::new(Mutex::new(BTreeSet::new()));
            let mut fakes = Vec::new();
            for name in HOSTS {
                let fake = FakeHost::connect(
                    name,
                    endpoint.local_addr()?,
                    &agent_identity,
                    &hosts,
                    directory.clone(),
                    checkpoints.clone(),
                )
                .await?;
                fakes.push(fake);
            }
            Ok::<_, Box<dyn Error>>((base, endpoint, fakes))
        })?;
        Ok(Cluster { runtime, base, scratch, endpoint, fake_hosts })
    }

    fn stop(self) {
        let Cluster { runtime, scratch, endpoint, fake_hosts, .. } = self;
        drop(fake_hosts);
        endpoint.close(0u32.into(), b"test over");
        runtime.shutdown_background();
        let _ = std::fs::remove_dir_all(scratch);
    }
}

/// A host agent that answers at once, without processes: a claim gets a new process; `host`
/// registers the region with the directory (or takes it over at the next epoch from a checkpoint)
/// and reports `owning`, or an `error` when asked to restore a region no one stopped; `stop`
/// reports `stopped` and keeps a checkpoint. It never answers `prepare`, so a migration to it
/// waits in `preparing`, where it can be cancelled. It reports no warm process, so draining starts
/// no migration.
struct FakeHost {
    _endpoint: quinn::Endpoint,
    _connection: quinn::Connection,
}

impl FakeHost {
    async fn connect(
        name: &str,
        coordinator: SocketAddr,
        identity: &ClusterIdentity,
        hosts: &Hosts,
        directory: Arc<Directory>,
        checkpoints: Arc<Mutex<BTreeSet<u64>>>,
    ) -> Outcome<FakeHost> {
        let mut events = hosts.subscribe();
        let endpoint =
            baton_net::udp_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), quinn::EndpointConfig::default(), None)?;
        let client = baton_net::cluster_client_config(identity, LinkSettings::default(), ALPN_CONTROL)?;
        let connection = baton_net::connect_with(&endpoint, client, coordinator).await?;
        let (send, mut receive) = connection.open_bi().await?;
        let outbound = spawn_writer::<AgentMessage>(send);
        let ready = format!("{name}-agent");
        for message in [
            AgentMessage::Hello {
                version: CONTROL_VERSION,
                host: name.to_owned(),
                capacity: 64,
                capacity_cores: 8.0,
                capacity_memory: 16 << 30,
            },
            AgentMessage::Status { processes: Vec::new(), load: HostLoad::default() },
            AgentMessage::Event {
                process: ready.clone(),
                event: AsJson(ServerEvent::Error { region: None, error: "fake host ready".into() }),
            },
        ] {
            outbound.send(message)?;
        }
        let host = name.to_owned();
        tokio::spawn(async move {
            let mut started = 0u16;
            read_frames::<CoordinatorMessage>(&mut receive, |message| {
                let reply = |process: &str, event: ServerEvent| AgentMessage::Event {
                    process: process.to_owned(),
                    event: AsJson(event),
                };
                let answer = match message {
                    CoordinatorMessage::Claim { request } => {
                        started += 1;
                        let process = format!("{host}-p{started}");
                        let address = SocketAddr::from(([127, 0, 0, 1], 20_000 + started));
                        Some(AgentMessage::Claimed {
                            request,
                            process: Some((process, address)),
                            reason: String::new(),
                        })
                    }
                    CoordinatorMessage::Run { process, command: AsJson(command) } => match command {
                        ServerCommand::Host { region, from_checkpoint, .. } => Some(reply(
                            &process,
                            host_region(&directory, &checkpoints, &process, region, from_checkpoint),
                        )),
                        ServerCommand::Stop { region } => {
                            let epoch = directory.current(region).map_or(Epoch(0), |ownership| ownership.epoch);
                            if let Ok(mut checkpoints) = checkpoints.lock() {
                                checkpoints.insert(region.0);
                            }
                            Some(reply(
                                &process,
                                ServerEvent::Stopped {
                                    region,
                                    epoch,
                                    tick: 1,
                                    bytes: 1,
                                    path: format!("/checkpoints/{}", region.0),
                                    inputs_discarded: 0,
                                },
                            ))
                        }
                        _ => None,
                    },
                    CoordinatorMessage::Release { .. } | CoordinatorMessage::Free { .. } => None,
                };
                answer.is_none_or(|answer| outbound.send(answer).is_ok())
            })
            .await;
        });
        // Registered once the coordinator relays the event sent after the hello and the status.
        let registered = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(event) = events.recv().await {
                if event.host == name && event.process == ready {
                    return true;
                }
            }
            false
        });
        if !registered.await.unwrap_or(false) {
            return Err(format!("{name} did not register").into());
        }
        Ok(FakeHost { _endpoint: endpoint, _connection: connection })
    }
}

/// What a region server answers to `host`: the directory's new ownership, or why not.
fn host_region(
    directory: &Directory,
    checkpoints: &Mutex<BTreeSet<u64>>,
    process: &str,
    region: RegionId,
    from_checkpoint: bool,
) -> ServerEvent {
    let refused = |error: String| ServerEvent::Error { region: Some(region), error };
    if !from_checkpoint {
        return match directory.register(region, process) {
            Ok(ownership) => ServerEvent::Owning { region, epoch: ownership.epoch },
            Err(error) => refused(error.to_string()),
        };
    }
    if !checkpoints.lock().is_ok_and(|checkpoints| checkpoints.contains(&region.0)) {
        return refused(format!("no checkpoint of region {}", region.0));
    }
    let taken_over = directory.current(region).and_then(|current| {
        let next = Ownership { owner: process.to_owned(), epoch: Epoch(current.epoch.0 + 1) };
        directory.compare_and_swap(region, &current, &next).map(|()| next)
    });
    match taken_over {
        Ok(next) => ServerEvent::Owning { region, epoch: next.epoch },
        Err(error) => refused(error.to_string()),
    }
}
