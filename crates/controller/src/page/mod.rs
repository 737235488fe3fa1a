//! The status page the controller serves at `/` and `/status`: what an
//! on-call engineer needs in an incident, live. Topology by region with
//! roles, epoch, lag against the tier's RPO, probe results per vantage
//! point, the workflow in progress with its steps and timings, the latest
//! events, readiness findings.
//!
//! The HTML, CSS and JavaScript are compiled into the binary
//! (`include_str!`): no build step, nothing fetched from anywhere but this
//! controller (a Content-Security-Policy tells the browser so). The page
//! polls `GET /v1/snapshot` ([`snapshot::Snapshot`]) every second and
//! redraws in place, without a reload. The page and its files are public
//! (they hold no data); the snapshot needs a viewer token, which the page
//! takes from its URL fragment (`/#token=…`, never sent to the server in
//! the URL) or asks for, and keeps in the tab's `sessionStorage`.
//!
//! This module only reads: it never changes a cluster.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::controller::Controller;

pub mod probes;
pub mod snapshot;

/// The page itself.
pub const HTML: &str = include_str!("page.html");
/// Its style sheet, served at `/status/page.css`.
pub const CSS: &str = include_str!("page.css");
/// Its script, served at `/status/page.js`.
pub const JS: &str = include_str!("page.js");

/// Nothing but this controller: no CDN, no font, no analytics.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page's handlers share. Its routes (`/`, `/status`, the two
/// files, `/v1/snapshot`) are rows of [`crate::api::ROUTES`].
#[derive(Debug, Clone)]
pub struct PageState {
    ctl: Controller,
    probes: Arc<Mutex<probes::ProbeBook>>,
}

impl PageState {
    pub fn new(ctl: Controller) -> PageState {
        PageState { ctl, probes: Arc::default() }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

pub(crate) async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub(crate) async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

pub(crate) async fn snapshot(State(st): State<PageState>) -> Response {
    let snap = snapshot::build(&st.ctl, &st.probes).await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(snap)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src=`/`href=` value and every `url(` in the assets.
    fn references(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let lower = text.to_ascii_lowercase();
        for pat in ["src=", "href=", "url(", "@import", "action="] {
            let mut from = 0;
            while let Some(i) = lower[from..].find(pat) {
                let start = from + i + pat.len();
                let rest = &text[start..];
                let rest = rest.trim_start_matches(['"', '\'', ' ']);
                let end = rest.find(['"', '\'', ')', ' ', '>']).unwrap_or(rest.len());
                out.push(rest[..end].to_owned());
                from = start;
            }
        }
        out
    }

    #[test]
    fn the_page_references_nothing_outside_the_controller() {
        for (name, text) in [("page.html", HTML), ("page.css", CSS), ("page.js", JS)] {
            let lower = text.to_ascii_lowercase();
            for bad in ["http://", "https://", "//cdn", "fonts.googleapis", "<iframe", "@import"] {
                assert!(!lower.contains(bad), "{name} contains {bad:?}");
            }
            for r in references(text) {
                assert!(
                    r.starts_with('/') && !r.starts_with("//") || r.starts_with('#') || r.is_empty(),
                    "{name} references {r:?}: only same-origin paths are allowed"
                );
            }
        }
        // The page loads exactly its two assets, from this controller.
        let refs = references(HTML);
        assert!(refs.contains(&"/status/page.css".to_owned()), "{refs:?}");
        assert!(refs.contains(&"/status/page.js".to_owned()), "{refs:?}");
        // The script fetches only the snapshot, same-origin.
        assert!(JS.contains("\"/v1/snapshot\""));
        assert!(!JS.contains("XMLHttpRequest") && !JS.contains("WebSocket") && !JS.contains("import("));
    }

    #[test]
    fn the_script_writes_text_not_html() {
        // Names, messages and errors come from the cluster: never parsed as HTML.
        for bad in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!JS.contains(bad), "page.js uses {bad}");
        }
    }
}
