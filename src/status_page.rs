//! The status page: the status report as HTML for a browser tab during an incident, a phone, or a
//! wall screen. Server-rendered (maud), CSS inline, no script and no external asset; it reloads
//! itself every few seconds.
//!
//! Every string an image or a cloud provided (names, ids, error text) goes through maud's
//! escaping: a name like `<script>` shows as text. The report holds no secret, so neither does
//! the page.

use jiff::Timestamp;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::progress::InFlight;
use crate::state::RunRecord;
use crate::status::{JobStatus, Report};
use crate::terminal::human_size;

/// Seconds between the page's reloads.
const REFRESH_SECONDS: u32 = 5;

/// Runs shown per job on the main page (`/jobs/NAME` shows more).
const RUNS_ON_MAIN_PAGE: usize = 5;

const STYLE: &str = r#"
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --muted: #6e7781;
        --line: #d0d7de; --card: #f6f8fa; }
@media (prefers-color-scheme: dark) {
  :root { --ok: #3fb950; --warn: #d29922; --bad: #f85149; --muted: #8b949e; --line: #30363d;
          --card: #161b22; }
}
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1rem; max-width: 110rem; }
h1 { font-size: 1.4rem; margin: 0; } h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; }
h3 { font-size: 1.05rem; margin: 0 0 .3rem; }
header { display: flex; flex-wrap: wrap; gap: .3rem 1.2rem; align-items: baseline; }
.muted { color: var(--muted); font-size: .85rem; }
.summary { display: flex; flex-wrap: wrap; gap: .6rem; margin: .8rem 0; }
.pill { border: 1px solid var(--line); border-radius: 1rem; padding: .15rem .8rem; font-weight: 600; }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
.idle { color: var(--muted); }
.jobs { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 32rem), 1fr)); gap: 1rem; }
.job { background: var(--card); border: 1px solid var(--line); border-radius: .5rem; padding: .8rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; white-space: nowrap; } td.num { text-align: right; white-space: nowrap; }
td.error { word-break: break-word; max-width: 50rem; } td.t { white-space: nowrap; }
.name { overflow-wrap: anywhere; font-weight: 600; } code { font-size: .8rem; overflow-wrap: anywhere; }
progress { width: 100%; min-width: 6rem; height: 1rem; }
a { color: inherit; }
/* Wall screens: read from across the room. */
@media (min-width: 1800px) { body { font-size: 20px; max-width: none; padding: 1.5rem 3rem; } }
/* Phones: the wide tables become one block per row, each cell labelled. */
@media (max-width: 45rem) {
  table.stack thead { display: none; }
  table.stack, table.stack tbody, table.stack tr, table.stack td { display: block; width: 100%; }
  table.stack tr { border-bottom: 2px solid var(--line); padding: .3rem 0; }
  table.stack td { border: 0; padding: .15rem 0; text-align: left; white-space: normal; }
  table.stack td::before { content: attr(data-label) ": "; color: var(--muted); font-size: .85rem; }
}
"#;

fn page(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

/// `GET /`: every job, transfers in flight, failing images.
pub fn index(report: &Report, runs_of: impl Fn(&str) -> Vec<RunRecord>) -> String {
    let failing = report.failing.len();
    let running = report
        .jobs
        .iter()
        .filter(|j| j.running_since.is_some())
        .count();
    let body = html! {
        (header(report))
        div.summary {
            span.pill { (count(report.jobs.len(), "job", "jobs")) }
            span.pill.(if running > 0 { "warn" } else { "idle" }) { (running) " running" }
            span.pill { (count(report.in_flight.len(), "transfer", "transfers")) " in flight" }
            span.pill.(if failing > 0 { "bad" } else { "ok" }) id="failing-count" {
                (count(failing, "failing image", "failing images"))
            }
        }
        section #in-flight {
            h2 { "Transfers in flight" }
            (in_flight_table(&report.in_flight))
        }
        section #failing {
            h2 { "Failing images" }
            @if report.failing.is_empty() {
                p.ok { "No image is failing." }
            } @else {
                div.scroll { table.stack {
                    thead { tr {
                        th { "Job" } th { "Image" } th { "Target" } th { "Attempts" }
                        th { "Failing since" } th { "Last error" }
                    } }
                    tbody { @for f in &report.failing { tr.failing-image {
                        td data-label="Job" { a href=(job_href(&f.job)) { (f.job) } }
                        td data-label="Image" { span.name { (shown(f.name.as_deref().unwrap_or("(no name)"))) } br;
                             code { (f.source_id) } }
                        td data-label="Target" { (f.target) }
                        td.num data-label="Attempts" { (f.attempts) }
                        td.t data-label="Failing since" { (when(&f.failing_since)) }
                        td.error data-label="Last error" { (shown(f.last_error.as_deref().unwrap_or(""))) }
                    } } }
                } }
            }
        }
        section #jobs {
            h2 { "Jobs" }
            div.jobs { @for job in &report.jobs {
                (job_card(job, &runs_of(&job.name), RUNS_ON_MAIN_PAGE))
            } }
        }
        (other_findings(report))
        (footer())
    };
    page("glance-sync status", body)
}

