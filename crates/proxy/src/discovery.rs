//! Standalone routing for `pgdr proxy`: polls every node of a cluster with
//! `SELECT pg_is_in_recovery()` and publishes a [`Routing`].
//!
//! Once a controller has published a route to this proxy (`POST
//! /v1/clusters/{c}/route`, with the state store's epoch), the route
//! follows the epoch: writes go only to the node that epoch names (never to
//! another node because it reports `pg_is_in_recovery() = false`: an old
//! primary coming back is not routed to), none while it is seen as a
//! replica (not promoted yet) or while the controller unrouted it (a
//! failover starting). Discovery then only keeps the replicas current.
//!
//! Before any controller published (a proxy run with no controller), the
//! epoch is local to this proxy and rises by one whenever the discovered
//! primary changes; when two nodes claim to be primary, the one already
//! routed to keeps the route until it stops being primary, and none is
//! chosen if the current one is gone and several claim it. In `pgdr run`
//! the controller publishes in-process and this task is not used.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::AdminLogin;
use crate::routing::{Backend, Routing};

/// What a poll of one node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Primary,
    Replica,
    Down,
}

/// A node's connection, kept between polls.
type Kept = pgdr_tls::pg::KeptClient<()>;

/// Asks one node whether it is in recovery, on the connection kept from
/// the last poll (a login with SCRAM costs PBKDF2 on every poll
/// otherwise, twice a second per node, which `bench/proxy-syscalls.sh`
/// showed in the proxy's CPU); a kept connection that fails is replaced at
/// once, one that does not answer in time is dropped (the next poll opens
/// another).
async fn probe(b: &Backend, login: &AdminLogin, timeout: Duration, kept: &mut Kept) -> Seen {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&b.host)
        .port(b.port)
        .user(&login.user)
        .dbname(&login.database)
        .connect_timeout(timeout)
        .application_name("pgdr-proxy-discovery");
    if let Some(p) = &login.password {
        cfg.password(p);
    }
    let tls = login.tls.clone();
    // The attempt may outlive this poll (see `KeptClient`): it has its own
    // deadline.
    let open = move || async move {
        match tokio::time::timeout(timeout, pgdr_tls::pg::connect(&cfg, tls.as_ref())).await {
            Ok(Ok(c)) => Ok(c),
            _ => Err(()),
        }
    };
    let fut = async {
        // A kept connection that fails (its server ended the session, e.g.
        // a demotion terminating every client) is not the node's answer:
        // one more try on a new connection.
        for _ in 0..2 {
            let client = kept.get(open.clone(), |_| ()).await.ok()?;
            match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                Ok(row) => {
                    kept.release();
                    return row.try_get::<_, bool>(0).ok();
                }
                Err(_) => kept.close(),
            }
        }
        None
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Some(false)) => Seen::Primary,
        Ok(Some(true)) => Seen::Replica,
        _ => Seen::Down,
    }
}

/// The next routing from the current one, the controller's last published
/// route (if any) and what each node showed.
pub fn decide(current: &Routing, published: Option<&Routing>, seen: &[(Backend, Seen)]) -> Routing {
    let replicas: Vec<Backend> = seen.iter().filter(|(_, s)| *s == Seen::Replica).map(|(b, _)| b.clone()).collect();
    if let Some(p) = published {
        // The epoch names the primary; what the node reports only holds
        // writes back while it is still a replica.
        let primary =
            p.primary.clone().filter(|b| !seen.iter().any(|(s, st)| s.node == b.node && *st == Seen::Replica));
        let replicas = replicas.into_iter().filter(|r| Some(&r.node) != primary.as_ref().map(|p| &p.node)).collect();
        return Routing { epoch: p.epoch, primary, replicas };
    }
    let primaries: Vec<&Backend> = seen.iter().filter(|(_, s)| *s == Seen::Primary).map(|(b, _)| b).collect();
    let primary = match (&current.primary, primaries.as_slice()) {
        (Some(cur), ps) if ps.contains(&cur) => Some(cur.clone()),
        (_, [one]) => Some((*one).clone()),
        _ => None,
    };
    let epoch = if primary.is_some() && primary != current.primary { current.epoch.next() } else { current.epoch };
    Routing { epoch, primary, replicas }
}

