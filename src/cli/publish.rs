//! `tracely publish --file F`: validates every line of a CSV or NDJSON file, publishes the
//! valid samples to METRICS with a progress bar, and ends with a summary naming the line of
//! every rejected sample. Exits non-zero when any line was rejected.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use indicatif::{ProgressBar, ProgressStyle};
use schemas::raw::RawValue;
use schemas::{DecodeError, Encoding, MetricSample};

use crate::config::{FileFormat, PublishArgs};
use crate::startup::connect_nats;

const CSV_COLUMNS: &[&str] = &["service_id", "metric_type", "value", "recorded_at", "id"];
const REQUIRED_COLUMNS: &[&str] = &["service_id", "metric_type", "value", "recorded_at"];
/// How many rejected lines the summary lists one by one.
const LISTED_REJECTIONS: usize = 50;

/// A line that could not become a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Totals {
    stored: usize,
    duplicates: usize,
    rejected: Vec<Rejected>,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let format = match args.format {
        Some(f) => f,
        None => guess_format(&args.file)?,
    };
    let (reader, size): (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(io::stdin()), None)
    } else {
        let file =
            File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let nats = connect_nats(&args.nats_url).await?;
    let js = jetstream::new(nats.clone());
    let progress = progress_bar(size);
    let mut totals = Totals::default();
    let mut batch = Vec::with_capacity(args.batch_size);
    let mut lines = read_samples(reader, format)?;
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some(item) = next {
            let (parsed, position) = item?;
            progress.set_position(position);
            match parsed {
                Ok(sample) => batch.push(sample),
                Err(rejected) => totals.rejected.push(rejected),
            }
        }
        if batch.len() >= args.batch_size || (done && !batch.is_empty()) {
            let published = api::publish::publish_samples(&js, &batch)
                .await
                .with_context(|| {
                    format!(
                        "publishing stopped after {} samples; publishing the file again \
                         within 2 minutes (the duplicate window) stores each sample once",
                        totals.stored + totals.duplicates
                    )
                })?;
            totals.stored += published.stored;
            totals.duplicates += published.duplicates;
            progress.set_message(format!("{} published", totals.stored + totals.duplicates));
            batch.clear();
        }
        if done {
            break;
        }
    }
    progress.finish_and_clear();
    let _ = nats.flush().await;
    print_summary(&totals);
    Ok(if totals.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn guess_format(path: &Path) -> anyhow::Result<FileFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Ok(FileFormat::Csv),
        Some("ndjson" | "jsonl" | "json") => Ok(FileFormat::Ndjson),
        _ => bail!(
            "cannot tell the format of {} from its extension; pass --format csv or --format ndjson",
            path.display()
        ),
    }
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    let bar = match size {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg} ({bytes_per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} read, {msg}").expect("valid template"),
        ),
    };
    bar.set_message("0 published");
    bar
}

type Parsed = (Result<MetricSample, Rejected>, u64);

/// Every sample of the input with its byte position, or an error that stops the whole run
/// (unreadable input, a CSV header without the required columns).
pub fn read_samples(
    reader: Box<dyn Read>,
    format: FileFormat,
) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Parsed>>>> {
    match format {
        FileFormat::Csv => read_csv(reader),
        FileFormat::Ndjson => Ok(read_ndjson(reader)),
    }
}

fn read_ndjson(reader: Box<dyn Read>) -> Box<dyn Iterator<Item = anyhow::Result<Parsed>>> {
    let mut reader = BufReader::new(reader);
    let mut line_no = 0u64;
    let mut position = 0u64;
    let mut buf = String::new();
    Box::new(std::iter::from_fn(move || loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                line_no += 1;
                position += n as u64;
                let text = buf.trim();
                if text.is_empty() {
                    continue;
                }
                let parsed = MetricSample::decode(text.as_bytes(), Encoding::Json)
                    .map_err(|e| rejected(line_no, &e));
                return Some(Ok((parsed, position)));
            }
            Err(e) => {
                return Some(Err(
                    anyhow::Error::new(e).context(format!("reading line {}", line_no + 1))
                ))
            }
        }
    }))
}