/// `GET /jobs/NAME`: one job and its recent history.
pub fn job(report: &Report, job: &JobStatus, runs: &[RunRecord]) -> String {
    let in_flight: Vec<InFlight> = report
        .in_flight
        .iter()
        .filter(|t| t.job == job.name)
        .cloned()
        .collect();
    let body = html! {
        (header(report))
        p { a href="/" { "← all jobs" } }
        div.jobs { (job_card(job, &[], 0)) }
        section #in-flight {
            h2 { "Transfers in flight" }
            (in_flight_table(&in_flight))
        }
        section #history {
            h2 { "History" }
            p.muted { "The last " (crate::status::JOB_HISTORY) " runs, newest first; hover a \
                result for the run's error." }
            (runs_table(runs))
        }
        (footer())
    };
    page(&format!("glance-sync: {}", job.name), body)
}

/// `GET /jobs/NAME` for a job the config does not have.
pub fn unknown_job(name: &str) -> String {
    page(
        "glance-sync: no such job",
        html! {
            h1 { "No job named “" (name) "”" }
            p { "The running configuration has no such job. " a href="/" { "All jobs" } }
        },
    )
}

fn header(report: &Report) -> Markup {
    html! {
        header {
            h1 { a href="/" { "glance-sync" } }
            span.muted { "version " (env!("CARGO_PKG_VERSION")) }
            span.muted { "as of " (when(&report.generated_at)) " UTC, reloads every "
                (REFRESH_SECONDS) " s" }
        }
    }
}

fn footer() -> Markup {
    html! {
        p.muted {
            "Also: " a href="/api/v1/status" { "this page as JSON" } " · "
            a href="/metrics" { "Prometheus metrics" }
        }
    }
}

fn in_flight_table(transfers: &[InFlight]) -> Markup {
    html! {
        @if transfers.is_empty() {
            p.muted { "Nothing is being copied." }
        } @else {
            div.scroll { table.stack {
                thead { tr {
                    th { "Job" } th { "Image" } th { "To" } th { "Progress" } th { "Done" }
                    th { "Rate" } th { "Since" }
                } }
                tbody { @for t in transfers { tr.transfer {
                    td data-label="Job" { (t.job) }
                    td data-label="Image" { span.name { (shown(&t.image)) } br; code { (t.source_id) } }
                    td data-label="To" { (t.targets.join(", ")) }
                    @match t.method {
                        crate::transfer::CopyMethod::Stream => {
                            td data-label="Progress" {
                                progress max=(t.size.max(1)) value=(t.bytes_done.min(t.size)) {}
                            }
                            td.num data-label="Done" {
                                (human_size(t.bytes_done)) " of " (human_size(t.size))
                            }
                            td.num data-label="Rate" {
                                (format!("{:.1} MB/s", t.bytes_per_second / 1e6))
                            }
                        }
                        crate::transfer::CopyMethod::GlanceDownload => {
                            td data-label="Progress" { "pulled by the target's Glance" }
                            td.num data-label="Size" { (human_size(t.size)) }
                            td.num data-label="Rate" { "-" }
                        }
                    }
                    td.t data-label="Since" { (when(&t.started_at)) }
                } } }
            } }
        }
    }
}

fn job_card(job: &JobStatus, runs: &[RunRecord], show_runs: usize) -> Markup {
    html! {
        article.job id=(format!("job-{}", job.name)) {
            h3 { a href=(job_href(&job.name)) { (job.name) } }
            div.muted { (job.source) " → " (job.targets.iter().map(|t| t.target.as_str())
                .collect::<Vec<_>>().join(", ")) }
            div {
                (job.schedule.as_deref().unwrap_or("no schedule (run by `glance-sync run`)"))
                @if let Some(next) = &job.next_due { "; next run " (when(next)) }
            }
            @if let Some(since) = &job.running_since {
                div.warn { "running since " (when(since)) }
            }
            div.scroll { table {
                thead { tr { th { "Target" } th { "In sync" } th { "Failing" } th { "Skipped" }
                    th { "Pending" } } }
                tbody { @for t in &job.targets { tr {
                    td { (t.target) }
                    td.num.ok { (t.in_sync) }
                    td.num.(if t.failed > 0 { "bad" } else { "" }) { (t.failed) }
                    td.num { (t.skipped) }
                    td.num { (t.pending) }
                } } }
            } }
            @if show_runs > 0 {
                h3 { "Last runs" }
                (runs_table(&runs[..runs.len().min(show_runs)]))
            }
        }
    }
}

fn runs_table(runs: &[RunRecord]) -> Markup {
    html! {
        @if runs.is_empty() {
            p.muted { "No run yet." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Started" } th { "Took" } th { "Result" } th { "Copied" }
                    th { "Failed" } th { "Bytes" } } }
                tbody { @for r in runs { tr.run {
                    td.t { (when(&r.started_at)) }
                    td.num { (took(r)) }
                    td.(result_class(&r.result)) title=(shown(r.error.as_deref().unwrap_or(""))) {
                        (r.result)
                    }
                    td.num { (r.images_copied) }
                    td.num { (r.images_failed) }
                    td.num { (human_size(r.bytes_copied)) }
                } } }
            } }
        }
    }
}

