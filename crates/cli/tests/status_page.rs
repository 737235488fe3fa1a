//! The controller's status page in a real headless browser (Debian's
//! chromium, driven over WebDriver by chromedriver): it renders a real
//! sandbox's topology, and after a switchover run by the controller it shows
//! the new primary without a reload.
//!
//! The controller runs in-process on the sandbox's config and its embedded
//! store, with the config's proxies left out (this test starts none; the
//! proxy is tested on its own). Each region shows whether its stored
//! secret logs in now, before and after a rotation run by the controller.
//! Chromium and chromedriver are started here by
//! PID, with a fresh profile and everything that reaches the internet turned
//! off, and killed by PID when the test ends, passed or failed.

mod common;

use common::free_port;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdr_api::controller::RoleChangeRequest;
use pgdr_controller::Controller;
use pgdr_controller::runtime::HttpProxies;
use pgdr_controller::webhook::Webhooks;
use pgdr_sandbox::{Sandbox, SandboxGuard};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");
/// How long the page may take to show a change.
const PAGE_WAIT: Duration = Duration::from_secs(30);

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// A process started by this test, in its own process group; dropping it
/// SIGKILLs that group (the process and the children it started) by its
/// PID, and reaps it.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &'static str) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc { child, what }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if let Err(e) = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL) {
            eprintln!("cannot kill {} (pid {pid}): {e}", self.what);
        }
        let _ = self.child.wait();
    }
}

/// Headless chromium with a fresh profile and a DevTools port, and
/// chromedriver attached to it: a minimal WebDriver client (WebDriver is
/// HTTP and JSON).
struct Browser {
    http: reqwest::Client,
    driver: String,
    session: String,
    // Dropped in this order: the driver, then the browser, then the profile.
    _driver: Proc,
    _chromium: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
            panic!(
                "chromium and chromedriver are needed (Debian packages chromium, chromium-driver): run scripts/setup"
            )
        };
        let profile = tempfile::Builder::new().prefix("pgdr-chromium-").tempdir_in("/tmp").expect("profile dir");
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            // The controller serves HTTPS with the sandbox's own CA.
            "--ignore-certificate-errors",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--metrics-recording-only",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        // Chromium's own temporary folders (org.chromium.Chromium.*) go
        // inside the profile, removed with it, not left in /tmp.
        let tmp = profile.path().join("tmp");
        std::fs::create_dir(&tmp).expect("chromium's TMPDIR");
        cmd.env("TMPDIR", &tmp);
        let chromium = Proc::spawn(cmd, "chromium");
        // Chromium writes the DevTools port it picked into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let t = Instant::now();
        let devtools = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file)
                && let Some(p) = s.lines().next().and_then(|l| l.trim().parse::<u16>().ok())
            {
                break p;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "chromium did not open its DevTools port");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let driver_proc = Proc::spawn(cmd, "chromedriver");
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("http client");
        let driver = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        loop {
            let ready = http.get(format!("{driver}/status")).send().await.ok();
            let ready = match ready {
                Some(r) => r.json::<Value>().await.ok().is_some_and(|v| v["value"]["ready"] == true),
                None => false,
            };
            if ready {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "chromedriver did not get ready on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"debuggerAddress": format!("127.0.0.1:{devtools}")}
        }}});
        let v: Value = http
            .post(format!("{driver}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("new session answer");
        let session =
            v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        Browser { http, driver, session, _driver: driver_proc, _chromium: chromium, _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.driver, self.session);
        let v: Value = self
            .http
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path} answer: {e}"));
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {v}");
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": [] })).await
    }
}

/// What the page shows of cluster `main`, read from its DOM.
const READ_PAGE: &str = r#"
const c = document.querySelector('[data-cluster="main"]');
if (!c) return null;
const text = (sel) => { const e = c.querySelector(sel); return e ? e.textContent.trim() : null; };
return {
  primary: text('[data-field="primary"]'),
  epoch: text('[data-field="epoch"]'),
  nodes: [...c.querySelectorAll('tr[data-node]')].map((r) => [r.dataset.node, r.dataset.role,
      r.closest('[data-region]').dataset.region]),
  workflows: [...c.querySelectorAll('details[data-key], [data-workflow]')].map((d) => d.textContent),
  secrets: [...c.querySelectorAll('[data-secret-region]')].map((e) => [e.dataset.secretRegion, e.dataset.secretRole,
      e.querySelector('dd').textContent, e.closest('[data-region]').dataset.region]),
  events: document.querySelectorAll('#events-body tr[data-seq]').length,
  live: document.getElementById('live').dataset.state,
  marker: window.__pgdrNoReload || null,
  renders: Number(document.body.dataset.renders || 0),
};
"#;

