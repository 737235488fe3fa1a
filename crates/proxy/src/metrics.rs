//! Prometheus metrics of the proxy (`pgdr_proxy_` prefix): connections per
//! endpoint, queue depth and wait time, bytes, transactions, errors by kind,
//! pause durations, session moves, clients held while the primary was
//! unreachable. Per-cluster handles are fetched once so
//! the hot path only does atomic adds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub cluster: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub cluster: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub cluster: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub cluster: String,
    pub endpoint: String,
    pub user: String,
    pub database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinLabel {
    pub cluster: String,
    pub reason: String,
}

fn hist() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All metric families, registered once per proxy.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub connections: Family<EndpointLabel, Gauge>,
    pub connections_opened: Family<EndpointLabel, Counter>,
    pub queue_depth: Family<ClusterLabel, Gauge>,
    pub paused: Family<ClusterLabel, Gauge>,
    pub active_transactions: Family<ClusterLabel, Gauge>,
    pub queue_wait: Family<ClusterLabel, Histogram, fn() -> Histogram>,
    pub pause_duration: Family<ClusterLabel, Histogram, fn() -> Histogram>,
    pub bytes: Family<DirectionLabel, Counter>,
    pub transactions: Family<ClusterLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub moves: Family<ClusterLabel, Counter>,
    pub held_on_unreachable: Family<ClusterLabel, Counter>,
    pub pool_waiting: Family<PoolLabel, Gauge>,
    pub pool_in_use: Family<PoolLabel, Gauge>,
    pub pool_idle: Family<PoolLabel, Gauge>,
    pub pool_size: Family<PoolLabel, Gauge>,
    pub pool_wait: Family<ClusterLabel, Histogram, fn() -> Histogram>,
    pub pool_opened: Family<ClusterLabel, Counter>,
    pub pool_closed: Family<ClusterLabel, Counter>,
    pub pins: Family<PinLabel, Counter>,
    pub pinned: Family<PinLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            connections: Family::default(),
            connections_opened: Family::default(),
            queue_depth: Family::default(),
            paused: Family::default(),
            active_transactions: Family::default(),
            queue_wait: Family::new_with_constructor(hist),
            pause_duration: Family::new_with_constructor(hist),
            bytes: Family::default(),
            transactions: Family::default(),
            errors: Family::default(),
            moves: Family::default(),
            held_on_unreachable: Family::default(),
            pool_waiting: Family::default(),
            pool_in_use: Family::default(),
            pool_idle: Family::default(),
            pool_size: Family::default(),
            pool_wait: Family::new_with_constructor(hist),
            pool_opened: Family::default(),
            pool_closed: Family::default(),
            pins: Family::default(),
            pinned: Family::default(),
            registry: Registry::default(),
        };
        registry.register("pgdr_proxy_connections", "Client connections open, per endpoint", m.connections.clone());
        registry.register("pgdr_proxy_connections_opened", "Client connections accepted", m.connections_opened.clone());
        registry.register("pgdr_proxy_queue_depth", "Clients waiting in the pause queue", m.queue_depth.clone());
        registry.register("pgdr_proxy_paused", "1 while the cluster's writer endpoint is paused", m.paused.clone());
        registry.register(
            "pgdr_proxy_active_transactions",
            "Writer transactions running now",
            m.active_transactions.clone(),
        );
        registry.register(
            "pgdr_proxy_queue_wait_seconds",
            "Time clients waited in the pause queue",
            m.queue_wait.clone(),
        );
        registry.register("pgdr_proxy_pause_seconds", "How long pauses lasted", m.pause_duration.clone());
        registry.register("pgdr_proxy_bytes", "Bytes relayed, by direction", m.bytes.clone());
        registry.register("pgdr_proxy_transactions", "Writer transactions completed", m.transactions.clone());
        registry.register("pgdr_proxy_errors", "Errors by kind", m.errors.clone());
        registry.register("pgdr_proxy_session_moves", "Sessions moved to a new backend", m.moves.clone());
        registry.register(
            "pgdr_proxy_held_on_unreachable",
            "Writer connects held (not failed) because the primary was unreachable",
            m.held_on_unreachable.clone(),
        );
        registry.register(
            "pgdr_proxy_pool_waiting",
            "Clients waiting for a pooled backend now",
            m.pool_waiting.clone(),
        );
        registry.register("pgdr_proxy_pool_in_use", "Pooled backends held by clients now", m.pool_in_use.clone());
        registry.register("pgdr_proxy_pool_idle", "Pooled backends idle now", m.pool_idle.clone());
        registry.register("pgdr_proxy_pool_size", "Backends a pool may open", m.pool_size.clone());
        registry.register(
            "pgdr_proxy_pool_wait_seconds",
            "Time clients waited for a pooled backend",
            m.pool_wait.clone(),
        );
        registry.register(
            "pgdr_proxy_pool_backends_opened",
            "Backend connections a pool opened (churn toward PostgreSQL)",
            m.pool_opened.clone(),
        );
        registry.register(
            "pgdr_proxy_pool_backends_closed",
            "Pooled backend connections closed (lost, left dirty, idle too long, on an old server)",
            m.pool_closed.clone(),
        );
        registry.register("pgdr_proxy_pins", "Sessions pinned to their backend, by reason", m.pins.clone());
        registry.register("pgdr_proxy_pinned", "Sessions pinned to their backend now, by reason", m.pinned.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let c = ClusterLabel { cluster: cluster.to_owned() };
        let dir = |d: &str| DirectionLabel { cluster: cluster.to_owned(), direction: d.to_owned() };
        // One statement per `get_or_create`: its read guard lives until the
        // end of the statement, and a second call on the same family in the
        // same statement deadlocks when it has to insert.
        let bytes_in = self.bytes.get_or_create(&dir("client_to_server")).clone();
        let bytes_out = self.bytes.get_or_create(&dir("server_to_client")).clone();
        ClusterMetrics {
            name: cluster.to_owned(),
            bytes_in,
            bytes_out,
            transactions: self.transactions.get_or_create(&c).clone(),
            moves: self.moves.get_or_create(&c).clone(),
            held_on_unreachable: self.held_on_unreachable.get_or_create(&c).clone(),
            queue_wait: self.queue_wait.get_or_create(&c).clone(),
            pause_duration: self.pause_duration.get_or_create(&c).clone(),
            pool_wait: self.pool_wait.get_or_create(&c).clone(),
            pool_opened: self.pool_opened.get_or_create(&c).clone(),
            pool_closed: self.pool_closed.get_or_create(&c).clone(),
            pins: self.pins.clone(),
            pinned: self.pinned.clone(),
            errors: self.errors.clone(),
            connections: self.connections.clone(),
            connections_opened: self.connections_opened.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// One cluster's metric handles.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    name: String,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub transactions: Counter,
    pub moves: Counter,
    pub held_on_unreachable: Counter,
    pub queue_wait: Histogram,
    pub pause_duration: Histogram,
    pub pool_wait: Histogram,
    pub pool_opened: Counter,
    pub pool_closed: Counter,
    pins: Family<PinLabel, Counter>,
    pinned: Family<PinLabel, Gauge>,
    errors: Family<ErrorLabel, Counter>,
    connections: Family<EndpointLabel, Gauge>,
    connections_opened: Family<EndpointLabel, Counter>,
}

impl ClusterMetrics {
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&ErrorLabel { cluster: self.name.clone(), kind: kind.to_owned() }).inc();
    }

    /// Sessions pinned for `reason` (counter).
    pub fn pin(&self, reason: &str) -> Counter {
        self.pins.get_or_create(&PinLabel { cluster: self.name.clone(), reason: reason.to_owned() }).clone()
    }

    /// Sessions pinned for `reason` now (gauge).
    pub fn pinned(&self, reason: &str) -> Gauge {
        self.pinned.get_or_create(&PinLabel { cluster: self.name.clone(), reason: reason.to_owned() }).clone()
    }

    pub fn connection(&self, endpoint: &str) -> Gauge {
        let l = EndpointLabel { cluster: self.name.clone(), endpoint: endpoint.to_owned() };
        self.connections_opened.get_or_create(&l).inc();
        self.connections.get_or_create(&l).clone()
    }
}
