//! Delivers events as JSON to the configured webhooks, with retries and
//! backoff, from one background task so a slow receiver never holds up a
//! workflow.

use std::time::Duration;

use pgdr_store::Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The sending side: cheap, never blocks.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
}

impl Webhooks {
    /// No webhooks configured.
    pub fn none() -> Webhooks {
        Webhooks { tx: None }
    }

    /// Starts the delivery task for `targets` (url, bearer token).
    pub fn start(
        targets: Vec<(String, Option<String>)>,
        tracker: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Webhooks {
        if targets.is_empty() {
            return Webhooks::none();
        }
        let (tx, mut rx) = mpsc::channel::<Event>(1024);
        tracker.spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = rx.recv() => match e { Some(e) => e, None => return },
                };
                for (url, token) in &targets {
                    deliver(&http, url, token.as_deref(), &event, &cancel).await;
                }
            }
        });
        Webhooks { tx: Some(tx) }
    }

    pub fn send(&self, event: &Event) {
        if let Some(tx) = &self.tx
            && tx.try_send(event.clone()).is_err()
        {
            tracing::warn!("webhook queue full: event {} dropped for webhooks (kept in the store)", event.state);
        }
    }
}

async fn deliver(http: &reqwest::Client, url: &str, token: Option<&str>, event: &Event, cancel: &CancellationToken) {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        let mut req = http.post(url).json(event).timeout(Duration::from_secs(5));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(url, attempt, "webhook answered HTTP {}", r.status()),
            Err(e) => tracing::warn!(url, attempt, "webhook failed: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    tracing::error!(url, "webhook gave up on event {} after 5 attempts", event.state);
}
