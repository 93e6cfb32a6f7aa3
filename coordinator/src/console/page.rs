//! The console's pages as HTML (`maud`): plain data in, markup out, no I/O. Everything a page
//! shows comes from one read of the log made by the handler, so what a page says about a
//! transaction is one consistent snapshot (the state first, then its attempts).

use super::clock::{self, format_ms};
use super::gantt;
use crate::http::ListQuery;
use crate::log::{self, Summary};
use crate::machine::Status;
use maud::{html, Markup, DOCTYPE};
use proto::v1 as pb;

/// The frame of every page.
pub fn layout(title: &str, signed_in: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · TCC console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/console" { "TCC console" }
                    @if signed_in {
                        nav {
                            a href="/console" { "Transactions" }
                            a href="/console/faults" { "Faults" }
                            form.inline method="post" action="/console/logout" {
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in form; `error` when the last token was wrong.
pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        false,
        html! {
            section.login {
                h1 { "Sign in" }
                p { "The console reads and retries the coordinator's transactions: it needs the coordinator's admin token (in the one-command platform, " code { "data/admin-token" } ")." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/console/login" {
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// An error as a page (a bad filter, an unknown transaction).
pub fn error(title: &str, message: &str) -> Markup {
    layout(
        title,
        true,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/console" { "Back to the transactions" } }
        },
    )
}

/// The live numbers, with participant addresses already turned into names.
pub struct Live {
    pub recent: log::Recent,
    pub names: Vec<String>,
}

/// The transactions page.
pub struct List<'a> {
    pub query: &'a ListQuery,
    pub rows: &'a [Summary],
    pub counts: &'a [(String, i64)],
    pub live: Live,
    pub next_before: Option<ids::Gid>,
    /// The time range's inputs as they were sent (UTC), to show them again.
    pub from_text: &'a str,
    pub to_text: &'a str,
}

fn status_options() -> impl Iterator<Item = &'static str> {
    Status::ALL.iter().map(|s| s.as_str())
}

/// `?k=v&…` of the pairs whose value is not empty (`""` when none is).
fn query_string(pairs: &[(&str, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(k, v);
    }
    match query.finish() {
        q if q.is_empty() => q,
        q => format!("?{q}"),
    }
}

pub fn list(v: &List<'_>) -> Markup {
    let q = v.query;
    let given = |o: &Option<String>| o.clone().unwrap_or_default();
    let filters = [
        ("status", given(&q.status)),
        ("mode", given(&q.mode)),
        ("from", v.from_text.to_owned()),
        ("to", v.to_text.to_owned()),
        ("q", given(&q.q)),
        (
            "limit",
            if q.limit == 50 {
                String::new()
            } else {
                q.limit.to_string()
            },
        ),
    ];
    let total: i64 = v.counts.iter().map(|(_, n)| n).sum();
    let older = v.next_before.map(|next| {
        let mut pairs = filters.to_vec();
        pairs.push(("before", next.to_string()));
        format!("/console{}", query_string(&pairs))
    });
    layout(
        "Transactions",
        true,
        html! {
            div.titlebar {
                h1 { "Transactions" }
                label.auto { input #auto type="checkbox" checked; " auto-refresh" }
            }
            (live(&v.live))
            nav #counts.counts data-refresh aria-label="counts per status" {
                a.chip.(if given(&q.status).is_empty() { "on" } else { "" }) href="/console" { "all " span.n { (total) } }
                @for s in status_options() {
                    @let n = v.counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
                    a class=(format!("chip {s} {}", if given(&q.status) == s { "on" } else { "" }))
                        href=(format!("/console?status={s}")) data-status=(s) {
                        (s) " " span.n { (n) }
                    }
                }
            }
            form.filters method="get" action="/console" {
                label { "Status "
                    select name="status" {
                        option value="" { "any" }
                        @for s in status_options() {
                            option value=(s) selected[given(&q.status) == s] { (s) }
                        }
                    }
                }
                label { "Mode "
                    select name="mode" {
                        option value="" { "any" }
                        @for m in ["tcc", "saga"] {
                            option value=(m) selected[given(&q.mode) == m] { (m) }
                        }
                    }
                }
                label { "From (UTC) " input type="datetime-local" step="1" name="from" value=(v.from_text); }
                label { "To (UTC) " input type="datetime-local" step="1" name="to" value=(v.to_text); }
                label.grow { "Search "
                    input type="search" name="q" value=(given(&q.q))
                        placeholder="gid, idempotency key, order or refund id";
                }
                button type="submit" { "Filter" }
            }
            section #rows data-refresh {
                @if v.rows.is_empty() {
                    p.empty { "No transaction matches." }
                } @else {
                    table.txns {
                        thead { tr {
                            th { "gid" } th { "mode" } th { "status" } th { "created (UTC)" }
                            th { "took" } th { "rounds" } th { "reason" }
                        } }
                        tbody {
                            @for t in v.rows {
                                tr data-gid=(t.gid) data-status=(t.status) {
                                    td { a href=(format!("/console/transactions/{}", t.gid)) { code { (t.gid) } } }
                                    td { (t.mode) }
                                    td { span class=(format!("badge {}", t.status)) { (t.status) } }
                                    td { (format_ms(t.created_at)) }
                                    td { (clock::span(t.updated_at - t.created_at)) }
                                    td { (t.attempts) }
                                    td.reason { (t.reason.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
                nav.pages {
                    @if q.before.as_deref().is_some_and(|b| !b.is_empty()) {
                        a href=(format!("/console{}", query_string(&filters))) { "← Newest" }
                    }
                    @if let Some(href) = &older {
                        a href=(href) { "Older →" }
                    }
                }
            }
        },
    )
}

fn live(l: &Live) -> Markup {
    let r = &l.recent;
    let secs = (r.window_ms as f64 / 1000.0).max(1.0);
    html! {
        section #live.live data-refresh aria-label="live numbers" {
            div.stat { span.v #tps { (format!("{:.1}", r.started as f64 / secs)) } span.k { "transactions/s started" } }
            div.stat { span.v { (format!("{:.1}", r.ended as f64 / secs)) } span.k { "of those ended, /s" } }
            div.stat { span.v #lag { (clock::span(r.recovery_lag_ms)) } span.k { "recovery lag" } }
            table.latency {
                thead { tr { th { "participant" } th { "calls" } th { "p50" } th { "p99" } } }
                tbody {
                    @for (lat, name) in r.latency.iter().zip(&l.names) {
                        tr { td { (name) } td { (lat.calls) }
                             td { (format!("{:.1} ms", lat.p50_us as f64 / 1000.0)) }
                             td { (format!("{:.1} ms", lat.p99_us as f64 / 1000.0)) } }
                    }
                    @if r.latency.is_empty() { tr { td colspan="4" { "no calls in the window" } } }
                }
            }
            p.note { "Over the last " (clock::span(r.window_ms)) ", from the log (every coordinator instance's writes)." }
        }
    }
}

/// One branch as the page shows it.
pub struct BranchView {
    pub state: pb::BranchState,
    /// The participant's configured name, when it has one.
    pub name: Option<String>,
    pub payload: super::payload::Fields,
}

/// The transaction page.
pub struct Detail {
    pub stored: log::Stored,
    pub branches: Vec<BranchView>,
    pub timeline: Vec<log::Attempt>,
    pub total_attempts: i64,
    pub trace_id: Option<String>,
    pub trace_link: Option<String>,
    /// The caps of the next waits (full jitter draws each wait up to its cap).
    pub next_caps_ms: Vec<i64>,
    pub now_ms: i64,
    pub flash: Option<&'static str>,
}

pub fn detail(d: &Detail) -> Markup {
    let s = &d.stored;
    let status = s.txn.status;
    let unfinished = !status.is_terminal();
    let rows: Vec<gantt::Row<'_>> = d
        .branches
        .iter()
        .enumerate()
        .map(|(idx, b)| gantt::Row {
            label: &b.state.branch_id,
            bars: d
                .timeline
                .iter()
                .filter(|a| a.idx == idx as i64)
                .map(|a| gantt::Bar {
                    op: a.op.as_str(),
                    started_at: a.started_at,
                    duration_ms: a.duration_us / 1000,
                    outcome: a.outcome.as_str(),
                    error: a.error.as_deref(),
                })
                .collect(),
        })
        .collect();
    let title = format!("Transaction {}", s.gid);
    layout(
        &title,
        true,
        html! {
            div.titlebar {
                h1 { "Transaction " code #gid { (s.gid) } }
                label.auto { input #auto type="checkbox" checked[unfinished]; " auto-refresh" }
            }
            @if let Some(f) = d.flash { p.flash role="status" { (f) } }
            div #detail data-refresh {
                dl.facts {
                    dt { "status" } dd { span #status class=(format!("badge {}", status.as_str())) { (status.as_str()) } }
                    dt { "mode" } dd { (log::mode_str(s.txn.mode)) }
                    @if let Some(r) = &s.txn.reason {
                        dt { "decision" } dd #reason { (decision(r, &d.branches)) }
                    } @else if matches!(status, Status::Confirming | Status::Succeeded) {
                        dt { "decision" } dd #reason { "commit: every first phase succeeded" }
                    }
                    dt { "idempotency key" } dd { code { (s.idempotency_key.as_deref().unwrap_or("—")) } }
                    dt { "created (UTC)" } dd { (format_ms(s.created_at)) }
                    dt { "last change" } dd { (format_ms(s.updated_at)) " (+" (clock::span(s.updated_at - s.created_at)) ")" }
                    dt { "deadline" } dd { (format_ms(s.deadline_at)) }
                    dt { "trace" } dd {
                        @match (&d.trace_id, &d.trace_link) {
                            (Some(id), Some(link)) => a #trace href=(link.replace("{trace_id}", id)) target="_blank" rel="noopener" { code { (id) } },
                            (Some(id), None) => code #trace { (id) },
                            (None, _) => "none recorded",
                        }
                    }
                }
                @if unfinished {
                    section.schedule {
                        h2 { "Retry schedule" }
                        p {
                            (s.attempts) " driving round(s) so far. "
                            @if s.next_attempt_at <= d.now_ms {
                                "Due now: the next recovery round (or a retry) drives it."
                            } @else {
                                "Next round at " (format_ms(s.next_attempt_at)) " (in " (clock::span(s.next_attempt_at - d.now_ms)) ")."
                            }
                            @if !d.next_caps_ms.is_empty() {
                                " Should it leave work again, the following waits are drawn up to "
                                (d.next_caps_ms.iter().map(|c| clock::span(*c)).collect::<Vec<_>>().join(", "))
                                "."
                            }
                        }
                        form method="post" action=(format!("/console/transactions/{}/retry", s.gid)) {
                            button #retry type="submit" { "Retry now" }
                        }
                    }
                }
                section {
                    h2 { "Attempts" }
                    p.note {
                        "Every call of every branch on one time axis from the transaction's start; "
                        "hover a bar for its details. "
                        @if (d.timeline.len() as i64) < d.total_attempts {
                            "Showing the newest " (d.timeline.len()) " of " (d.total_attempts) "."
                        }
                    }
                    div.chart { (gantt::chart(s.created_at, &rows)) }
                    div.legend {
                        @for o in log::Outcome::ALL { span class=(format!("key o-{}", o.as_str())) { (o.as_str()) } }
                    }
                }
                section {
                    h2 { "Branches" }
                    table.branches {
                        thead { tr { th { "branch" } th { "participant" } th { "now" } th { "status" } th { "calls" } th { "payload" } th { "last error" } } }
                        tbody {
                            @for b in &d.branches {
                                @let st = &b.state;
                                tr data-branch=(st.branch_id) {
                                    td { code { (st.branch_id) }
                                        @if st.retriable { " " span.tag title="retried until it succeeds, never compensated" { "retriable" } }
                                        @if !st.depends_on.is_empty() { br; small { "after " (st.depends_on.join(", ")) } }
                                    }
                                    td { (b.name.as_deref().unwrap_or("")) br; small { (st.participant) } }
                                    td { (crate::machine::Op::from_wire(st.op).map_or("", |o| o.as_str())) }
                                    td { (st.status) }
                                    td { (st.attempts) }
                                    td { dl.payload { @for (k, v) in &b.payload { dt { (k) } dd { (v) } } } }
                                    td.err { (st.last_error) }
                                }
                            }
                        }
                    }
                }
                section {
                    h2 { "Calls" }
                    table.calls {
                        thead { tr { th { "started" } th { "branch" } th { "op" } th { "took" } th { "outcome" } th { "error" } th { "by" } } }
                        tbody {
                            @for a in &d.timeline {
                                tr data-op=(a.op.as_str()) data-outcome=(a.outcome.as_str()) {
                                    td { "+" (clock::span(a.started_at - s.created_at)) }
                                    td { (d.branches.get(a.idx as usize).map_or("?", |b| b.state.branch_id.as_str())) }
                                    td { (a.op.as_str()) }
                                    td { (format!("{:.1} ms", a.duration_us as f64 / 1000.0)) }
                                    td { span class=(format!("badge {}", a.outcome.as_str())) { (a.outcome.as_str()) } }
                                    td.err { (a.error.as_deref().unwrap_or("")) }
                                    td { small { (a.owner) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The typed rollback reason, the branch named by its id.
fn decision(r: &crate::machine::Rollback, branches: &[BranchView]) -> String {
    use crate::machine::Rollback;
    let id = |i: &usize| {
        branches
            .get(*i)
            .map_or_else(|| format!("branch {i}"), |b| b.state.branch_id.clone())
    };
    match r {
        Rollback::Rejected {
            branch,
            code,
            message,
        } => format!(
            "roll back: {} rejected its first phase with {code}: {message}",
            id(branch)
        ),
        Rollback::Errored { branch, error } => format!(
            "roll back: {} did not answer its first phase: {error}",
            id(branch)
        ),
        Rollback::Deadline => {
            "roll back: the global deadline passed before every branch was prepared".into()
        }
        Rollback::Described { text } => format!("roll back: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded_and_empty_ones_left_out() {
        assert_eq!(
            query_string(&[
                ("q", "order:1 2&x".into()),
                ("status", String::new()),
                ("mode", "tcc".into())
            ]),
            "?q=order%3A1+2%26x&mode=tcc"
        );
        assert_eq!(query_string(&[("q", String::new())]), "");
    }
}