fn read_csv(
    reader: Box<dyn Read>,
) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Parsed>>>> {
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(reader);
    let header: Vec<String> = csv
        .headers()
        .context("reading the CSV header")?
        .iter()
        .map(str::to_owned)
        .collect();
    if let Some(unknown) = header.iter().find(|h| !CSV_COLUMNS.contains(&h.as_str())) {
        bail!(
            "CSV header has unknown column {unknown:?}; expected {}",
            CSV_COLUMNS.join(",")
        );
    }
    if let Some(missing) = REQUIRED_COLUMNS
        .iter()
        .find(|c| !header.iter().any(|h| h == *c))
    {
        bail!(
            "CSV header lacks column {missing:?}; expected {}",
            CSV_COLUMNS.join(",")
        );
    }
    let mut records = csv.into_records();
    Ok(Box::new(std::iter::from_fn(move || {
        let record = records.next()?;
        let position = records.reader().position().byte();
        Some(match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                Ok((csv_sample(&header, &record, line), position))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                Ok((
                    Err(Rejected {
                        line,
                        reason: format!("malformed CSV: {e}"),
                    }),
                    position,
                ))
            }
        })
    })))
}

fn csv_sample(
    header: &[String],
    record: &csv::StringRecord,
    line: u64,
) -> Result<MetricSample, Rejected> {
    if record.len() != header.len() {
        return Err(Rejected {
            line,
            reason: format!("expected {} columns, found {}", header.len(), record.len()),
        });
    }
    let mut fields = BTreeMap::new();
    for (name, text) in header.iter().zip(record.iter()) {
        let value = match name.as_str() {
            _ if text.is_empty() => RawValue::Nil,
            "value" => text
                .parse::<f64>()
                .map_or_else(|_| RawValue::Str(text.to_owned()), RawValue::Float),
            "recorded_at" if text.bytes().all(|b| b.is_ascii_digit()) => text
                .parse::<i64>()
                .map_or_else(|_| RawValue::Str(text.to_owned()), RawValue::Int),
            _ => RawValue::Str(text.to_owned()),
        };
        fields.insert(name.clone(), value);
    }
    MetricSample::from_raw(RawValue::Map(fields)).map_err(|e| rejected(line, &e))
}

fn rejected(line: u64, e: &DecodeError) -> Rejected {
    Rejected {
        line,
        reason: e.to_string(),
    }
}

fn print_summary(totals: &Totals) {
    println!(
        "published {} samples: {} stored, {} duplicates; {} rejected",
        totals.stored + totals.duplicates,
        totals.stored,
        totals.duplicates,
        totals.rejected.len()
    );
    for r in totals.rejected.iter().take(LISTED_REJECTIONS) {
        println!("  line {}: {}", r.line, r.reason);
    }
    if totals.rejected.len() > LISTED_REJECTIONS {
        println!("  … and {} more", totals.rejected.len() - LISTED_REJECTIONS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: FileFormat, text: &'static str) -> Vec<Result<MetricSample, Rejected>> {
        read_samples(Box::new(text.as_bytes()), format)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect()
    }

    #[test]
    fn csv_rows_become_samples_and_bad_rows_name_their_line() {
        let rows = parse(
            FileFormat::Csv,
            "service_id,metric_type,value,recorded_at,id\n\
             S1,LATENCY_MS,180,2026-03-12T09:00:00Z,a\n\
             S1,PACKET_LOSS,2.1,1773306000000,\n\
             S2,BUFFER_RATIO,NaN,2026-03-12T09:05:00Z,\n\
             S3,ERROR_RATE,abc,2026-03-12T09:10:00Z,\n",
        );
        assert_eq!(rows[0].as_ref().unwrap().id.as_deref(), Some("a"));
        assert_eq!(rows[1].as_ref().unwrap().value, 2.1);
        assert_eq!(
            rows[1].as_ref().unwrap().recorded_at,
            rows[0].as_ref().unwrap().recorded_at
        );
        let nan = rows[2].as_ref().unwrap_err();
        assert_eq!(nan.line, 4);
        assert!(nan.reason.contains("value"), "{}", nan.reason);
        assert_eq!(rows[3].as_ref().unwrap_err().line, 5);
    }

    #[test]
    fn csv_header_must_name_known_columns() {
        let err = read_samples(
            Box::new(&b"service,metric_type,value,recorded_at\n"[..]),
            FileFormat::Csv,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("service"), "{err}");
    }

    #[test]
    fn ndjson_skips_blank_lines_and_counts_them() {
        let rows = parse(
            FileFormat::Ndjson,
            "{\"service_id\":\"S1\",\"metric_type\":\"X\",\"value\":1,\"recorded_at\":0}\n\n{\"bad\":1}\n",
        );
        assert!(rows[0].is_ok());
        assert_eq!(rows[1].as_ref().unwrap_err().line, 3);
    }
}