fn other_findings(report: &Report) -> Markup {
    html! {
        @if !report.unadopted.is_empty() {
            section #unadopted {
                h2 { "Copies not in the state database" }
                p.muted { "Images on a target that carry glance-sync's marker but are not in its \
                    ledger (a lost or restored state database): `glance-sync adopt --job NAME`." }
                table { tbody { @for u in &report.unadopted { tr {
                    td { (u.job) } td { (u.target) } td.num { (u.images) } td { (when(&u.seen_at)) }
                } } } }
            }
        }
        @if !report.copies_with_new_ids.is_empty() {
            section #new-ids {
                h2 { "Copies under a new id" }
                p.muted { "preserve_ids is on, but these copies carry another id than their \
                    source image." }
                div.scroll { table { tbody { @for c in &report.copies_with_new_ids { tr {
                    td { (c.job) } td.name { (shown(c.name.as_deref().unwrap_or(""))) }
                    td { (c.target) } td { code { (c.source_id) } } td { code { (c.target_id) } }
                } } } } }
            }
        }
    }
}

/// Image-provided text as people should see it: control and bidi characters made visible
/// (`\u{202e}`), so a name cannot disguise itself; maud then escapes it for HTML.
fn shown(text: &str) -> String {
    crate::terminal::escape(text)
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn result_class(result: &str) -> &'static str {
    match result {
        "success" => "ok",
        "partial" | "running" => "warn",
        _ => "bad",
    }
}

/// A stored timestamp for people: to the second, without the zone (the page says UTC).
fn when(stamp: &str) -> String {
    match stamp.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => stamp.to_string(),
    }
}

fn took(run: &RunRecord) -> String {
    let (Ok(start), Some(Ok(end))) = (
        run.started_at.parse::<Timestamp>(),
        run.finished_at.as_deref().map(str::parse::<Timestamp>),
    ) else {
        return "-".into();
    };
    let secs = end.duration_since(start).as_secs().max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// The link to a job's page; its name percent-encoded as one path segment.
pub fn job_href(name: &str) -> String {
    let mut url = url::Url::parse("http://x/jobs/").expect("valid base");
    url.path_segments_mut()
        .expect("http URLs have a path")
        .pop_if_empty()
        .push(name);
    url.path().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::FailingImage;
    use crate::status::TargetCounts;

    fn report(name: &str, error: &str) -> Report {
        Report {
            generated_at: "2026-12-07T01:00:00Z".into(),
            jobs: vec![JobStatus {
                name: "job".into(),
                source: "prod".into(),
                schedule: Some("every 30m".into()),
                next_due: Some("2026-12-07T01:30:00Z".into()),
                running_since: None,
                targets: vec![TargetCounts {
                    target: "dr".into(),
                    in_sync: 3,
                    failed: 1,
                    ..Default::default()
                }],
            }],
            runs: vec![],
            failing: vec![FailingImage {
                job: "job".into(),
                source_cloud: "prod".into(),
                source_id: "11111111-1111-1111-1111-111111111111".into(),
                name: Some(name.into()),
                target: "dr".into(),
                attempts: 2,
                last_error: Some(error.into()),
                updated_at: "2026-12-07T00:59:00Z".into(),
                failing_since: "2026-12-06T00:00:00Z".into(),
            }],
            unadopted: vec![],
            copies_with_new_ids: vec![],
            in_flight: vec![],
        }
    }

    #[test]
    fn image_provided_text_is_escaped_never_markup() {
        let html = index(
            &report(
                "<script>alert(1)</script>",
                "upload failed: <img src=x onerror=alert(2)> & \"quoted\"",
            ),
            |_| vec![],
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("&lt;img src=x onerror=alert(2)&gt; &amp; &quot;quoted&quot;"));
    }

    #[test]
    fn control_and_bidi_characters_in_names_are_made_visible() {
        let html = index(&report("evil\u{202e}gpj.exe", "bell\u{7}"), |_| vec![]);
        assert!(
            !html.contains('\u{202e}') && !html.contains('\u{7}'),
            "{html}"
        );
        assert!(html.contains("evil\\u{202e}gpj.exe"), "{html}");
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        let html = index(&report("ubuntu", "boom"), |_| vec![]);
        for external in ["http://", "https://", "<script", "<link", "src="] {
            assert!(!html.contains(external), "{external} in {html}");
        }
        assert!(html.contains("name=\"viewport\""));
    }

    #[test]
    fn job_links_encode_the_name_as_one_path_segment() {
        assert_eq!(job_href("nightly"), "/jobs/nightly");
        assert_eq!(job_href("a/b c?d#e"), "/jobs/a%2Fb%20c%3Fd%23e");
    }
}
