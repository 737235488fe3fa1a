//! [`EtcdStore`]: the state store on an etcd cluster (v3 API), for
//! controllers in several regions. Built only with the `etcd` feature (the
//! `etcd-client` crate's build runs `protoc`).
//!
//! The trait is etcd-shaped, so the mapping is direct:
//!
//! | trait | etcd |
//! | --- | --- |
//! | [`Revision`] | the cluster's revision; a value's is its `mod_revision` |
//! | [`Txn`] checks | `Compare`s: [`Expect::Absent`] is `version == 0`, [`Expect::Revision`] is `version > 0 && mod_revision == r` |
//! | a failed [`Txn`] | the failure branch reads every checked key in the same transaction, so the conflict reports what the key held when the check failed |
//! | leases | etcd leases (TTL rounded up to whole seconds; etcd may raise a very short TTL to its own minimum) |
//! | [`Watch`] | an etcd watch from the revision after the one read when it was created; a compaction, a cancel or a broken stream ends it with [`StoreError::WatchLagged`] |
//!
//! **Prefix.** Every key the callers use (`/pgdr/...`) is stored under
//! [`EtcdOptions::prefix`], so several pgdr deployments can share one etcd;
//! callers never see the prefix.
//!
//! **Time limits.** Every request is bounded by [`EtcdOptions::timeout`]; a
//! request that does not finish in time (etcd without a quorum, a frozen
//! member) fails with [`StoreError::Unavailable`], which callers treat as
//! "retry later", never as an answer. Requests require a leader, so a member
//! cut off from the others answers at once instead of hanging. A *write*
//! that failed this way has an unknown outcome: etcd may still commit it
//! once it has a quorum again, so callers re-read before deciding (a
//! compare-and-set retried at the old revision then conflicts and shows
//! what was written).
//!
//! **Secrets.** The etcd password is held only in [`EtcdPassword`], whose
//! `Debug` prints nothing of it; no error message includes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{
    Expect, KeyValue, LeaseId, Op, Revision, StateStore, StoreError, Txn, TxnOutcome, Versioned, Watch, WatchEvent,
};

/// How many changes a watch buffers before its reader counts as lagging
/// (as the embedded store).
const WATCH_BUFFER: usize = 4096;

/// The etcd password: kept out of `Debug`, logs and error messages.
#[derive(Clone)]
pub struct EtcdPassword(String);

impl EtcdPassword {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }
}

impl std::fmt::Debug for EtcdPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdPassword(<redacted>)")
    }
}

