//! The workload's record as a time series of 100 ms buckets: commits, errors,
//! reads and commit latency. The report's timeline is drawn from these.

use serde::{Deserialize, Serialize};

use crate::workload::WorkloadRecord;

/// Width of one bucket.
pub const BUCKET_MS: f64 = 100.0;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, ms since the workload started.
    pub t_ms: f64,
    /// Commits acknowledged in the bucket.
    pub commits: u32,
    /// Client-visible write errors in the bucket.
    pub errors: u32,
    pub reads: u32,
    pub read_errors: u32,
    /// Mean and highest commit latency of the commits acknowledged here.
    pub latency_ms_mean: Option<f64>,
    pub latency_ms_max: Option<f64>,
}

/// Buckets covering the whole record.
pub fn buckets(record: &WorkloadRecord) -> Vec<Bucket> {
    let n = ((record.duration_ms / BUCKET_MS).ceil() as usize).max(1);
    let mut out: Vec<Bucket> = (0..n).map(|i| Bucket { t_ms: i as f64 * BUCKET_MS, ..Default::default() }).collect();
    let idx = |ms: f64| ((ms.max(0.0) / BUCKET_MS) as usize).min(n - 1);
    let mut lat_sum = vec![0.0f64; n];
    for a in &record.acks {
        let b = &mut out[idx(a.at_ms)];
        b.commits += 1;
        let lat = a.at_ms - a.sent_ms;
        lat_sum[idx(a.at_ms)] += lat;
        b.latency_ms_max = Some(b.latency_ms_max.map_or(lat, |m: f64| m.max(lat)));
    }
    for f in &record.failures {
        let b = &mut out[idx(f.at_ms)];
        if f.read { b.read_errors += 1 } else { b.errors += 1 }
    }
    for r in &record.reads {
        out[idx(r.at_ms)].reads += 1;
    }
    for (b, sum) in out.iter_mut().zip(lat_sum) {
        if b.commits > 0 {
            b.latency_ms_mean = Some(sum / f64::from(b.commits));
        }
    }
    out
}
