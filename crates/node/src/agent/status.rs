//! `GET /v1/status`: role, timeline, LSNs, lag and replication connections,
//! read from PostgreSQL; `role: down` when it does not answer, or when the
//! server answering on its address serves another data directory (another
//! server took the port: see [`crate::local::LocalPg::check_served`]).

use std::time::Duration;

use pgdr_api::agent::{ReplicationConnection, Status, WalReceiver};
use pgdr_model::{Lsn, Role, TimelineId};
use tokio_postgres::Client;

use super::AgentState;

/// How long a status query may take before PostgreSQL is reported down.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) async fn collect(state: &AgentState) -> Status {
    let cfg = &state.cfg;
    let running = cfg.pg.is_running().await;
    let mut s = Status {
        node: cfg.node.clone(),
        cluster: cfg.cluster.clone(),
        region: cfg.region.clone(),
        data_dir: cfg.pg.data_dir.display().to_string(),
        role: Role::Down,
        up: false,
        running,
        pid: if running { cfg.pg.postmaster_pid() } else { None },
        timeline: None,
        current_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        lag_bytes: None,
        lag_seconds: None,
        wal_receiver: None,
        replication: Vec::new(),
        read_only: false,
        fenced: false,
        boot_guard: false,
        epoch: state.epoch.current(),
        server_version: None,
        error: None,
        members: {
            let mut m: Vec<String> = cfg.targets.iter().filter(|t| !t.proxy).map(|t| t.name.clone()).collect();
            m.sort();
            m
        },
    };
    let res = tokio::time::timeout(QUERY_TIMEOUT, state.with_local(async |client| query(client, &mut s).await)).await;
    match res {
        Ok(Ok(())) => {
            s.up = true;
            s.boot_guard = s.role == Role::Replica && crate::guard::armed(&cfg.pg.data_dir);
        }
        Ok(Err(e)) => {
            s.role = Role::Down;
            s.error = Some(if running { e } else { format!("PostgreSQL is not running ({e})") });
        }
        Err(_) => {
            s.role = Role::Down;
            s.error = Some(format!("PostgreSQL did not answer within {}s", QUERY_TIMEOUT.as_secs()));
        }
    }
    s
}

fn lsn(v: Option<String>) -> Option<Lsn> {
    v.and_then(|t| t.parse().ok())
}

async fn query(client: &Client, s: &mut Status) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "select pg_is_in_recovery(), current_setting('server_version'), \
             setting = 'on', coalesce(sourcefile like '%postgresql.auto.conf', false) \
             from pg_settings where name = 'default_transaction_read_only'",
            &[],
        )
        .await?;
    let in_recovery: bool = row.get(0);
    s.server_version = Some(row.get(1));
    s.read_only = row.get(2);
    // A replica takes no writes anyway: "fenced" describes a primary. A
    // demoted primary keeps the setting until its next promotion lifts it.
    s.fenced = !in_recovery && s.read_only && row.get::<_, bool>(3);
    if in_recovery {
        s.role = Role::Replica;
        let row = client
            .query_one(
                "select pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                 case when pg_last_wal_receive_lsn() is null then null \
                      when pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0::float8 \
                      else extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 end, \
                 coalesce((select received_tli from pg_stat_wal_receiver), \
                          (select timeline_id from pg_control_checkpoint()))",
                &[],
            )
            .await?;
        s.receive_lsn = lsn(row.get(0));
        s.replay_lsn = lsn(row.get(1));
        s.lag_seconds = row.get::<_, Option<f64>>(2).map(|v| v.max(0.0));
        s.timeline = row.get::<_, Option<i32>>(3).map(|t| TimelineId(t as u32));
        s.lag_bytes = match (s.receive_lsn, s.replay_lsn) {
            (Some(r), Some(p)) => Some(r.bytes_since(p)),
            _ => None,
        };
        let rows =
            client.query("select status, sender_host, sender_port, slot_name from pg_stat_wal_receiver", &[]).await?;
        s.wal_receiver = rows.first().map(|r| WalReceiver {
            status: r.get(0),
            sender_host: r.get(1),
            sender_port: r.get(2),
            slot_name: r.get(3),
        });
    } else {
        s.role = Role::Primary;
        let row =
            client.query_one("select pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())", &[]).await?;
        s.current_lsn = lsn(row.get(0));
        let walfile: String = row.get(1);
        s.timeline = walfile.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok()).map(TimelineId);
        s.lag_bytes = Some(0);
        s.lag_seconds = Some(0.0);
    }
    let rows = client
        .query(
            "select coalesce(application_name, ''), client_addr::text, coalesce(state, ''), coalesce(sync_state, ''), \
             sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text, \
             extract(epoch from replay_lag)::float8 \
             from pg_stat_replication order by application_name",
            &[],
        )
        .await?;
    s.replication = rows
        .iter()
        .map(|r| ReplicationConnection {
            application_name: r.get(0),
            client_addr: r.get(1),
            state: r.get(2),
            sync_state: r.get(3),
            sent_lsn: lsn(r.get(4)),
            write_lsn: lsn(r.get(5)),
            flush_lsn: lsn(r.get(6)),
            replay_lsn: lsn(r.get(7)),
            replay_lag_seconds: r.get(8),
        })
        .collect();
    Ok(())
}
