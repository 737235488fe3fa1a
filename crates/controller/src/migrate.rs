//! The migrate workflow: a live move of a cluster's primary to another
//! node (new hardware, another region). Its slow steps run first and side
//! by side, before anyone is asked: the target catching up, its readiness
//! to be the primary (the checks of `pgdr adopt`, for the role the target
//! takes and for the nodes that will stream from it), and the routes the
//! proxies will get. It then waits at an approval gate; the cutover after
//! it is the switchover's, step for step (a checkpoint, the proxies'
//! pause, the shutdown checkpoint, promotion, resume, repoint, rejoin), so
//! writes pause for well under the time the preparation took.
//!
//! A dry run ([`dry_run`]) runs the same readiness checks once against the
//! live topology and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use pgdr_config::{Cluster, Node};
use pgdr_model::NodeName;
use pgdr_node::adopt::{Facts, Gap, Needs};
use pgdr_workflow::{RetryPolicy, Stage, StepContext, StepError, StepOutput};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::runtime::Shared;
use crate::workflows::{Ctx, Params, fatal, retry, step};

/// The target may start the cutover this far behind the primary; the
/// shutdown checkpoint waits for the rest.
pub const CATCH_UP_BYTES: u64 = 16 * 1024 * 1024;

/// How long the preparation waits for the target to catch up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// The parallel preparation stage that runs before the approval gate.
pub(crate) fn prepare(sh: &Arc<Shared>, p: &Params) -> Stage {
    Stage::parallel(vec![
        step(
            sh,
            p,
            "catch_up_target",
            "wait until the target streams from the primary and lags less than 16 MiB",
            catch_up_target,
        )
        .retry(RetryPolicy::once()),
        step(
            sh,
            p,
            "check_readiness",
            "check the target can be the primary: version, replication settings, pg_hba.conf for the other nodes, TLS; and that the old primary can be rewound",
            check_readiness,
        )
        .retry(RetryPolicy { max_attempts: 3, initial: Duration::from_secs(1), factor: 2.0, max: Duration::from_secs(4) })
        .check("no gap blocks the target as primary (the same checks as pgdr adopt)"),
        step(sh, p, "plan_routes", "the routing the proxies get at the cutover", plan_routes)
            .retry(RetryPolicy::once()),
    ])
}

fn target_of(c: &Ctx) -> Result<&Node, StepError> {
    let to = c.p.to.as_deref().ok_or_else(|| fatal("a migrate needs --to NODE"))?;
    c.node(&NodeName::new(to))
}

