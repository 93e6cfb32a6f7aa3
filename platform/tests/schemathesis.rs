//! Every HTTP API of the platform fuzzed from its own OpenAPI document: `schemathesis` runs every
//! check (no server error, every status, content type, header and body as documented, schema-
//! invalid input refused, schema-valid input accepted or refused for what it means, a route
//! behind a token refused without it, stateful links such as create an account then read it)
//! against the one-command platform: order-svc's public API as a buyer, and the operator APIs
//! of order-svc, payment-svc, inventory-svc and the coordinator with the admin token.
//!
//! First, the document each running service serves must be the one checked in
//! (`docs/openapi/<service>.json`), so the fuzzed contract is the reviewed one, and every path
//! asked with a method it does not document answers 405 with an `Allow` that lists exactly the
//! documented ones (the document is the whole surface, not a part of it). Last, the
//! platform must still work and still balance: a new buyer's order is confirmed, and the
//! cross-database audit (DESIGN §5) holds over everything the fuzzing did (orders, deposits,
//! payouts, restocks, price changes).
//!
//! The switches that break the platform on purpose (a participant's faults, the crash
//! failpoints) are fuzzed after everything else, then switched off: armed in the middle of the
//! run they would hang or kill the services the rest of the run reads.
//!
//! Needs `schemathesis` (a Python package): `scripts/test` installs it into
//! `target/tools/st` when missing; on `PATH` works too. Without it the test fails saying so;
//! `ALLOW_SKIP_SCHEMATHESIS=1` skips it knowingly (refused in CI). `schemathesis.toml` at the
//! repository's root configures it.

mod common;

use common::{repo, Running};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn schemathesis() -> Option<PathBuf> {
    let local = repo().join("target/tools/st/bin/schemathesis");
    if local.exists() {
        return Some(local);
    }
    testkit::which("schemathesis").map(PathBuf::from)
}

/// The services with an HTTP API, by the name of their document and their port.
const SERVICES: [(&str, u16); 4] = [
    ("order-svc", 8080),
    ("payment-svc", 8081),
    ("inventory-svc", 8082),
    ("coordinator", 8090),
];

/// What the main run leaves out: the operations that arm a switch (a fault on a participant's
/// branch calls, a crash point; fuzzed last), and the CPU profile, whose every
/// valid call takes the seconds it asks for, up to a minute (`platform/tests/profile.rs` tests
/// it).
const LEFT_OUT: &str = r"^PUT .*/(faults|failpoints)/\{|^GET /debug/pprof/";

/// The operations that read or reset the switches: fuzzed with the switches.
const SWITCHBOARD: &str = r"/(faults|failpoints)";

/// One schemathesis run over the operations `filter` selects; its summary, once it passed.
struct Run<'a> {
    st: &'a PathBuf,
    p: &'a Running,
    buyer: &'a str,
    admin: &'a str,
}

