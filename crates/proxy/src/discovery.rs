//! Standalone routing for `pgdr proxy` without a controller: polls every
//! node of a cluster with `SELECT pg_is_in_recovery()` and publishes a
//! [`Routing`]. The epoch is local to this proxy and rises by one whenever
//! the discovered primary changes. In `pgdr run` the controller publishes
//! the real epoch from the state store instead, and this task is not used.
//!
//! When two nodes claim to be primary (a promotion racing an old primary's
//! shutdown), the one already routed to keeps the route until it stops
//! being primary; none is chosen if the current one is gone and several
//! claim it, so writes never go to a node that may be fenced.

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

async fn probe(b: &Backend, login: &AdminLogin, timeout: Duration) -> Seen {
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
    let fut = async {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.ok()?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.ok();
        drop(client);
        task.abort();
        row?.try_get::<_, bool>(0).ok()
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Some(false)) => Seen::Primary,
        Ok(Some(true)) => Seen::Replica,
        _ => Seen::Down,
    }
}

/// The next routing from the current one and what each node showed.
pub fn decide(current: &Routing, seen: &[(Backend, Seen)]) -> Routing {
    let primaries: Vec<&Backend> = seen.iter().filter(|(_, s)| *s == Seen::Primary).map(|(b, _)| b).collect();
    let primary = match (&current.primary, primaries.as_slice()) {
        (Some(cur), ps) if ps.contains(&cur) => Some(cur.clone()),
        (_, [one]) => Some((*one).clone()),
        _ => None,
    };
    let replicas = seen.iter().filter(|(_, s)| *s == Seen::Replica).map(|(b, _)| b.clone()).collect();
    let epoch = if primary.is_some() && primary != current.primary { current.epoch.next() } else { current.epoch };
    Routing { epoch, primary, replicas }
}

/// Polls `nodes` every `interval` and publishes into `tx` until cancelled.
pub async fn run(
    nodes: Vec<Backend>,
    login: AdminLogin,
    tx: watch::Sender<Routing>,
    interval: Duration,
    token: CancellationToken,
) {
    let timeout = interval.max(Duration::from_millis(400));
    loop {
        let polls = nodes.iter().map(|b| async { (b.clone(), probe(b, &login, timeout).await) });
        let seen = tokio::select! {
            _ = token.cancelled() => return,
            s = futures_join_all(polls) => s,
        };
        let next = decide(&tx.borrow(), &seen);
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
            _ = tokio::time::sleep(interval) => {}
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
        let r1 = decide(&r0, &[(a.clone(), Seen::Primary), (b.clone(), Seen::Replica)]);
        assert_eq!(r1.epoch, Epoch(1));
        assert_eq!(r1.primary, Some(a.clone()));
        assert_eq!(r1.replicas, vec![b.clone()]);
        let same = decide(&r1, &[(a.clone(), Seen::Primary), (b.clone(), Seen::Down)]);
        assert_eq!(same.epoch, Epoch(1));
        // Both claim primary: keep the current one.
        let both = decide(&r1, &[(a.clone(), Seen::Primary), (b.clone(), Seen::Primary)]);
        assert_eq!(both.primary, Some(a.clone()));
        let moved = decide(&r1, &[(a.clone(), Seen::Down), (b.clone(), Seen::Primary)]);
        assert_eq!(moved.primary, Some(b.clone()));
        assert_eq!(moved.epoch, Epoch(2));
        let none = decide(&moved, &[(a, Seen::Down), (b, Seen::Down)]);
        assert_eq!(none.primary, None);
        assert_eq!(none.epoch, Epoch(2));
    }
}
