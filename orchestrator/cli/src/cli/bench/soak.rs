//! `sagaflow bench --phase soak`: phase c's load for a long time on a server
//! whose retention is short, so that closed workflows (and, without a
//! broker, outbox records) are deleted as fast as they are made. The store
//! and the server's memory must then level off. The phase samples the
//! server's resident memory and data size and fails when either passes its
//! bound or still grows in the second half of the run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::restart::dir_size;
use super::{
    BenchArgs, BenchWorkflow, Cluster, DataDir, Interrupt, Phase, Plan, SagaClient, Shared, drive_shared, rss_mib,
    warm_up,
};

/// Phase c's shape: 64 clients, 5 ms per activity.
const CONCURRENCY: u32 = 64;
const ACTIVITY_LATENCY_MS: u64 = 5;
/// How many samples a run takes, whatever its length.
const SAMPLES: u32 = 60;
/// A level that moves by less than this is flat: the allocator and sled
/// grow in steps, and a step is not a trend.
const RSS_SLACK_MIB: f64 = 16.0;
const DISK_SLACK_MIB: f64 = 8.0;
/// How much the second half's peak may pass the first half's, on top of the slack.
const GROWTH_ALLOWED: f64 = 0.10;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    done: u64,
    rss_mib: f64,
    disk_mib: f64,
}

pub(super) async fn run(args: &BenchArgs, data: &mut DataDir, interrupt: &Interrupt) -> anyhow::Result<()> {
    let retention = humantime::format_duration(args.soak_retention).to_string();
    let check = humantime::format_duration((args.soak_retention / 4).max(Duration::from_secs(1))).to_string();
    let server_args: Vec<String> =
        ["--retention", &retention, "--retention-check-interval", &check, "--outbox-retention", &retention]
            .map(str::to_owned)
            .to_vec();
    let plan = Plan {
        // Stopped by the clock, not by a count.
        phase: Phase::standard("soak", u64::MAX / 2, CONCURRENCY, ACTIVITY_LATENCY_MS, false),
        workflow: BenchWorkflow::Bench,
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        store: None,
        python_worker: None,
    };
    let dir = data.phase_dir("soak")?;
    let cluster = interrupt.guard(Cluster::start(&plan, &dir, &server_args)).await?;
    let soaked = interrupt.guard(soak(&plan, &cluster, &dir.join("server"), args.duration)).await;
    let stopped = cluster.stop().await;
    let samples = soaked?;
    stopped?;
    print!("{}", report(&samples, args));
    judge(&samples, args)
}

async fn soak(plan: &Plan, cluster: &Cluster, server_dir: &Path, duration: Duration) -> anyhow::Result<Vec<Sample>> {
    let client = SagaClient::connect(&cluster.url).await?;
    warm_up(&client, plan, 0).await?;
    let shared = Arc::new(Shared::default());
    let load = tokio::spawn({
        let (plan, client, shared) = (plan.clone(), client.clone(), Arc::clone(&shared));
        async move { drive_shared(&plan, &client, shared).await }
    });
    let started = Instant::now();
    let every = duration / SAMPLES;
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    while started.elapsed() < duration {
        ticks.tick().await;
        let sample = Sample {
            at: started.elapsed(),
            done: shared.done.load(Ordering::Relaxed),
            rss_mib: rss_mib(cluster.server.pid).context("cannot read the server's memory")?,
            disk_mib: dir_size(server_dir) as f64 / (1024.0 * 1024.0),
        };
        eprintln!(
            "  phase soak: {:>5.0} s, {} sagas, RSS {:.1} MiB, data {:.1} MiB, {} errors",
            sample.at.as_secs_f64(),
            sample.done,
            sample.rss_mib,
            sample.disk_mib,
            shared.errors.load(Ordering::Relaxed)
        );
        samples.push(sample);
    }
    // Every client finishes the saga it holds, then takes no other.
    shared.next.store(plan.phase.n, Ordering::Relaxed);
    let tally = load.await.context("the load panicked")??;
    if tally.errors > 0 {
        bail!("{} sagas failed during the soak: {}", tally.errors, tally.error_samples.join("; "));
    }
    Ok(samples)
}

