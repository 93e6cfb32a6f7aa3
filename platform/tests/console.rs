//! The operator's console (`/console` on the coordinator) in a real browser: headless Chromium
//! against the one-command platform. An operator signs in with the admin token, finds a failed
//! transaction and reads its attempts in the chart, finds a transaction stuck on a Cancel that
//! keeps erroring, clears the fault, clicks "Retry now", and watches it end. The test asserts
//! on what the pages say (statuses, the chart's bars, the decision, the trace link), and saves
//! a screenshot of the transaction view (`target/console/transaction.png`). Then the fault
//! switches: a refused Try armed at payment from the page bites the next order and is gone.
//!
//! Needs Chromium and chromedriver (Debian: `chromium`, `chromium-driver`; CI installs them).

mod common;

use common::{repo, Running};
use reqwest::StatusCode;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testkit::browser::Browser;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until `css` matches an element whose text is `text` (the page auto-refreshes).
/// An element read while a click's navigation is under way can go stale: that counts as not
/// yet, until the page settles or `wait` runs out.
async fn wait_for_text(b: &Browser, css: &str, text: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(e) = b
            .find_all(css)
            .await
            .ok()
            .and_then(|f| f.into_iter().next())
        {
            if b.text(&e).await.is_ok_and(|t| t.trim() == text) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never read {text:?}: {}",
            b.source().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_finds_a_stuck_cancel_reads_its_attempts_and_retries_it_in_a_browser() {
    let Some(b) = Browser::start(1400, 1000)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let p = Running::start(env!("CARGO_BIN_EXE_platform"));
    let admin = p.admin_token();
    let http = reqwest::Client::new();

    // A failed order (carol has no money), and one whose Cancel at payment keeps erroring.
    let failed = p.order("carol", "broke-1", "coffee").await;
    assert_eq!(failed["reason"], "insufficient_funds", "{failed}");
    // Its Cancels follow the answer: let them land before the fault below could take them.
    p.wait_for_transaction(failed["gid"].as_str().unwrap(), "failed")
        .await;
    let armed = http
        .put(p.url(8081, "/admin/faults/cancel"))
        .bearer_auth(&admin)
        .json(&json!({"kind": "error", "times": 10000}))
        .send()
        .await
        .unwrap();
    assert!(armed.status().is_success(), "{armed:?}");
    let stuck = p.order("carol", "broke-2", "coffee").await;
    assert_eq!(stuck["status"], "cancelled", "{stuck}");
    let stuck_gid = stuck["gid"].as_str().unwrap().to_owned();
    let ok = p.order("alice", "fine-1", "coffee").await;
    assert_eq!(ok["status"], "confirmed", "{ok}");

    // Without a session: the sign-in page, and no write.
    let anonymous = http.get(p.console("")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.text().await.unwrap().contains("Sign in"));
    let retry = http
        .post(p.console(&format!("/transactions/{stuck_gid}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::UNAUTHORIZED);
    let wrong = http
        .post(p.console("/login"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("not the coordinator"));
    let cross_site = http
        .post(p.console("/login"))
        .header("Origin", "http://evil.example")
        .form(&[("token", admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);

    // Sign in.
    b.goto(&p.console("")).await.unwrap();
    let field = b.find("input#token", WAIT).await.unwrap();
    b.type_into(&field, &admin).await.unwrap();
    let submit = b.find("form button[type=submit]", WAIT).await.unwrap();
    b.click(&submit).await.unwrap();

    // The list: counts, live numbers, and the failed transaction through its status chip.
    let chip = b.find("a.chip[data-status=failed]", WAIT).await.unwrap();
    assert!(
        b.text(&chip).await.unwrap().contains("failed 1"),
        "one failed so far"
    );
    b.find("#live #tps", WAIT).await.unwrap();
    let latency = b
        .text(&b.find("#live table.latency", WAIT).await.unwrap())
        .await
        .unwrap();
    for participant in ["order", "payment", "inventory"] {
        assert!(latency.contains(participant), "{latency}");
    }
    b.click(&chip).await.unwrap();
    let row = b.find("tr[data-status=failed] a", WAIT).await.unwrap();
    b.click(&row).await.unwrap();
    b.find("svg.gantt", WAIT).await.unwrap();
    wait_for_text(&b, "#status", "failed", WAIT).await;
    let decision = b
        .text(&b.find("#reason", WAIT).await.unwrap())
        .await
        .unwrap();
    assert!(
        decision.contains("rejected") && decision.contains("insufficient_funds"),
        "{decision}"
    );
    assert_eq!(
        b.find_all("g.bar[data-branch=payment][data-op=try][data-outcome=failure]")
            .await
            .unwrap()
            .len(),
        1,
        "payment's Try refused once"
    );
    assert!(
        !b.find_all("g.bar[data-op=cancel][data-outcome=success]")
            .await
            .unwrap()
            .is_empty(),
        "the Cancels in the chart"
    );
    let payload = b
        .text(
            &b.find("tr[data-branch=payment] dl.payload", WAIT)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        payload.contains("carol") && payload.contains("450 cents"),
        "{payload}"
    );

    // The stuck one: Cancels erroring at payment, found by its status.
    b.goto(&p.console("?status=cancelling")).await.unwrap();
    let row = b
        .find(&format!("tr[data-gid='{stuck_gid}'] a"), WAIT)
        .await
        .unwrap();
    b.click(&row).await.unwrap();
    wait_for_text(&b, "#status", "cancelling", WAIT).await;
    let errors = b
        .find_all("g.bar[data-branch=payment][data-op=cancel][data-outcome=error]")
        .await
        .unwrap();
    assert!(!errors.is_empty(), "{}", b.source().await.unwrap());
    let trace = b.find("a#trace", WAIT).await.unwrap();
    let href = b.attribute(&trace, "href").await.unwrap().unwrap();
    assert!(
        href.starts_with(&p.url(16686, "/trace/"))
            && href.len() == p.url(16686, "/trace/").len() + 32,
        "a link to the transaction's trace: {href}"
    );
    // Nothing on the page comes from elsewhere (the trace link is a link, not a load).
    let foreign = b
        .execute(
            "return performance.getEntriesByType('resource')
                 .map(e => e.name).filter(u => !u.startsWith(location.origin + '/'));",
        )
        .await
        .unwrap();
    assert_eq!(foreign, json!([]), "resources from elsewhere");

    // Clear the fault, retry from the console, watch it end.
    let cleared = http
        .delete(p.url(8081, "/admin/faults"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success(), "{cleared:?}");
    b.click(&b.find("button#retry", WAIT).await.unwrap())
        .await
        .unwrap();
    b.find("p.flash", WAIT).await.unwrap();
    wait_for_text(&b, "#status", "failed", Duration::from_secs(40)).await;
    let recovered = b
        .find_all("g.bar[data-branch=payment][data-op=cancel][data-outcome=success]")
        .await
        .unwrap();
    assert_eq!(recovered.len(), 1, "one Cancel got through");

    // The screenshot for the README: the whole page.
    let height = b
        .execute("return document.documentElement.scrollHeight;")
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(1000) as u32;
    b.resize(1400, height.clamp(600, 4000)).await.unwrap();
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("transaction.png"), &png).unwrap();
    eprintln!("screenshot: {}", dir.join("transaction.png").display());
    b.goto(&p.console("")).await.unwrap();
    b.find("tr[data-status=failed]", WAIT).await.unwrap();
    b.resize(1400, 1000).await.unwrap();
    std::fs::write(dir.join("transactions.png"), b.screenshot().await.unwrap()).unwrap();

    // The fault switches: arm a refused Try at payment from the console, see it bite, clear it.
    b.goto(&p.console("/faults")).await.unwrap();
    let card = "section[data-participant=payment]";
    b.find(&format!("{card} p.empty"), WAIT).await.unwrap();
    for (css, _) in [
        (format!("{card} select[name=op] option[value=try]"), ()),
        (format!("{card} select[name=kind] option[value=fail]"), ()),
    ] {
        b.click(&b.find(&css, WAIT).await.unwrap()).await.unwrap();
    }
    let code = b
        .find(&format!("{card} input[name=code]"), WAIT)
        .await
        .unwrap();
    b.type_into(&code, "lab_says_no").await.unwrap();
    b.click(
        &b.find(&format!("{card} form.arm button"), WAIT)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    b.find("p.flash", WAIT).await.unwrap();
    let armed = b
        .text(
            &b.find(&format!("{card} tr[data-op=try][data-kind=fail]"), WAIT)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(armed.contains("lab_says_no"), "{armed}");
    let refused = p.order("alice", "fault-1", "coffee").await;
    assert_eq!(refused["reason"], "lab_says_no", "{refused}");
    b.goto(&p.console("/faults")).await.unwrap();
    let taken = b.text(&b.find(card, WAIT).await.unwrap()).await.unwrap();
    assert!(
        taken.contains("Nothing armed") && taken.contains("try fail × 1"),
        "{taken}"
    );
    // A bad form is the participant's refusal on the page, nothing armed.
    b.click(
        &b.find(
            &format!("{card} select[name=kind] option[value=delay]"),
            WAIT,
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    b.click(
        &b.find(&format!("{card} form.arm button"), WAIT)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let why = b
        .text(&b.find("p.error", WAIT).await.unwrap())
        .await
        .unwrap();
    assert!(why.contains("a delay needs ms"), "{why}");
    b.find(&format!("{card} p.empty"), WAIT).await.unwrap();
    // The coordinator's failpoints: armed and disarmed from the page (not hit).
    b.click(
        &b.find("tr[data-failpoint=after_decision] button", WAIT)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let armed = "tr[data-failpoint=after_decision] td:nth-child(2)";
    wait_for_text(&b, armed, "after 0 hit(s)", WAIT).await;
    b.click(
        &b.find("tr[data-failpoint=after_decision] button", WAIT)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    b.find("p.flash", WAIT).await.unwrap();
    wait_for_text(&b, armed, "no", WAIT).await;
    b.quit().await;
}