async fn catch_up_target(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let target = target_of(&c)?.clone();
    let old = c.node(c.old_primary()?)?.clone();
    let started = Instant::now();
    let (ta, pa) = (
        c.sh.agent(&target).map_err(fatal)?.with_timeout(Duration::from_secs(3)),
        c.sh.agent(&old).map_err(fatal)?.with_timeout(Duration::from_secs(3)),
    );
    loop {
        let (t, p) = tokio::join!(ta.status(), pa.status());
        let last = match (&t, &p) {
            (Ok(t), Ok(p)) => match (t.replay_lsn.max(t.receive_lsn), p.current_lsn, &t.wal_receiver) {
                (Some(have), Some(want), Some(_)) => {
                    let behind = want.0.saturating_sub(have.0);
                    if behind <= CATCH_UP_BYTES {
                        return Ok(StepOutput::json(json!({"node": target.name, "behind_bytes": behind,
                            "replayed": t.replay_lsn, "primary_lsn": want, "waited_ms": started.elapsed().as_millis() as u64})));
                    }
                    format!("{behind} bytes behind")
                }
                (_, _, None) => "it does not stream (no WAL receiver)".to_owned(),
                _ => "no positions yet".to_owned(),
            },
            (Err(e), _) => format!("its agent does not answer: {e}"),
            (_, Err(e)) => format!("the primary's agent does not answer: {e}"),
        };
        if started.elapsed() > CATCH_UP_LIMIT {
            return Err(fatal(format!(
                "{} did not catch up within {}s: {last}",
                target.name,
                CATCH_UP_LIMIT.as_secs()
            )));
        }
        tokio::select! {
            _ = sc.cancel.cancelled() => return Err(retry("cancelled")),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn connect(sh: &Shared, cluster: &Cluster, n: &Node) -> Result<tokio_postgres::Client, String> {
    crate::probe::connect(&sh.target(cluster, n), Duration::from_secs(5), "pgdr-migrate")
        .await
        .map_err(|e| format!("cannot connect to {}: {e:?}", n.name))
}

/// The readiness of `target` to take over from `old`, with every gap.
pub(crate) async fn readiness(sh: &Shared, cluster: &Cluster, old: &Node, target: &Node) -> Result<Value, String> {
    let (tc, pc) = (connect(sh, cluster, target).await?, connect(sh, cluster, old).await?);
    let read = |c: tokio_postgres::Client, n: NodeName| async move {
        Facts::read(&c).await.map_err(|e| format!("{n}: cannot read its settings: {}", pgdr_node::local::pg_detail(&e)))
    };
    let (tf, pf) = (read(tc, target.name.clone()).await?, read(pc, old.name.clone()).await?);
    let mut problems: Vec<String> = Vec::new();
    if !tf.in_recovery {
        problems.push(format!("{} is not a standby", target.name));
    }
    if tf.major() != pf.major() {
        problems.push(format!("{} runs PostgreSQL {}, the primary {}", target.name, tf.major(), pf.major()));
    }
    // As the primary, the target feeds every other node, the old primary included.
    let needs = Needs {
        peer_hosts: cluster.nodes.iter().filter(|n| n.name != target.name).map(|n| n.host.clone()).collect(),
        replication_user: cluster.replication_user.clone(),
        nodes: cluster.nodes.len(),
        tls: sh.pg_tls.is_some(),
        // Connected above with the cluster's TLS, when it has some.
        tls_verified: true,
        ssl_files: None,
        replica_major: Some(pf.major()),
    };
    let blocking: Vec<Gap> = pgdr_node::adopt::gaps(&tf, &needs)
        .into_iter()
        .filter(|g| g.level.blocks() && g.what != "role" && g.what != "listen_addresses")
        .collect();
    for g in &blocking {
        problems.push(format!("{}: {}: have {}; fix: {}", target.name, g.what, g.have, g.fix_text()));
    }
    // The old primary comes back as a replica by pg_rewind.
    if !pf.data_checksums && pf.setting("wal_log_hints") != "on" {
        problems.push(format!(
            "{}: neither wal_log_hints nor data checksums: it can only come back by a full base backup",
            old.name
        ));
    }
    problems.extend(stale_agents(sh, cluster).await);
    if problems.is_empty() {
        Ok(json!({"target": target.name, "version": tf.version_num, "checked_hosts": needs.peer_hosts,
            "old_primary_rewindable": true}))
    } else {
        Err(problems.join("; "))
    }
}

/// Agents started before a node was added to the config act only toward
/// the nodes they loaded: the old primary's could not rejoin from a target
/// it does not know (after the cutover, leaving the cluster without its
/// standby). Each agent's status says what it loaded.
pub(crate) async fn stale_agents(sh: &Shared, cluster: &Cluster) -> Vec<String> {
    let mut want: Vec<String> = cluster.nodes.iter().map(|n| n.name.to_string()).collect();
    want.sort();
    let mut set = tokio::task::JoinSet::new();
    for n in &cluster.nodes {
        let (name, agent) = (n.name.clone(), sh.agent(n).map(|a| a.with_timeout(Duration::from_secs(3))));
        set.spawn(async move {
            match agent {
                Ok(a) => (name, a.status().await.map(|s| s.members).map_err(|e| e.to_string())),
                Err(e) => (name, Err(e.to_string())),
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((name, Ok(members))) => {
                let missing = unknown_to(&want, &members);
                if !missing.is_empty() {
                    out.push(format!(
                        "the agent of {name} was started before {} joined the config: restart it (pgdr agent --node {name})",
                        missing.join(", ")
                    ));
                }
            }
            Ok((name, Err(e))) => out.push(format!("the agent of {name} does not answer: {e}")),
            Err(e) => out.push(format!("an agent status task failed: {e}")),
        }
    }
    out.sort();
    out
}

/// The configured nodes an agent that loaded `members` does not know. An
/// agent older than the field reports none and is not judged.
pub(crate) fn unknown_to<'a>(want: &'a [String], members: &[String]) -> Vec<&'a str> {
    if members.is_empty() {
        return Vec::new();
    }
    want.iter().filter(|w| !members.contains(w)).map(String::as_str).collect()
}

async fn check_readiness(c: Arc<Ctx>, _sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    let target = target_of(&c)?;
    let old = c.node(c.old_primary()?)?;
    let started = Instant::now();
    match readiness(&c.sh, cluster, old, target).await {
        Ok(mut v) => {
            v["took_ms"] = json!(started.elapsed().as_millis() as u64);
            Ok(StepOutput::json(v))
        }
        Err(e) if e.starts_with("cannot connect") => Err(retry(e)),
        Err(e) => Err(fatal(format!("{} is not ready to be the primary: {e}", target.name))),
    }
}

async fn plan_routes(c: Arc<Ctx>, _sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    let target = target_of(&c)?;
    let state =
        c.sh.clusters.state(&cluster.name).await.map_err(retry)?.ok_or_else(|| fatal("the cluster has no state"))?;
    let mut next = state.clone();
    next.primary = Some(target.name.clone());
    next.epoch = state.epoch.next();
    let now = c.sh.route(cluster, &state);
    let then = c.sh.route(cluster, &next);
    let show = |r: &crate::runtime::RouteInfo| {
        json!({"epoch": r.epoch, "writer": r.primary.as_ref().map(|(n, h, p)| format!("{n} {h}:{p}")),
            "readers": r.replicas.iter().map(|(n, h, p)| format!("{n} {h}:{p}")).collect::<Vec<_>>()})
    };
    let repoint: Vec<&NodeName> = cluster
        .nodes
        .iter()
        .map(|n| &n.name)
        .filter(|n| **n != target.name && Some(*n) != state.primary.as_ref())
        .collect();
    Ok(StepOutput::json(json!({"now": show(&now), "after": show(&then), "repoint": repoint,
        "old_primary_rejoins": state.primary})))
}

/// What a dry run adds to the plan: the preparation's checks, once,
/// against the live topology.
pub(crate) async fn dry_run(sh: &Shared, p: &Params) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(cluster) = sh.cluster(p.cluster.as_str()) else { return lines };
    let (Some(old), Some(target)) =
        (p.old_primary.as_ref().and_then(|o| cluster.node(o.as_str())), p.to.as_deref().and_then(|t| cluster.node(t)))
    else {
        lines.push("live check: a migrate needs --to NODE and a primary".into());
        return lines;
    };
    let (ta, pa) = match (sh.agent(target), sh.agent(old)) {
        (Ok(t), Ok(p)) => (t.with_timeout(Duration::from_secs(3)), p.with_timeout(Duration::from_secs(3))),
        _ => return vec!["live check: cannot build the agents' clients".into()],
    };
    match tokio::join!(ta.status(), pa.status()) {
        (Ok(t), Ok(pr)) => {
            let behind = match (t.replay_lsn.max(t.receive_lsn), pr.current_lsn) {
                (Some(h), Some(w)) => Some(w.0.saturating_sub(h.0)),
                _ => None,
            };
            lines.push(format!(
                "live check: {} {} from {}, {} behind (the cutover starts within {} MiB)",
                target.name,
                if t.wal_receiver.is_some() { "streams" } else { "does NOT stream" },
                old.name,
                behind.map(|b| format!("{b} bytes")).unwrap_or_else(|| "unknown".into()),
                CATCH_UP_BYTES >> 20
            ));
        }
        (t, pr) => lines.push(format!(
            "live check: agents: {} {}; {} {}",
            target.name,
            t.map(|_| "answers".to_owned()).unwrap_or_else(|e| e.to_string()),
            old.name,
            pr.map(|_| "answers".to_owned()).unwrap_or_else(|e| e.to_string())
        )),
    }
    match readiness(sh, cluster, old, target).await {
        Ok(v) => lines.push(format!("live check: {} is ready to be the primary ({v})", target.name)),
        Err(e) => lines.push(format!("live check: NOT ready: {e}")),
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_agent_started_before_a_node_joined_is_stale() {
        let want = v(&["east-1", "west-1"]);
        assert_eq!(unknown_to(&want, &v(&["east-1"])), ["west-1"]);
        assert!(unknown_to(&want, &v(&["east-1", "west-1"])).is_empty());
        // A node removed since is no reason to restart; an old agent is not judged.
        assert!(unknown_to(&want, &v(&["east-1", "old-1", "west-1"])).is_empty());
        assert!(unknown_to(&want, &[]).is_empty());
    }
}