/// Polls `nodes` every `interval` and publishes into `tx` until cancelled;
/// a route the controller publishes into `published` applies at once.
pub async fn run(
    nodes: Vec<Backend>,
    login: AdminLogin,
    tx: watch::Sender<Routing>,
    mut published: watch::Receiver<Option<Routing>>,
    interval: Duration,
    token: CancellationToken,
) {
    let timeout = interval.max(Duration::from_millis(400));
    let mut seen: Vec<(Backend, Seen)> = Vec::new();
    let mut kept: Vec<Kept> = nodes.iter().map(|_| Kept::default()).collect();
    let mut poll_due = true;
    let mut gone = false;
    loop {
        if poll_due {
            let login = &login;
            let polls = nodes
                .iter()
                .zip(kept.iter_mut())
                .map(|(b, k)| async move { (b.clone(), probe(b, login, timeout, k).await) });
            seen = tokio::select! {
                _ = token.cancelled() => return,
                s = futures_join_all(polls) => s,
            };
        }
        let next = decide(&tx.borrow(), published.borrow_and_update().as_ref(), &seen);
        tx.send_if_modified(|cur| {
            if *cur != next {
                if cur.primary != next.primary {
                    tracing::info!(epoch = %next.epoch, primary = ?next.primary.as_ref().map(|p| p.node.to_string()), "discovered primary changed");
                }
                *cur = next;
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(interval) => poll_due = true,
            r = published.changed(), if !gone => {
                // No publisher any more: polling alone goes on.
                gone = r.is_err();
                poll_due = false;
            }
        }
    }
}

async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().collect();
    let mut out = Vec::with_capacity(handles.len());
    // Few nodes: run them concurrently with a JoinSet-free approach.
    let mut pinned: Vec<_> = handles.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdr_model::Epoch;

    #[test]
    fn epoch_rises_only_when_primary_changes() {
        let a = Backend::new("a", "127.0.0.1", 1);
        let b = Backend::new("b", "127.0.0.1", 2);
        let r0 = Routing::default();
        let r1 = decide(&r0, None, &[(a.clone(), Seen::Primary), (b.clone(), Seen::Replica)]);
        assert_eq!(r1.epoch, Epoch(1));
        assert_eq!(r1.primary, Some(a.clone()));
        assert_eq!(r1.replicas, vec![b.clone()]);
        let same = decide(&r1, None, &[(a.clone(), Seen::Primary), (b.clone(), Seen::Down)]);
        assert_eq!(same.epoch, Epoch(1));
        // Both claim primary: keep the current one.
        let both = decide(&r1, None, &[(a.clone(), Seen::Primary), (b.clone(), Seen::Primary)]);
        assert_eq!(both.primary, Some(a.clone()));
        let moved = decide(&r1, None, &[(a.clone(), Seen::Down), (b.clone(), Seen::Primary)]);
        assert_eq!(moved.primary, Some(b.clone()));
        assert_eq!(moved.epoch, Epoch(2));
        let none = decide(&moved, None, &[(a, Seen::Down), (b, Seen::Down)]);
        assert_eq!(none.primary, None);
        assert_eq!(none.epoch, Epoch(2));
    }

    #[test]
    fn a_published_epoch_names_the_primary() {
        let a = Backend::new("a", "127.0.0.1", 1);
        let b = Backend::new("b", "127.0.0.1", 2);
        let cur = Routing { epoch: Epoch(7), primary: Some(a.clone()), replicas: vec![b.clone()] };
        let published = Routing { epoch: Epoch(3), primary: Some(b.clone()), replicas: vec![] };
        // The old primary a comes back as primary: not routed to; b is
        // named but not promoted yet: writes wait.
        let r = decide(&cur, Some(&published), &[(a.clone(), Seen::Primary), (b.clone(), Seen::Replica)]);
        assert_eq!((r.epoch, r.primary.clone()), (Epoch(3), None));
        let r = decide(&r, Some(&published), &[(a.clone(), Seen::Primary), (b.clone(), Seen::Primary)]);
        assert_eq!(r.primary, Some(b.clone()));
        assert!(r.replicas.is_empty());
        // Unrouted by the controller (a failover starting).
        let unrouted = Routing { epoch: Epoch(3), primary: None, replicas: vec![] };
        let r = decide(&r, Some(&unrouted), &[(a.clone(), Seen::Replica), (b, Seen::Primary)]);
        assert_eq!(r.primary, None);
        assert_eq!(r.replicas, vec![a]);
    }
}
