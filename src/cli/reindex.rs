//! `tracely reindex`: rebuilds the Meilisearch index of incidents from Postgres, with a progress
//! bar and a summary. Safe while the pipeline runs: documents are the incidents' current rows,
//! and after each page the same incidents are read again and those that changed meanwhile are
//! written again, so the rebuild never leaves an older state over one the index consumer wrote.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use store::search::document;
use store::search::meili::Meili;

use crate::config::ReindexArgs;

pub async fn run(args: ReindexArgs) -> anyhow::Result<ExitCode> {
    let Some(config) = args.meili.config() else {
        bail!(
            "MEILI_URL is not set (or --meili-url): without Meilisearch, search is served by \
             Postgres, which keeps its own index and needs no rebuild"
        );
    };
    let meili = Meili::from_config(&config)?;
    let pool =
        store::connect_lazy(&args.database.database_url, 2).context("invalid DATABASE_URL")?;
    meili
        .health()
        .await
        .with_context(|| format!("reaching Meilisearch at {}", config.url))?;
    meili
        .apply_settings()
        .await
        .context("applying the index settings")?;
    if args.clear {
        meili.clear().await.context("emptying the index")?;
    }
    let started = Instant::now();
    let total = document::count(&pool).await.context("counting incidents")?;
    let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0)).with_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} incidents ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut after = None;
    let mut indexed = 0u64;
    let mut rewritten = 0usize;
    loop {
        let page = document::page_after(&pool, after, args.batch_size)
            .await
            .context("reading incidents")?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        meili
            .upsert(&page)
            .await
            .context("adding documents to the index")?;
        rewritten += meili
            .rewrite_changed(&pool, &page)
            .await
            .context("checking the documents against Postgres")?;
        indexed += page.len() as u64;
        bar.set_position(indexed);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let held = meili.count().await.context("counting the index")?;
    println!(
        "reindexed {indexed} incidents into {} at {} in {seconds:.1} s ({:.0}/s); \
         {rewritten} changed during the rebuild and were written again; the index holds {held} \
         documents",
        meili.index_uid(),
        config.url,
        indexed as f64 / seconds.max(0.001),
    );
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
