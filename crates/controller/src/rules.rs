//! The safety rules as the API shows them, and the freeze switches
//! operators turn on and off (`pgdr rules`, `pgdr freeze`, `pgdr
//! unfreeze`). The rules themselves are [`pgdr_decide::rules`]; the freeze
//! switches live in the state store ([`pgdr_store::Freeze`]), where the
//! transaction of an automatic role change checks them.

use pgdr_api::controller::{ClusterRules, FreezeRequest, FreezeView, RuleView, RulesView};
use pgdr_decide::rules::Rule;
use pgdr_model::ClusterName;
use pgdr_store::{Freeze, Freezes};

use crate::controller::{Controller, ControllerError};

/// A stored switch as the API shows it.
pub fn view(f: &Freeze, global: bool) -> FreezeView {
    FreezeView {
        by: f.by.clone(),
        at: {
            let at = f.at.replace_nanosecond(0).unwrap_or(f.at);
            at.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| at.to_string())
        },
        reason: f.reason.clone(),
        global,
    }
}

/// The switch that applies to a cluster: its own, else the global one.
pub fn applies(f: &Freezes) -> Option<FreezeView> {
    f.cluster.as_ref().map(|c| view(c, false)).or_else(|| f.global.as_ref().map(|g| view(g, true)))
}

impl Controller {
    /// Every rule, the global freeze, and each cluster's.
    pub async fn rules_view(&self) -> Result<RulesView, ControllerError> {
        let rules =
            Rule::ALL.iter().map(|r| RuleView { name: r.name().into(), description: r.describe().into() }).collect();
        let mut global_freeze = None;
        let mut clusters = Vec::new();
        for c in &self.sh.config.clusters {
            let f = self.sh.clusters.freezes(&c.name).await?;
            global_freeze = f.global.as_ref().map(|g| view(g, true));
            clusters.push(ClusterRules { cluster: c.name.clone(), frozen: applies(&f) });
        }
        Ok(RulesView { rules, global_freeze, clusters })
    }

    fn freeze_target(&self, req: &FreezeRequest) -> Result<Option<ClusterName>, ControllerError> {
        match &req.cluster {
            None => Ok(None),
            Some(name) => {
                let c = self.sh.cluster(name).ok_or_else(|| ControllerError::UnknownCluster(name.clone()))?;
                Ok(Some(c.name.clone()))
            }
        }
    }

    /// Turns a freeze switch on, recorded under the token's name `by`.
    pub async fn freeze(&self, req: &FreezeRequest, by: &str) -> Result<RulesView, ControllerError> {
        let target = self.freeze_target(req)?;
        let f = self.sh.clusters.freeze(target.as_ref(), by, req.reason.as_deref()).await?;
        let what = target.as_ref().map(|c| format!("cluster {c}")).unwrap_or_else(|| "every cluster".into());
        tracing::warn!(by = %f.by, "{what} frozen: no automatic role change until unfrozen");
        let message = format!(
            "{what} frozen by {} at {}{}: no automatic role change until unfrozen (an operator's switchover or failover still runs)",
            f.by,
            view(&f, target.is_none()).at,
            f.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
        self.freeze_events(target.as_ref(), "frozen", &message).await;
        self.rules_view().await
    }

    /// Turns a freeze switch off.
    pub async fn unfreeze(&self, req: &FreezeRequest, by: &str) -> Result<RulesView, ControllerError> {
        let target = self.freeze_target(req)?;
        let was = self.sh.clusters.unfreeze(target.as_ref()).await?;
        let what = target.as_ref().map(|c| format!("cluster {c}")).unwrap_or_else(|| "every cluster".into());
        if let Some(was) = was {
            tracing::warn!(by, "{what} unfrozen (frozen by {})", was.by);
            let message = format!("{what} unfrozen by {by} (frozen by {} at {})", was.by, view(&was, false).at);
            self.freeze_events(target.as_ref(), "unfrozen", &message).await;
        }
        self.rules_view().await
    }

    /// One event per cluster the switch applies to.
    async fn freeze_events(&self, target: Option<&ClusterName>, state: &str, message: &str) {
        for c in self.sh.config.clusters.iter().filter(|c| target.is_none_or(|t| *t == c.name)) {
            let mut ev = self.sh.event(&c.name, state, message);
            ev.epoch = self.sh.clusters.state(&c.name).await.ok().flatten().map(|s| s.epoch);
            self.sh.emit(ev).await;
        }
    }
}
