//! The store's key layout (see the table in the crate docs). Every key pgdr
//! writes is built here, so the layout is in one place.

/// The root of every pgdr key.
pub const ROOT: &str = "/pgdr/";
/// Every cluster's keys.
pub const CLUSTERS: &str = "/pgdr/clusters/";
/// Every workflow's keys.
pub const WORKFLOWS: &str = "/pgdr/workflows/";
/// The controller leader: who, which term, attached to its lease.
pub const CONTROLLER_LEADER: &str = "/pgdr/controller/leader";
/// The last leader term (decimal), raised at every election.
pub const CONTROLLER_TERM: &str = "/pgdr/controller/term";
/// Controllers standing by, one key each (`<prefix><instance>`), attached
/// to the standby's lease ([`crate::StandbyInfo`]).
pub const CONTROLLER_STANDBY: &str = "/pgdr/controller/standby/";
/// A leader handing leadership to one standby: the others wait while it
/// exists (attached to a lease of one TTL, so it cannot outlive the
/// handover). [`crate::Handoff`].
pub const CONTROLLER_HANDOFF: &str = "/pgdr/controller/handoff";
/// The global freeze switch ([`crate::Freeze`]): no automatic role change
/// on any cluster while it exists.
pub const FREEZE_GLOBAL: &str = "/pgdr/rules/freeze";
/// The last event sequence number.
pub const EVENTS_SEQ: &str = "/pgdr/events/seq";
/// The events, one key each.
pub const EVENTS_LOG: &str = "/pgdr/events/log/";

pub fn cluster_prefix(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/")
}
pub fn cluster_state(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/state")
}
pub fn cluster_lease(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/lease")
}
/// The leader's last observations of a cluster, for the next leader
/// (`pgdr_controller::handover`).
pub fn cluster_observed(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/observed")
}
pub fn cluster_lock(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/lock")
}
/// The cluster's freeze switch ([`crate::Freeze`]).
pub fn cluster_freeze(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/freeze")
}
/// The synchronous standby set, stored before the primary applies it.
pub fn sync_standbys(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/sync_standbys")
}
pub fn node_health_prefix(cluster: &str) -> String {
    format!("{CLUSTERS}{cluster}/health/")
}
pub fn node_health(cluster: &str, node: &str) -> String {
    format!("{CLUSTERS}{cluster}/health/{node}")
}

pub fn workflow_prefix(id: &str) -> String {
    format!("{WORKFLOWS}{id}/")
}
pub fn workflow_record(id: &str) -> String {
    format!("{WORKFLOWS}{id}/record")
}
pub fn workflow_owner(id: &str) -> String {
    format!("{WORKFLOWS}{id}/owner")
}
pub fn workflow_steps_prefix(id: &str) -> String {
    format!("{WORKFLOWS}{id}/steps/")
}
pub fn workflow_step(id: &str, stage: usize, step: &str) -> String {
    format!("{WORKFLOWS}{id}/steps/{stage:03}/{step}")
}
pub fn workflow_approvals_prefix(id: &str) -> String {
    format!("{WORKFLOWS}{id}/approvals/")
}
pub fn workflow_approval(id: &str, step: &str) -> String {
    format!("{WORKFLOWS}{id}/approvals/{step}")
}
pub fn workflow_cancel(id: &str) -> String {
    format!("{WORKFLOWS}{id}/cancel")
}

pub fn event(seq: u64) -> String {
    format!("{EVENTS_LOG}{seq:020}")
}

/// Encodes a value as JSON for the store.
pub fn to_json<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, crate::StoreError> {
    serde_json::to_vec(value).map_err(|e| crate::StoreError::Internal(format!("cannot encode {key}: {e}")))
}

/// Decodes a JSON value read from `key`.
pub fn from_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, crate::StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| crate::StoreError::Corrupt { key: key.to_owned(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(cluster_state("main"), "/pgdr/clusters/main/state");
        assert_eq!(workflow_step("w1", 2, "promote"), "/pgdr/workflows/w1/steps/002/promote");
        assert_eq!(event(42), "/pgdr/events/log/00000000000000000042");
        assert!(event(9) < event(10), "event keys sort by sequence");
        assert!(cluster_state("main").starts_with(&cluster_prefix("main")));
        assert!(!cluster_state("main-2").starts_with(&cluster_prefix("main")));
    }
}
