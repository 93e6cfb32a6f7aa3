//! Every service of the one-command platform serves a CPU profile of itself behind its admin
//! token: the pprof protobuf by default, a flame graph SVG on request, one at a time, and a
//! clear 4xx for a bad request or a missing token.

mod common;

use common::Running;
use std::time::Duration;

const SERVICES: [(&str, u16); 4] = [
    ("order-svc", 8080),
    ("payment-svc", 8081),
    ("inventory-svc", 8082),
    ("coordinator", 8090),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_service_profiles_itself_as_pprof_or_a_flame_graph_behind_its_admin_token() {
    let p = Running::start(env!("CARGO_BIN_EXE_platform"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let admin = p.admin_token();
    for (service, port) in SERVICES {
        let at = |query: &str| p.url(port, &format!("/debug/pprof/profile{query}"));

        let anonymous = http.get(at("?seconds=1")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{service}");

        for bad in ["?seconds=0", "?seconds=61", "?format=png", "?seconds=1&x=1"] {
            let r = http.get(at(bad)).bearer_auth(&admin).send().await.unwrap();
            assert_eq!(r.status(), 400, "{service} {bad}");
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "{service} {bad}"
            );
        }

        // A profile, and a second asked for while the first is being taken.
        let first = http.get(at("?seconds=2")).bearer_auth(&admin).send();
        let second = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            http.get(at("?seconds=1"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
        };
        let (first, second) = tokio::join!(first, second);
        let first = first.unwrap();
        assert_eq!(second.status(), 409, "{service}");
        let problem: serde_json::Value = second.json().await.unwrap();
        assert_eq!(problem["code"], "profile_running", "{service}");
        assert_eq!(first.status(), 200, "{service}");
        assert_eq!(first.headers()["content-type"], "application/octet-stream");
        let pb = first.bytes().await.unwrap();
        // A perftools.profiles.Profile: field 1 (sample_type, a message) comes first, and the
        // string table names the sample type pprof writes.
        assert_eq!(pb.first(), Some(&0x0a), "{service}: not a pprof profile");
        let text = String::from_utf8_lossy(&pb);
        assert!(
            text.contains("cpu") && text.contains("nanoseconds"),
            "{service}: no cpu sample type in the profile"
        );

        let svg = http
            .get(at("?seconds=1&format=svg"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(svg.status(), 200, "{service}");
        assert_eq!(svg.headers()["content-type"], "image/svg+xml");
        let svg = svg.text().await.unwrap();
        assert!(svg.contains("<svg"), "{service}: not an SVG");
    }
}