/// TLS toward etcd: the CA that signed the members' certificates, and a
/// client certificate when the members require one (`--client-cert-auth`).
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM of the CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// PEM of the client certificate and its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("client_certificate", &self.identity.is_some()).finish_non_exhaustive()
    }
}

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` (`host:port` is taken as
    /// `https` with [`EtcdOptions::tls`], else `http`).
    pub endpoints: Vec<String>,
    /// Prepended to every key: empty, or starting with `/` and not ending
    /// with one (e.g. `/prod-eu`).
    pub prefix: String,
    /// User name and password, when etcd has authentication enabled.
    pub user: Option<(String, EtcdPassword)>,
    pub tls: Option<EtcdTls>,
    /// The longest any one request may take.
    pub timeout: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self { endpoints, prefix: String::new(), user: None, tls: None, timeout: Duration::from_secs(2) }
    }
}

/// The state store on etcd. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// One client per endpoint (a client balanced over every endpoint
    /// where it could not be made), so a request can go to the member that answered last and,
    /// when that one is silent, to the next.
    members: Vec<Client>,
    /// Index in `members` of the member that answered last.
    preferred: std::sync::atomic::AtomicUsize,
    prefix: String,
    endpoints: Vec<String>,
    timeout: Duration,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the watch pumps; their readers see the store closed.
        self.cancel.cancel();
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Maps an etcd client error to the store's classification. Never includes
/// the request (values may be secrets) or the credentials.
fn classify(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let msg = format!("etcd: {}", s.message());
            // etcd answers a wrong password with InvalidArgument.
            if s.message().contains("authentication failed") || s.message().contains("permission denied") {
                return StoreError::Denied(msg);
            }
            match s.code() {
                Code::Unauthenticated | Code::PermissionDenied => StoreError::Denied(msg),
                Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StoreError::Invalid(msg),
                _ => StoreError::Unavailable(msg),
            }
        }
        E::TransportError(t) => StoreError::Unavailable(format!("etcd unreachable: {t}")),
        E::IoError(t) => StoreError::Unavailable(format!("etcd unreachable: {t}")),
        E::InvalidArgs(m) | E::EndpointError(m) => StoreError::Invalid(format!("etcd: {m}")),
        E::InvalidUri(u) => StoreError::Invalid(format!("etcd endpoint: {u}")),
        other => StoreError::Unavailable(format!("etcd: {other}")),
    }
}

/// Whether etcd said the lease does not exist (expired or revoked).
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound && s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty key".into()));
    }
    Ok(())
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    let h = header.ok_or_else(|| StoreError::Internal("etcd answered without a header".into()))?;
    Ok(u64::try_from(h.revision()).unwrap_or(0))
}

fn lease_id(lease: LeaseId) -> i64 {
    i64::try_from(lease.0).unwrap_or(i64::MAX)
}

fn versioned(kv: &etcd_client::KeyValue) -> Versioned {
    Versioned {
        value: kv.value().to_vec(),
        revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
        lease: (kv.lease() != 0).then(|| LeaseId(kv.lease() as u64)),
    }
}

fn expect_holds(expect: Expect, cur: Option<&Versioned>) -> bool {
    match (expect, cur) {
        (Expect::Any, _) => true,
        (Expect::Absent, cur) => cur.is_none(),
        (Expect::Revision(rev), Some(v)) => v.revision == rev,
        (Expect::Revision(_), None) => false,
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers (within the timeout).
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoints".into()));
        }
        if !(options.prefix.is_empty() || (options.prefix.starts_with('/') && !options.prefix.ends_with('/'))) {
            return Err(StoreError::Invalid(format!(
                "etcd prefix {:?}: expected empty or starting with / and not ending with /",
                options.prefix
            )));
        }
        let timeout = options.timeout.max(Duration::from_millis(100));
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(timeout)
            // HTTP/2 pings find a dead connection; etcd answers pings more
            // often than every 5 s, or pings with no request open, with
            // GOAWAY (too many pings), so neither is done.
            .with_keep_alive(Duration::from_secs(10), timeout.max(Duration::from_secs(3)))
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if let Some((name, password)) = &options.user {
            connect = connect.with_user(name.clone(), password.0.clone()).with_auto_token_refresh(true);
        }
        let endpoints: Vec<String> = match &options.tls {
            Some(tls) => {
                let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    t = t.identity(Identity::from_pem(cert, key));
                }
                connect = connect.with_tls(t);
                options
                    .endpoints
                    .iter()
                    .map(|e| if e.contains("://") { e.clone() } else { format!("https://{e}") })
                    .collect()
            }
            None => options.endpoints.clone(),
        };
        let client = match tokio::time::timeout(timeout * 2, Client::connect(&endpoints, Some(connect.clone()))).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(classify(e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {} did not answer within {timeout:?}",
                    options.endpoints.join(",")
                )));
            }
        };
        // Connecting is lazy (a member down now is reached once it is back),
        // but with a user it logs in at once: a member that cannot be asked
        // now is reached through the balanced client instead.
        let mut members = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            let one = tokio::time::timeout(timeout, Client::connect([e.as_str()], Some(connect.clone()))).await;
            members.push(match one {
                Ok(Ok(c)) => c,
                _ => client.clone(),
            });
        }
        let store = Self {
            inner: Arc::new(Inner {
                members,
                preferred: std::sync::atomic::AtomicUsize::new(0),
                prefix: options.prefix,
                endpoints: options.endpoints,
                timeout,
                tracker: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        };
        store.revision().await?;
        Ok(store)
    }

    /// The endpoints this store was given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The prefix under which every key is stored.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    fn strip(&self, key: &[u8]) -> Result<String, StoreError> {
        let k = std::str::from_utf8(key).map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into(),
            message: "not UTF-8".into(),
        })?;
        Ok(k.strip_prefix(self.inner.prefix.as_str()).unwrap_or(k).to_owned())
    }

    /// The `k`-th member to try from the one that answered last: its index
    /// and client.
    fn member(&self, k: usize) -> (usize, Client) {
        let n = self.inner.members.len();
        let i = (self.inner.preferred.load(Ordering::Relaxed) + k) % n;
        (i, self.inner.members[i].clone())
    }

    /// Member `i` answered: ask it first from now on.
    fn answered(&self, i: usize) {
        self.inner.preferred.store(i, Ordering::Relaxed);
    }

    /// Runs one request within the time limit, on the member that answered
    /// last. A request that was never sent (no connection to that member:
    /// it is down; or it has no leader, which it says before doing
    /// anything) is tried again on the next member while time is left.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<Result<T, etcd_client::Error>, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let mut k = 0;
        loop {
            let (i, client) = self.member(k);
            let r = tokio::time::timeout_at(deadline, f(client)).await.map_err(|_| {
                StoreError::Unavailable(format!("etcd did not answer {what} within {:?}", self.inner.timeout))
            })?;
            match r {
                Err(e) if not_sent(&e) && tokio::time::Instant::now() + CONNECT_RETRY < deadline => {
                    k += 1;
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                r => {
                    if r.is_ok() {
                        self.answered(i);
                    }
                    return Ok(r);
                }
            }
        }
    }
}

impl EtcdStore {
    /// [`EtcdStore::call`] for a request that may run twice (a read, a
    /// lease keep-alive or lookup): when no answer came within
    /// [`EtcdStore::hedge`], the same request is sent to the next member
    /// while the first still waits, and the first answer wins; the member
    /// that gave it is asked first from then on (writes too). A member that
    /// holds its connections and answers nothing (frozen, or its region
    /// dark) then costs one hedge, not the whole timeout of every request
    /// sent to it: before, a primary's lease renewals (reads and keep-alives
    /// through the controller) failed for seconds when one member of three
    /// froze, and the primary fenced itself.
    async fn call_idempotent<T, F, Fut>(
        &self,
        what: &str,
        mut f: F,
    ) -> Result<Result<T, etcd_client::Error>, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let hedge = self.hedge();
        let mut attempts = tokio::task::JoinSet::new();
        let mut next = tokio::time::Instant::now();
        let mut last_connect_error = None;
        let mut k = 0;
        loop {
            let now = tokio::time::Instant::now();
            if now >= next && attempts.len() < HEDGED_IN_FLIGHT {
                let (i, client) = self.member(k);
                k += 1;
                let attempt = f(client);
                attempts.spawn(async move { (i, tokio::time::timeout_at(deadline, attempt).await) });
                next = now + hedge;
            }
            // The next copy's time, unless as many wait as may.
            let wake = if attempts.len() < HEDGED_IN_FLIGHT { next.min(deadline) } else { deadline };
            tokio::select! {
                done = attempts.join_next(), if !attempts.is_empty() => match done {
                    Some(Ok((_, Ok(Err(e))))) if not_sent(&e) => {
                        // Never sent: try the next member soon.
                        next = next.min(tokio::time::Instant::now() + CONNECT_RETRY);
                        last_connect_error = Some(e);
                    }
                    Some(Ok((i, Ok(r)))) => {
                        if r.is_ok() {
                            self.answered(i);
                        }
                        return Ok(r);
                    }
                    // Timed out at the deadline, or the task failed: the
                    // others are at the same deadline.
                    Some(Ok((_, Err(_)))) | Some(Err(_)) | None => {}
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return match last_connect_error {
                    Some(e) if attempts.is_empty() => Ok(Err(e)),
                    _ => Err(StoreError::Unavailable(format!(
                        "etcd did not answer {what} within {:?}",
                        self.inner.timeout
                    ))),
                };
            }
        }
    }

    /// How long an idempotent request waits for its answer before it is
    /// sent again: a tenth of the timeout, between 50 and 250 ms (a
    /// healthy member answers in a round trip).
    fn hedge(&self) -> Duration {
        (self.inner.timeout / 10).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }
}

/// The most copies of one idempotent request waiting at once.
const HEDGED_IN_FLIGHT: usize = 4;

/// The pause before trying a request that could not connect again.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// The request was never carried out: no connection to the member, or the
/// member has no leader (it refuses before doing anything).
fn not_sent(e: &etcd_client::Error) -> bool {
    is_connect_error(e)
        || matches!(e, etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::Unavailable && s.message().contains("no leader"))
}

/// The request failed before it was sent: no connection to the member.
fn is_connect_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable
                && (s.message().contains("connect error") || s.message().contains("Connection refused"))
        }
        _ => false,
    }
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let full = self.full(key);
        let resp = self
            .call_idempotent("a read", |mut c| {
                let k = full.clone();
                async move { c.get(k, None).await }
            })
            .await?
            .map_err(classify)?;
        Ok(resp.kvs().first().map(versioned))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let full = self.full(prefix);
        let (key, opts) = if full.is_empty() {
            (vec![0u8], GetOptions::new().with_from_key())
        } else {
            (full.into_bytes(), GetOptions::new().with_prefix())
        };
        let resp = self
            .call_idempotent("a list", |mut c| {
                let (k, o) = (key.clone(), opts.clone());
                async move { c.get(k, Some(o)).await }
            })
            .await?
            .map_err(classify)?;
        resp.kvs().iter().map(|kv| Ok(KeyValue { key: self.strip(kv.key())?, value: versioned(kv) })).collect()
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        // Any single-key read returns the cluster's revision in its header.
        let probe = format!("{}/", self.inner.prefix);
        let resp = self
            .call_idempotent("a read", |mut c| {
                let k = probe.clone();
                async move { c.get(k, Some(GetOptions::new().with_count_only())).await }
            })
            .await?
            .map_err(classify)?;
        revision_of(resp.header())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        for (key, _) in &txn.checks {
            check_key(key)?;
        }
        let mut compares = Vec::new();
        for (key, expect) in &txn.checks {
            let k = self.full(key);
            match expect {
                Expect::Any => {}
                Expect::Absent => compares.push(Compare::version(k, CompareOp::Equal, 0)),
                Expect::Revision(rev) => {
                    compares.push(Compare::version(k.clone(), CompareOp::Greater, 0));
                    compares.push(Compare::mod_revision(k, CompareOp::Equal, i64::try_from(*rev).unwrap_or(-1)));
                }
            }
        }
        let mut ops = Vec::new();
        let mut leases = Vec::new();
        for op in &txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    check_key(key)?;
                    let opts = lease.map(|l| PutOptions::new().with_lease(lease_id(l)));
                    leases.extend(*lease);
                    ops.push(TxnOp::put(self.full(key), value.clone(), opts));
                }
                Op::Delete { key } => {
                    check_key(key)?;
                    ops.push(TxnOp::delete(self.full(key), None));
                }
                Op::DeletePrefix { prefix } => {
                    let full = self.full(prefix);
                    if full.is_empty() {
                        ops.push(TxnOp::delete(vec![0u8], Some(DeleteOptions::new().with_from_key())));
                    } else {
                        ops.push(TxnOp::delete(full, Some(DeleteOptions::new().with_prefix())));
                    }
                }
            }
        }
        let reads: Vec<TxnOp> = txn.checks.iter().map(|(key, _)| TxnOp::get(self.full(key), None)).collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops).or_else(reads);
        let resp = match self
            .call("a transaction", |mut c| {
                let r = request.clone();
                async move { c.txn(r).await }
            })
            .await?
        {
            Ok(r) => r,
            Err(e) if is_lease_not_found(&e) => {
                return Err(StoreError::LeaseExpired(leases.first().copied().unwrap_or(LeaseId(0))));
            }
            Err(e) => return Err(classify(e)),
        };
        if resp.succeeded() {
            return Ok(TxnOutcome::Done(revision_of(resp.header())?));
        }
        // The failure branch read every checked key, in order: report the
        // first check that does not hold.
        let mut first = None;
        for ((key, expect), r) in txn.checks.iter().zip(resp.op_responses()) {
            let current = match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(versioned),
                _ => None,
            };
            if !expect_holds(*expect, current.as_ref()) {
                return Ok(TxnOutcome::Conflict { key: key.clone(), current });
            }
            if first.is_none() {
                first = Some((key.clone(), current));
            }
        }
        let (key, current) = first.ok_or_else(|| StoreError::Internal("etcd refused a txn without checks".into()))?;
        Ok(TxnOutcome::Conflict { key, current })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid("a lease needs a TTL above zero".into()));
        }
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let resp = self
            .call("a lease grant", |mut c| async move { c.lease_grant(secs, None).await })
            .await?
            .map_err(classify)?;
        if !resp.error().is_empty() {
            return Err(StoreError::Unavailable(format!("etcd refused a lease: {}", resp.error())));
        }
        Ok(LeaseId(u64::try_from(resp.id()).unwrap_or(0)))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One request on a fresh keep-alive stream: the client sends it and
        // waits for etcd's answer (TTL 0 when the lease is gone).
        match self
            .call_idempotent("a lease keep-alive", |mut c| async move { c.lease_keep_alive(lease_id(lease)).await })
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseExpired(lease)),
            Err(e) => Err(classify(e)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.call("a lease revoke", |mut c| async move { c.lease_revoke(lease_id(lease)).await }).await? {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn lease_remaining(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let resp = match self
            .call_idempotent("a lease lookup", |mut c| async move { c.lease_time_to_live(lease_id(lease), None).await })
            .await?
        {
            Ok(r) => r,
            Err(e) if is_lease_not_found(&e) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        Ok(u64::try_from(resp.ttl()).ok().filter(|s| *s > 0).map(Duration::from_secs))
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        // Read the revision, then watch from the next one: nothing after
        // the returned start revision is missed.
        let start = self.revision().await?;
        let full = self.full(prefix);
        let mut opts = WatchOptions::new().with_start_revision(i64::try_from(start + 1).unwrap_or(i64::MAX));
        let key = if full.is_empty() {
            opts = opts.with_from_key();
            vec![0u8]
        } else {
            opts = opts.with_prefix();
            full.into_bytes()
        };
        let mut stream = self
            .call("a watch", |mut c| {
                let (k, o) = (key.clone(), opts.clone());
                async move { c.watch(k, Some(o)).await }
            })
            .await?
            .map_err(classify)?;
        // The first answer confirms the watch (or says why not).
        let first = tokio::time::timeout(self.inner.timeout, stream.message())
            .await
            .map_err(|_| StoreError::Unavailable("etcd did not confirm a watch in time".into()))?;
        match first.map_err(classify)? {
            Some(r) if r.created() && !r.canceled() => {}
            Some(r) if r.compact_revision() > 0 => return Err(StoreError::WatchLagged),
            Some(r) => {
                return Err(StoreError::Unavailable(format!("etcd refused the watch: {}", r.cancel_reason())));
            }
            None => return Err(StoreError::Unavailable("etcd closed the watch stream".into())),
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let this = Pump { prefix: self.inner.prefix.clone(), tx, lagged: lagged.clone() };
        let cancel = self.inner.cancel.clone();
        self.inner.tracker.spawn(this.run(stream, cancel));
        Ok(Watch::from_parts(rx, lagged, start))
    }
}

/// Feeds one etcd watch stream into a [`Watch`]'s channel.
struct Pump {
    prefix: String,
    tx: mpsc::Sender<WatchEvent>,
    lagged: Arc<AtomicBool>,
}

impl Pump {
    async fn run(self, mut stream: etcd_client::WatchStream, cancel: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.tx.closed() => return,
                msg = stream.message() => msg,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    // The stream broke (etcd lost, connection reset): the
                    // reader must re-read and watch again.
                    self.lagged.store(true, Ordering::SeqCst);
                    return;
                }
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                self.lagged.store(true, Ordering::SeqCst);
                return;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Ok(key) = std::str::from_utf8(kv.key()) else { continue };
                let key = key.strip_prefix(self.prefix.as_str()).unwrap_or(key).to_owned();
                let event = match ev.event_type() {
                    EventType::Put => WatchEvent::Put { key, value: versioned(kv) },
                    EventType::Delete => {
                        WatchEvent::Delete { key, revision: u64::try_from(kv.mod_revision()).unwrap_or(0) }
                    }
                };
                match self.tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.lagged.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    }
}
