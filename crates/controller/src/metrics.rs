//! The controller's Prometheus metrics (`pgdr_` prefix): per-step duration
//! histograms, failovers by kind, detection time, probe results, lag.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub kind: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub cluster: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    pub cluster: String,
    pub path: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub cluster: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// Upper bounds of the probe jitter histogram: 1 ms to 5 s.
const JITTER_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

fn hist() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn jitter_hist() -> Histogram {
    Histogram::new(JITTER_BUCKETS)
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub step_seconds: Family<StepLabel, Histogram, fn() -> Histogram>,
    pub workflows: Family<KindLabel, Counter>,
    pub detection_seconds: Family<ClusterLabel, Histogram, fn() -> Histogram>,
    pub probes: Family<ProbeLabel, Counter>,
    pub lag_seconds: Family<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub rpo_breaches: Family<NodeLabel, Counter>,
    pub epoch: Family<ClusterLabel, Gauge>,
    /// How far the time between two probes of a cluster by the controller
    /// strays from `timing.probe_interval`, by cluster: the probe
    /// schedule's jitter (a loaded controller starts probes late; a cluster
    /// whose probes hang must not move the others').
    pub probe_jitter_seconds: Family<ClusterLabel, Histogram, fn() -> Histogram>,
    /// `pgdr_backup_*` (see [`crate::backups`]).
    pub backup: crate::backups::BackupMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            step_seconds: Family::new_with_constructor(hist),
            workflows: Family::default(),
            detection_seconds: Family::new_with_constructor(hist),
            probes: Family::default(),
            lag_seconds: Family::default(),
            rpo_breaches: Family::default(),
            epoch: Family::default(),
            probe_jitter_seconds: Family::new_with_constructor(jitter_hist),
            backup: Default::default(),
            registry: Registry::default(),
        };
        registry.register("pgdr_workflow_step_seconds", "Duration of workflow steps", m.step_seconds.clone());
        registry.register(
            "pgdr_workflows",
            "Workflows started, by kind (failover, switchover, ...)",
            m.workflows.clone(),
        );
        registry.register(
            "pgdr_detection_seconds",
            "First failed probe to declared outage",
            m.detection_seconds.clone(),
        );
        registry.register("pgdr_probes", "Canary probes by path and outcome", m.probes.clone());
        registry.register(
            "pgdr_replica_lag_seconds",
            "Replica lag from the replicated heartbeat",
            m.lag_seconds.clone(),
        );
        registry.register("pgdr_rpo_breaches", "Times a replica's lag passed the tier's RPO", m.rpo_breaches.clone());
        registry.register("pgdr_cluster_epoch", "The cluster's epoch", m.epoch.clone());
        registry.register(
            "pgdr_probe_jitter_seconds",
            "How far the time between two controller probes of a cluster strays from probe_interval",
            m.probe_jitter_seconds.clone(),
        );
        m.backup.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
