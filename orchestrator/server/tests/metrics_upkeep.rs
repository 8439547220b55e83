//! The recorder holds every histogram sample until it is drained, and a
//! server nobody scrapes must not grow by a sample per observation: the
//! upkeep thread drains them. Without it, the samples recorded here would
//! add more than 120 MiB to this process.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

const ROUNDS: u32 = 8;
const SAMPLES_PER_ROUND: u32 = 2_000_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// Returns once an upkeep has run after this call.
fn await_an_upkeep() {
    let seen = sagaflow_server::http::upkeeps();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sagaflow_server::http::upkeeps() <= seen {
        assert!(Instant::now() < deadline, "no metrics upkeep ran within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn record_a_round(histogram: &metrics::Histogram) {
    (0..SAMPLES_PER_ROUND).for_each(|i| histogram.record(f64::from(i % 1000) / 1e4));
}

#[test]
fn histogram_samples_are_drained_without_a_scrape() {
    assert!(sagaflow_server::http::prometheus().is_some(), "the recorder is installed");
    let histogram = metrics::histogram!("sagaflow_test_upkeep_seconds");
    // One round first, so that the buffers the recorder reuses are in the baseline.
    record_a_round(&histogram);
    await_an_upkeep();
    let before = rss_mib();
    for _ in 0..ROUNDS {
        record_a_round(&histogram);
        await_an_upkeep();
    }
    let grown = rss_mib() - before;
    // 16 million samples of 8 bytes are 122 MiB if they were kept.
    assert!(grown < 40.0, "RSS grew by {grown:.1} MiB over {} samples", ROUNDS * SAMPLES_PER_ROUND);
}