impl Run<'_> {
    /// Runs schemathesis on `service`'s document (at `port`) over the operations `filter`
    /// (schemathesis's own flags) selects; returns how many it tested, and how many of the
    /// document's links its stateful phase followed (none without that phase).
    fn fuzz(&self, service: &str, port: u16, filter: &[&str]) -> (usize, Option<usize>) {
        // Run in the platform's folder (schemathesis and Hypothesis keep state where they run),
        // with a fixed seed (a failure here is the API's, reproducible, not a new draw's), for
        // at most ten minutes.
        let config = repo().join("schemathesis.toml");
        let run = Command::new("timeout")
            .arg("600")
            .arg(self.st)
            .args([
                "--config-file",
                config.to_str().unwrap(),
                "run",
                // The checked-in document, equal to the served one (checked first): loaded
                // from its URL, schemathesis would leave out the document's own operation.
                repo()
                    .join(format!("docs/openapi/{service}.json"))
                    .to_str()
                    .unwrap(),
                "--url",
                &self.p.url(port, ""),
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--seed",
                "20261202",
                "--generation-database",
                "none",
                // One worker: CPython 3.12/3.13 can fail compiling in two threads at once
                // ("AST constructor recursion depth mismatch"), an error of the tool, not the API.
                "--workers",
                "1",
            ])
            .args(filter)
            .current_dir(self.p.root.path())
            .env("NO_COLOR", "1")
            // schemathesis.toml's [auth.openapi.*] read them: each operation gets the token
            // its security scheme names.
            .env("TCC_PAY_BUYER_TOKEN", self.buyer)
            .env("TCC_PAY_ADMIN_TOKEN", self.admin)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        let summary = out
            .lines()
            .skip_while(|l| !l.contains("SUMMARY"))
            .collect::<Vec<_>>()
            .join("\n");
        let links: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("API Links:") || l.contains("Scenarios:"))
            .map(str::trim)
            .collect();
        eprintln!("== {service} {filter:?} {links:?}\n{summary}");
        assert!(
            run.status.success(),
            "schemathesis found failures in {service}'s API ({filter:?}):\n{out}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        // How many links the stateful phase followed (`API Links: N covered / M selected`).
        let covered = links
            .iter()
            .find_map(|l| l.strip_prefix("API Links:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok());
        let tested = tested(&out)
            .unwrap_or_else(|| panic!("no 'Tested: N' in schemathesis's output:\n{out}"));
        (tested, covered)
    }
}

/// The `N` of schemathesis's `Tested: N` line.
fn tested(out: &str) -> Option<usize> {
    let after = &out[out.find("Tested: ")? + "Tested: ".len()..];
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `"<METHOD> <path>"` of every operation in a document, as schemathesis names them.
fn operations(doc: &serde_json::Value) -> Vec<String> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_of_every_service_fuzzed_from_its_served_openapi_document_answers_as_documented(
) {
    let Some(st) = schemathesis() else {
        let skip = std::env::var("ALLOW_SKIP_SCHEMATHESIS").is_ok_and(|v| v == "1")
            && std::env::var("CI").map_or(true, |v| v.is_empty());
        let why = "no schemathesis (scripts/test installs it into target/tools/st; or pip install schemathesis)";
        assert!(
            skip,
            "{why}; ALLOW_SKIP_SCHEMATHESIS=1 skips this test outside CI"
        );
        eprintln!("SKIPPED (no schemathesis): {why}");
        return;
    };
    // No rate limit for the fuzzing buyer: a 429 must not pass for an answer to valid input.
    let p = Running::start_with(
        env!("CARGO_BIN_EXE_platform"),
        &[("ORDER_API__RATE_LIMIT__PER_SECOND", "0")],
    );
    let http = reqwest::Client::new();

    let mut selected = Vec::new();
    for (service, port) in SERVICES {
        let served: serde_json::Value = http
            .get(p.url(port, "/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let checked_in: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join(format!("docs/openapi/{service}.json"))).unwrap(),
        )
        .unwrap();
        assert!(
            served == checked_in,
            "{service} serves another document than docs/openapi/{service}.json: \
             UPDATE_OPENAPI=1 cargo test --workspace --lib openapi, and review the change"
        );
        let ops = operations(&served);
        assert!(
            ops.iter().any(|op| op == "GET /debug/pprof/profile"),
            "{service}: the profile is documented"
        );
        let armed = ops.iter().filter(|op| is_switch(op)).count();
        let board = ops.iter().filter(|op| on_switchboard(op)).count();
        selected.push((service, port, ops.len(), armed, board));
    }

    let buyer = p.user_token("alice");
    let admin = p.admin_token();
    let mut refused = 0;
    for (service, port) in SERVICES {
        refused += every_other_method_is_refused_with_what_the_path_allows(
            &http,
            &p.url(port, ""),
            service,
            &admin,
        )
        .await;
    }
    eprintln!("methods refused with 405 and their Allow: {refused}");
    let run = Run {
        st: &st,
        p: &p,
        buyer: &buyer,
        admin: &admin,
    };
    let mut total = 0;
    for &(service, port, ops, armed, _) in &selected {
        let (n, links) = run.fuzz(service, port, &["--exclude-name-regex", LEFT_OUT]);
        // The stateful phase followed links: list, then read or act on an item of the list.
        assert!(
            links.is_some_and(|covered| covered > 0),
            "{service}: no link followed ({links:?})"
        );
        assert_eq!(
            n,
            ops - armed - 1,
            "{service}: every operation but the switches and the profile was tested"
        );
        total += n;
        if service == "order-svc" {
            // Valid orders went through: the run placed some (not every answer was a refusal).
            let placed: serde_json::Value = http
                .get(p.url(8080, "/api/v1/orders"))
                .bearer_auth(&buyer)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let confirmed = placed["orders"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["status"] == "confirmed" || o["status"] == "refunded")
                .count();
            assert!(confirmed > 0, "no order of the run was confirmed: {placed}");
            eprintln!("orders the run confirmed (or refunded): {confirmed}");
        }
    }
    for &(service, port, _, _, board) in selected.iter().filter(|s| s.3 > 0) {
        let (n, _) = run.fuzz(
            service,
            port,
            // No stateful phase: the document's links lead out of the switchboard.
            &[
                "--include-name-regex",
                SWITCHBOARD,
                "--phases",
                "examples,coverage,fuzzing",
            ],
        );
        assert_eq!(
            n, board,
            "{service}: every operation of the switchboard was tested"
        );
        total += n;
    }
    eprintln!("operations tested: {total}");

    // Every switch off, then the platform works and balances.
    let endpoints = admin::Endpoints {
        coordinator: p.url(8090, ""),
        order: p.url(8080, ""),
        payment: p.url(8081, ""),
        inventory: p.url(8082, ""),
        tokens: admin::Tokens::same(&admin),
    };
    let a = admin::Admin::new(&endpoints);
    for (api, prefix) in [
        (&a.order.0, "/admin"),
        (&a.payment.0, "/admin"),
        (&a.inventory.0, "/admin"),
    ] {
        let cleared: serde_json::Value = api
            .delete(&format!("{prefix}/faults"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", api.base()));
        assert_eq!(cleared["armed"], serde_json::json!([]), "{cleared}");
    }
    for (api, prefix) in [(&a.order.0, "/admin"), (&a.coordinator, "/api/v1/admin")] {
        let list: host::failpoint::FailpointList =
            api.get(&format!("{prefix}/failpoints")).await.unwrap();
        for armed in list.armed {
            let _: host::failpoint::FailpointList = api
                .delete(&format!("{prefix}/failpoints/{}", armed.point))
                .await
                .unwrap();
        }
        let list: host::failpoint::FailpointList =
            api.get(&format!("{prefix}/failpoints")).await.unwrap();
        assert!(list.armed.is_empty(), "{list:?}");
    }
    a.payment
        .open_account("after-fuzz", 1_000_000)
        .await
        .unwrap();
    a.inventory.open_sku("after-fuzz", 10).await.unwrap();
    a.order
        .put_catalog_item("after-fuzz", "What the fuzzing left", 700)
        .await
        .unwrap();
    let order: serde_json::Value = http
        .post(p.url(8080, "/api/v1/orders"))
        .bearer_auth(p.user_token("after-fuzz"))
        .header("Idempotency-Key", "after-fuzz-1")
        .json(&serde_json::json!({"sku": "after-fuzz", "quantity": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["amount"], 2100, "{order}");
    let report = audit::run(&endpoints, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("audit: {e}"));
    assert!(report.ok, "the audit after the fuzzing:\n{report}");
    eprintln!("{report}");
}

/// Every path of the document `service` serves at `base`, asked with each method it does not
/// document: a 405 problem whose `Allow` lists exactly the documented ones (never a 404, which
/// would say the path is not there). How many requests it made.
async fn every_other_method_is_refused_with_what_the_path_allows(
    http: &reqwest::Client,
    base: &str,
    service: &str,
    token: &str,
) -> usize {
    use reqwest::Method;
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join(format!("docs/openapi/{service}.json"))).unwrap(),
    )
    .unwrap();
    let mut asked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let mut documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        documented.sort();
        // Any value stands for a path parameter: the method is refused before it is read.
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in [
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
        ] {
            if documented.iter().any(|m| m == method.as_str()) {
                continue;
            }
            let r = http
                .request(method.clone(), format!("{base}{concrete}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let mut allow: Vec<String> = r
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
            allow.sort();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert_eq!(status, 405, "{service}: {method} {path}: {body}");
            assert_eq!(allow, documented, "{service}: {method} {path}'s Allow");
            assert_eq!(
                body["code"], "method_not_allowed",
                "{service}: {method} {path}"
            );
            asked += 1;
        }
    }
    asked
}

/// Whether an operation is one [`SWITCHBOARD`] selects.
fn on_switchboard(op: &str) -> bool {
    op.contains("/faults") || op.contains("/failpoints")
}

/// Whether an operation arms a switch (the first half of [`LEFT_OUT`]).
fn is_switch(op: &str) -> bool {
    op.starts_with("PUT ") && (op.contains("/faults/{") || op.contains("/failpoints/{"))
}
