//! `tracely replay`: reads a range of METRICS through the chosen rules in backfill mode. A dry
//! run prints the incidents that would open and resolve; otherwise they are written with
//! `source = backfill` and the ids the live pipeline would give them, so re-running changes
//! nothing. A progress bar shows the rate and the time left; a summary closes it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::{ProgressBar, ProgressStyle};
use replay::backfill::{self, Request, Stage, Summary};
use replay::scan::Ended;
use replay::WouldBe;
use schemas::Span;

use crate::config::ReplayArgs;
use crate::shutdown;
use crate::startup::connect_nats;

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let nats = connect_nats(&args.nats_url).await?;
    let js = jetstream::new(nats.clone());
    let pool =
        store::connect_lazy(&args.database.database_url, 2).context("invalid DATABASE_URL")?;
    let request = Request {
        from: args.from,
        to: args.to,
        rule_ids: args.rules,
        service_ids: args.services,
        notify: args.notify,
    };
    let lateness =
        Span(i64::try_from(args.allowed_lateness_secs.saturating_mul(1000)).unwrap_or(i64::MAX));
    let prepared = backfill::prepare(&js, &pool, &request, lateness).await?;
    for warning in &prepared.1.warnings {
        eprintln!("warning: {warning}");
    }
    let rules: Vec<String> = prepared.0.rules.iter().map(|r| r.name.clone()).collect();
    eprintln!(
        "{} {} rule(s) ({}) over {}..{}",
        if args.dry_run {
            "dry run of"
        } else {
            "backfilling"
        },
        rules.len(),
        rules.join(", "),
        request.from,
        request.to,
    );
    let cancel = shutdown::on_signal();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let last_line = std::cell::Cell::new(started);
    let summary = backfill::execute(
        &js,
        &pool,
        (&prepared.0, &prepared.1),
        &request,
        args.dry_run,
        &cancel,
        |stage| {
            report(&bar, started, stage);
            // Without a terminal the bar is hidden: log a line every few seconds instead.
            if bar.is_hidden() && last_line.get().elapsed() >= Duration::from_secs(5) {
                last_line.set(Instant::now());
                eprintln!("{:.0}% {}", bar.position() as f64 / 100.0, bar.message());
            }
        },
    )
    .await;
    bar.finish_and_clear();
    let summary = summary?;
    let elapsed = started.elapsed().as_secs_f64();
    if args.dry_run {
        print_table(&summary.incidents);
    }
    print_summary(&summary, args.dry_run, elapsed);
    pool.close().await;
    nats.flush().await.ok();
    Ok(if summary.ended == Ended::Cancelled {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn report(bar: &ProgressBar, started: Instant, stage: Stage<'_>) {
    match stage {
        Stage::Planned(plan) => bar.set_message(if plan.empty {
            "nothing to read".to_owned()
        } else {
            format!("reading METRICS up to sequence {}", plan.end_seq)
        }),
        Stage::Reading(p) => {
            bar.set_length(10_000);
            bar.set_position((p.fraction() * 10_000.0) as u64);
            let rate = p.samples as f64 / started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!(
                "seq {}/{}: {} samples ({:.0}/s), {} would open, {} resolve",
                p.position, p.end_seq, p.samples, rate, p.opened, p.resolved
            ));
        }
        Stage::Recording(r) => bar.set_message(format!(
            "written through INCIDENTS sequence {} of {}",
            r.recorded_through, r.published_through
        )),
    }
}

fn print_table(incidents: &[WouldBe]) {
    if incidents.is_empty() {
        println!("no incidents would open");
        return;
    }
    println!(
        "{:<36}  {:<24}  {:<10}  {:<20}  {:<20}  {:>12}  {:>10}",
        "INCIDENT", "SERIES", "SEVERITY", "OPENED", "RESOLVED", "PEAK", "VIOLATIONS"
    );
    for w in incidents {
        let i = &w.latest;
        println!(
            "{:<36}  {:<24}  {:<10}  {:<20}  {:<20}  {:>12}  {:>10}",
            i.id,
            i.series_key,
            i.severity.as_str(),
            i.opened_at.format("%Y-%m-%dT%H:%M:%SZ"),
            i.resolved_at.map_or_else(
                || "still open".to_owned(),
                |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            ),
            i.peak_value,
            i.violation_count,
        );
    }
}

fn print_summary(summary: &Summary, dry_run: bool, seconds: f64) {
    let p = &summary.progress;
    let resolved = summary
        .incidents
        .iter()
        .filter(|w| w.latest.resolved_at.is_some())
        .count();
    println!(
        "read {} samples in {seconds:.1} s ({:.0}/s); {} skipped outside the range, {} not \
         valid samples, {} later than the allowed lateness",
        p.samples,
        p.samples as f64 / seconds.max(0.001),
        p.skipped,
        p.rejected,
        p.late,
    );
    match summary.ended {
        Ended::Cancelled => println!("stopped before the end; nothing was written"),
        Ended::Stopped => println!("stopped early; nothing was written"),
        Ended::Complete => {}
    }
    let found = summary.incidents.len();
    if dry_run {
        println!("{found} incidents would open ({resolved} resolving in the range); dry run, nothing written");
        return;
    }
    if let Some(a) = &summary.applied {
        println!(
            "{found} incidents ({resolved} resolved): {} written, {} already stored unchanged, \
             {} skipped as already covered by another incident of the same series, {} still \
             firing left to the live evaluator",
            a.written, a.unchanged, a.overlapping, a.left_to_live
        );
    }
}