async fn wait_page(browser: &Browser, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v = browser.eval(READ_PAGE).await;
        if ok(&v) {
            return v;
        }
        assert!(t.elapsed() < PAGE_WAIT, "the page did not show {what} within {PAGE_WAIT:?}; it shows {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The controller running in-process; cancelled (and so stopped) on drop.
struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_shows_the_topology_and_a_switchover_live() {
    let sb = SandboxGuard::start_temp(Sandbox::builder(), Path::new(PGDR)).await.expect("sandbox up");
    let old_primary = sb.primary().name.clone();
    let names: Vec<String> = sb.nodes().iter().map(|n| n.name.clone()).collect();
    let target = sb
        .nodes()
        .iter()
        .find(|n| n.region == sb.primary().region && n.name != old_primary)
        .expect("a replica in the primary's region")
        .name
        .clone();

    // The controller, in-process, on the sandbox's config (so the agents
    // renew their lease with it) and its embedded store; no proxies.
    let mut cfg = pgdr_config::Config::load(&sb.config).expect("the sandbox's config");
    cfg.proxies.clear();
    std::fs::create_dir_all(&cfg.controller.state_dir).expect("state dir");
    let store = pgdr_store::EmbeddedStore::open(cfg.controller.state_dir.join("pgdr.redb")).await.expect("store");
    let running = Running { cancel: CancellationToken::new(), tracker: TaskTracker::new() };
    let hooks = Webhooks::start(Vec::new(), &running.tracker, running.cancel.clone());
    let proxies = Arc::new(HttpProxies::from_config(&cfg).expect("proxies"));
    let listen = cfg.controller.listen;
    // The page gets the sandbox's viewer token in its URL fragment.
    let viewer =
        cfg.controller_client_token(pgdr_config::Access::Viewer).expect("viewer token").expect("a viewer token");
    let ctl = Controller::new(cfg, Arc::new(store), proxies, "status-page-test", hooks).await.expect("controller");
    let listener = tokio::net::TcpListener::bind(listen).await.expect("controller port");
    {
        let (ctl, cancel) = (ctl.clone(), running.cancel.clone());
        running.tracker.spawn(async move {
            if let Err(e) = ctl.run(listener, cancel).await {
                eprintln!("controller stopped: {e}");
            }
        });
    }
    let scheme = sb.http_tls().scheme();
    let page = format!("{scheme}://{listen}/#token={}", viewer.expose());

    // `/` and `/status` serve the page, with a policy that lets the browser
    // load nothing from anywhere but the controller.
    let http = sb.http_tls().client(Duration::from_secs(5)).expect("http client");
    // The controller speaks HTTPS only: a plain HTTP request gets no answer.
    let plain = reqwest::Client::builder().no_proxy().build().expect("http client");
    let refused = plain.get(format!("http://{listen}/")).timeout(Duration::from_secs(5)).send().await;
    assert!(refused.is_err(), "plain HTTP to the controller must fail: {refused:?}");
    for path in ["/", "/status"] {
        let r = http.get(format!("{scheme}://{listen}{path}")).send().await.expect("GET the page");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        let csp = r.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "GET {path}: CSP {csp:?}");
        assert_eq!(r.text().await.expect("page body"), pgdr_controller::page::HTML);
    }

    // Its data is not: the snapshot needs a viewer token.
    let r = http.get(format!("{scheme}://{listen}/v1/snapshot")).send().await.expect("GET the snapshot");
    assert_eq!(r.status().as_u16(), 401, "the snapshot without a token");

    // The page renders the sandbox's topology.
    let browser = Browser::start().await;
    browser.goto(&page).await;
    let first = wait_page(&browser, "the sandbox's topology", |v| {
        let nodes = v["nodes"].as_array().map(|a| a.len()).unwrap_or(0);
        v["primary"] == old_primary.as_str()
            && nodes == names.len()
            && v["nodes"].as_array().is_some_and(|a| {
                a.iter().any(|n| n[0] == old_primary.as_str() && n[1] == "primary")
                    && a.iter().filter(|n| n[1] == "replica").count() == names.len() - 1
            })
    })
    .await;
    println!("first render: {first:#}");
    let shown: Vec<&str> = first["nodes"].as_array().expect("nodes").iter().filter_map(|n| n[0].as_str()).collect();
    for n in &names {
        assert!(shown.contains(&n.as_str()), "the page does not list {n}: {shown:?}");
    }
    for n in first["nodes"].as_array().expect("nodes") {
        let rec = sb.node(n[0].as_str().expect("name")).expect("a sandbox node");
        assert_eq!(n[2], rec.region.as_str(), "{} is shown in the wrong region", rec.name);
    }
    assert_eq!(first["live"], "live");
    let epoch_before: u64 = first["epoch"].as_str().and_then(|e| e.parse().ok()).expect("an epoch on the page");

    // Everything the page loaded came from the controller.
    let loaded =
        browser.eval("return [location.origin, performance.getEntriesByType('resource').map((e) => e.name)];").await;
    let origin = loaded[0].as_str().expect("origin").to_owned();
    for r in loaded[1].as_array().expect("resources") {
        let r = r.as_str().unwrap_or_default();
        assert!(r.starts_with(&format!("{origin}/")), "the page loaded {r} from outside the controller ({origin})");
    }

    // Each region shows whether its stored secret logs in now: none is
    // stored before the first rotation; after a rotation through the
    // controller (its stores name the primary, this test starting no
    // proxies), every region's logs in.
    let secrets_shown = |v: &Value, want: &str| {
        v["secrets"].as_array().is_some_and(|a| {
            ["east", "west"].iter().all(|r| {
                a.iter().any(|s| {
                    s[0] == *r && s[1] == "app" && s[3] == *r && s[2].as_str().is_some_and(|t| t.contains(want))
                })
            })
        })
    };
    wait_page(&browser, "no secret stored yet in either region", |v| secrets_shown(v, "none stored yet")).await;
    let rotation = pgdr_controller::rotation::start(&ctl, "main", pgdr_api::controller::RotateRequest::default())
        .await
        .expect("rotation started");
    let rid = rotation.id.expect("a workflow id");
    let t = Instant::now();
    loop {
        let w = ctl.workflow_view(&rid).await.expect("workflow");
        if ["succeeded", "failed", "cancelled"].contains(&w.state.as_str()) {
            assert_eq!(w.state, "succeeded", "rotation: {w:#?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the rotation did not end: {w:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = wait_page(&browser, "every region's stored secret logging in", |v| secrets_shown(v, "logs in")).await;
    println!("after the rotation: {}", shown["secrets"]);
    let snap: Value = http
        .get(format!("{scheme}://{listen}/v1/snapshot"))
        .bearer_auth(viewer.expose())
        .send()
        .await
        .expect("GET the snapshot")
        .json()
        .await
        .expect("snapshot");
    let secrets = snap["clusters"][0]["secrets"].as_array().expect("the snapshot's secrets").clone();
    assert_eq!(secrets.len(), 2, "one entry per region: {secrets:#?}");
    for s in &secrets {
        assert_eq!(
            (s["logs_in"].clone(), s["version"].clone(), s["login"].clone()),
            (json!(true), json!(1), json!("app")),
            "{s:#}"
        );
    }
    let store = sb.dir.join("secret-stores").join("east").join("main.app.json");
    let stored: pgdr_secrets::SecretValue =
        serde_json::from_str(&std::fs::read_to_string(&store).expect("east's store")).expect("a secret");
    assert!(!snap.to_string().contains(&stored.password), "a password in the snapshot");

    // A switchover through the controller; the same document (no reload)
    // must show the new primary.
    browser.eval("window.__pgdrNoReload = 'same document'; return null;").await;
    let started = ctl
        .role_change(
            "main",
            "switchover",
            RoleChangeRequest {
                to: Some(target.clone()),
                requested_by: Some("status page test".into()),
                ..Default::default()
            },
        )
        .await
        .expect("switchover started");
    let id = started.id.expect("a workflow id");
    let t = Instant::now();
    let wf = loop {
        let w = ctl.workflow_view(&id).await.expect("workflow");
        if ["succeeded", "failed", "cancelled"].contains(&w.state.as_str()) {
            break w;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the switchover did not end: {w:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(wf.state, "succeeded", "switchover failed: {wf:#?}");
    println!("switchover {id} took {:?} ms", wf.duration_ms);

    let after = wait_page(&browser, &format!("{target} as the new primary"), |v| {
        v["primary"] == target.as_str()
            && v["nodes"].as_array().is_some_and(|a| a.iter().any(|n| n[0] == target.as_str() && n[1] == "primary"))
            && v["workflows"].as_array().is_some_and(|w| w.iter().any(|t| t.as_str().is_some_and(|t| t.contains(&id))))
    })
    .await;
    println!("after the switchover: {after:#}");
    assert_eq!(after["marker"], "same document", "the page was reloaded");
    assert!(after["renders"].as_u64() > first["renders"].as_u64(), "the page did not redraw");
    let epoch_after: u64 = after["epoch"].as_str().and_then(|e| e.parse().ok()).expect("an epoch on the page");
    assert!(epoch_after > epoch_before, "the page shows epoch {epoch_after}, not raised from {epoch_before}");
    assert!(after["events"].as_u64().is_some_and(|n| n > 0), "no events on the page");

    drop(browser);
    running.cancel.cancel();
    running.tracker.close();
    running.tracker.wait().await;
    drop(sb);
}