/// The peak of each half of the samples after the first quarter (the
/// warm-up, while the first retention has not yet passed).
fn halves(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> Option<(f64, f64)> {
    let settled = &samples[samples.len() / 4..];
    if settled.len() < 2 {
        return None;
    }
    let (first, second) = settled.split_at(settled.len() / 2);
    let peak = |part: &[Sample]| part.iter().map(&value).fold(f64::MIN, f64::max);
    Some((peak(first), peak(second)))
}

fn report(samples: &[Sample], args: &BenchArgs) -> String {
    let last = samples.last().copied().unwrap_or(Sample { at: Duration::ZERO, done: 0, rss_mib: 0.0, disk_mib: 0.0 });
    let rate = last.done as f64 / last.at.as_secs_f64().max(f64::EPSILON);
    let (rss1, rss2) = halves(samples, |s| s.rss_mib).unwrap_or_default();
    let (disk1, disk2) = halves(samples, |s| s.disk_mib).unwrap_or_default();
    format!(
        "\nphase soak: {} of phase c's load, retention {}\n  sagas         {} ({rate:.0} sagas/s)\n  RSS peak      {rss1:.1} MiB then {rss2:.1} MiB (first and second half, after the first quarter)\n  data peak     {disk1:.1} MiB then {disk2:.1} MiB\nRESULT system=sagaflow phase=soak seconds={:.0} sagas={} rate={rate:.0} rss_mib_first={rss1:.1} rss_mib_second={rss2:.1} disk_mib_first={disk1:.1} disk_mib_second={disk2:.1}\n",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.soak_retention),
        last.done,
        last.at.as_secs_f64(),
        last.done,
    )
}

/// Fails when a bound is passed, or when a level still grows.
fn judge(samples: &[Sample], args: &BenchArgs) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let rss_peak = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let disk_peak = samples.iter().map(|s| s.disk_mib).fold(0.0, f64::max);
    if rss_peak > args.max_rss_mib as f64 {
        failures.push(format!("the server's RSS reached {rss_peak:.1} MiB (bound {} MiB)", args.max_rss_mib));
    }
    if disk_peak > args.max_disk_mib as f64 {
        failures.push(format!("the data folder reached {disk_peak:.1} MiB (bound {} MiB)", args.max_disk_mib));
    }
    let checks = [
        ("RSS", halves(samples, |s| s.rss_mib), RSS_SLACK_MIB),
        ("data", halves(samples, |s| s.disk_mib), DISK_SLACK_MIB),
    ];
    for (what, halves, slack) in checks {
        let Some((first, second)) = halves else {
            failures.push("too few samples to judge a plateau".to_owned());
            break;
        };
        let allowed = first * (1.0 + GROWTH_ALLOWED) + slack;
        if second > allowed {
            failures.push(format!(
                "the {what} still grows: its peak went from {first:.1} MiB to {second:.1} MiB (allowed {allowed:.1} MiB)"
            ));
        }
    }
    if failures.is_empty() {
        println!("soak: memory and data levelled off");
        Ok(())
    } else {
        bail!("soak: {}", failures.join("; "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            bench: BenchArgs,
        }
        Wrapper::parse_from(["bench", "--phase", "soak", "--max-rss-mib", "500", "--max-disk-mib", "500"]).bench
    }

    fn samples(level: impl Fn(u32) -> f64) -> Vec<Sample> {
        (0..SAMPLES)
            .map(|i| Sample {
                at: Duration::from_secs(u64::from(i)),
                done: u64::from(i) * 100,
                rss_mib: level(i),
                disk_mib: level(i),
            })
            .collect()
    }

    #[test]
    fn a_level_that_plateaus_passes_and_one_that_keeps_growing_fails() {
        // A warm-up climb, then noise around a level.
        let flat = samples(|i| if i < 10 { 10.0 * f64::from(i) } else { 100.0 + f64::from(i % 3) });
        judge(&flat, &args()).unwrap();
        // A steady climb of 2 MiB a sample: 100 MiB over the settled part.
        let growing = samples(|i| 50.0 + 2.0 * f64::from(i));
        let refused = judge(&growing, &args()).unwrap_err().to_string();
        assert!(refused.contains("RSS still grows") && refused.contains("data still grows"), "{refused}");
    }

    #[test]
    fn a_bound_passed_fails_even_when_flat() {
        let high = samples(|_| 600.0);
        let refused = judge(&high, &args()).unwrap_err().to_string();
        assert!(refused.contains("bound 500 MiB"), "{refused}");
    }
}
