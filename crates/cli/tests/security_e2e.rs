//! Security end to end, on a fresh `pgdr sandbox up` with `pgdr run`:
//!
//! - every route of the controller, of every agent (peer routes included)
//!   and of every proxy's admin API, walked from the route tables the
//!   routers are built from, answers 401 without a token or with a wrong
//!   one and 403 with a token of the wrong role, and none of those requests
//!   changes anything (same epoch and primary, no workflow, proxies not
//!   paused, no support withdrawn);
//! - none of the sandbox's secrets (the PostgreSQL password, every token,
//!   the passwords a rotation through the controller's workflow stored,
//!   the backup key) shows in a log file, an event, a workflow's journal or
//!   a process's command line;
//! - the sandbox writes no `trust` line in pg_hba.conf, and its secrets,
//!   sockets and logs are private to their owner;
//! - its proxies refuse clients that do not start TLS (`require_tls`);
//! - its servers take TCP logins (replication too) only over TLS: none of
//!   pgdr's own connections was refused for lack of it, a plain client is
//!   refused with "no encryption", a `verify-full` one gets in.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdr_config::{Access, Config, Redacted};
use pgdr_sandbox::{Sandbox, SandboxGuard};

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// `pgdr run`, killed and reaped on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn concrete(path: &str) -> String {
    path.replace("{name}", "main")
        .replace("{cluster}", "main")
        .replace("{kind}", "failover")
        .replace("{id}", "wf-none")
        .replace("{action}", "promote")
}

/// The body every POST gets: it would act if it got through.
fn body() -> serde_json::Value {
    serde_json::json!({
        "allow_data_loss": true, "to": "west-1", "epoch": 99, "node": "east-1",
        "cluster": "main", "primary": "east-1", "host": "127.0.0.1", "port": 1, "timeout_ms": 100,
        "mode": "immediate"
    })
}

async fn status_of(http: &reqwest::Client, method: &reqwest::Method, url: &str, auth: Option<&str>) -> u16 {
    let mut req = http.request(method.clone(), url).json(&body());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}")).status().as_u16()
}

fn token(cfg: &Config, role: Access) -> Redacted {
    let t = cfg.controller.tokens.iter().find(|t| t.role == role).expect("a token of each role");
    cfg.secret(&t.key, &t.secret).expect("readable")
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_answers_without_the_right_token_and_no_secret_shows() {
    let sb = SandboxGuard::start_temp(Sandbox::builder(), Path::new(PGDR)).await.expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("the sandbox's config");
    let log = std::fs::File::create(sb.dir.join("logs").join("run.log")).expect("run log");
    let run = Run(Command::new(PGDR)
        .arg("run")
        .arg("--config")
        .arg(&sb.config)
        .current_dir(&sb.dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("pgdr run"));
    let operator = token(&cfg, Access::Operator);
    let api = pgdr_api::controller::ControllerClient::new_with(
        &cfg.controller.listen.to_string(),
        Some(operator.clone()),
        sb.http_tls(),
    )
    .expect("client")
    .with_timeout(Duration::from_secs(5));
    let t = Instant::now();
    let before = loop {
        if let Ok(c) = api.cluster("main").await
            && c.primary.is_some()
            && c.epoch.0 > 0
        {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the controller did not record the cluster");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let workflows_before = api.workflows().await.expect("workflows").len();
    // The sandbox's client: its CA, and the client certificate agents ask for.
    let tls = sb.http_tls();
    let scheme = tls.scheme();
    let http = tls.client(Duration::from_secs(10)).expect("http");
    let wrong = ["Bearer wrong", "Bearer ", "Basic b3A6b3A="];

    // The controller: 401 without or with a wrong token, 403 with a role that does not allow it.
    let mut refused = 0;
    for r in pgdr_controller::api::ROUTES {
        let pgdr_controller::api::Need::Role(need) = r.need else { continue };
        let url = format!("{scheme}://{}{}", cfg.controller.listen, concrete(r.path));
        assert_eq!(status_of(&http, &r.method, &url, None).await, 401, "{r:?} without a token");
        for w in wrong {
            assert_eq!(status_of(&http, &r.method, &url, Some(w)).await, 401, "{r:?} with {w:?}");
        }
        for role in Access::ALL.into_iter().filter(|role| !role.grants(need)) {
            let auth = format!("Bearer {}", token(&cfg, role).expose());
            assert_eq!(status_of(&http, &r.method, &url, Some(&auth)).await, 403, "{r:?} with the {role} token");
        }
        refused += 1;
    }
    // Every agent, peer routes included: the controller's tokens are no agent token.
    for n in sb.nodes() {
        for r in pgdr_node::agent::ROUTES.iter().filter(|r| r.need == pgdr_node::agent::Need::Token) {
            let url = format!("{scheme}://{}{}", n.agent, concrete(r.path));
            assert_eq!(status_of(&http, &r.method, &url, None).await, 401, "{} {r:?}", n.name);
            for w in wrong {
                assert_eq!(status_of(&http, &r.method, &url, Some(w)).await, 401, "{} {r:?} with {w:?}", n.name);
            }
            let auth = format!("Bearer {}", operator.expose());
            assert_eq!(
                status_of(&http, &r.method, &url, Some(&auth)).await,
                401,
                "{} {r:?} with a controller token",
                n.name
            );
            refused += 1;
        }
    }
    // Every proxy's admin API.
    for p in &cfg.proxies {
        let Some(a) = p.api else { continue };
        for r in pgdr_proxy::api::ROUTES {
            let url = format!("{scheme}://{a}{}", concrete(r.path));
            assert_eq!(status_of(&http, &r.method, &url, None).await, 401, "{} {r:?}", p.name);
            let auth = format!("Bearer {}", operator.expose());
            assert_eq!(
                status_of(&http, &r.method, &url, Some(&auth)).await,
                401,
                "{} {r:?} with a controller token",
                p.name
            );
            refused += 1;
        }
    }
    eprintln!("{refused} routes refused every wrong credential");

    // The proxies' client side speaks TLS with the sandbox's certificate:
    // a client verifying it against the CA (verify-full) gets in; the
    // proxy's own connection to PostgreSQL is TLS too.
    let ca = &cfg.tls.as_ref().expect("the sandbox turns TLS on").ca;
    for p in &cfg.proxies {
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres password='{}'{}",
            p.writer.ip(),
            p.writer.port(),
            sb.password(),
            pgdr_tls::pg::libpq_params(ca)
        );
        let client = pgdr_drill::observer::connect(&conninfo, &p.name, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{}: TLS: {e}", p.name));
        let rows = client
            .simple_query("select ssl::text from pg_stat_ssl where pid = pg_backend_pid()")
            .await
            .unwrap_or_else(|e| panic!("{}: over TLS: {e}", p.name));
        let ssl = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(ssl.as_deref(), Some("true"), "{}: the proxy reaches PostgreSQL without TLS", p.name);
        // require_tls: a client that does not start TLS is refused, told
        // why, before it is asked for a password.
        assert!(p.require_tls, "{}: the sandbox's proxy takes clients without TLS", p.name);
        let plain = format!(
            "host={} port={} user=postgres dbname=postgres password='{}' sslmode=disable",
            p.writer.ip(),
            p.writer.port(),
            sb.password()
        );
        let refused = pgdr_drill::observer::connect(&plain, &p.name, Duration::from_secs(10))
            .await
            .err()
            .unwrap_or_else(|| panic!("{}: a client without TLS was let in", p.name));
        let refused = format!("{refused:?}");
        assert!(refused.contains("accepts only TLS connections"), "{}: {refused}", p.name);
    }

    // Nothing changed.
    let after = api.cluster("main").await.expect("cluster");
    assert_eq!((after.epoch, after.primary.clone()), (before.epoch, before.primary.clone()));
    assert_eq!(
        api.workflows().await.expect("workflows").len(),
        workflows_before,
        "a refused request started a workflow"
    );
    for n in sb.nodes() {
        let s = sb.agent(&n.name).expect("agent").status().await.expect("status");
        assert!(!s.fenced, "{} was fenced by a refused request", n.name);
    }
    // The controller itself may hold a writer endpoint for a moment (a
    // probe hold) and resumes it; a pause that came through a refused request
    // has no resume (that is refused too) and would last `max_pause` (30 s).
    for p in &cfg.proxies {
        let Some(a) = p.api else { continue };
        let t = cfg.proxy_api_token(p).expect("token").expect("a proxy token");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v: serde_json::Value = http
                .get(format!("{scheme}://{a}/v1/status"))
                .bearer_auth(t.expose())
                .send()
                .await
                .expect("proxy status")
                .json()
                .await
                .expect("json");
            if v["clusters"][0]["paused"] == false {
                break;
            }
            assert!(Instant::now() < deadline, "{}: a refused request paused it: {v}", p.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A rotation of the managed role through the controller's workflow:
    // its journal, events and logs are searched below, for the passwords
    // it stored as well.
    let rotated = Command::new(PGDR)
        .arg("--config")
        .arg(&sb.config)
        .args(["secrets", "rotate", "--cluster", "main", "--json"])
        .output()
        .expect("pgdr secrets rotate");
    let rotate_output =
        format!("{}{}", String::from_utf8_lossy(&rotated.stdout), String::from_utf8_lossy(&rotated.stderr));
    assert!(rotated.status.success(), "rotate: {rotate_output}");
    // No secret anywhere it could be read: logs, events, journals, command lines.
    let mut secrets: Vec<(String, String)> = std::fs::read_dir(sb.dir.join("secrets"))
        .expect("secrets")
        .filter_map(|e| e.ok())
        .map(|e| {
            let v = std::fs::read_to_string(e.path()).expect("secret").trim().to_owned();
            (e.file_name().to_string_lossy().into_owned(), v)
        })
        .collect();
    assert!(secrets.len() >= 6, "{secrets:?}");
    for region in ["east", "west"] {
        let path = sb.dir.join("secret-stores").join(region).join("main.app.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("stored secret")).expect("json");
        let password = v["password"].as_str().expect("password").to_owned();
        assert!(password.len() >= 32);
        secrets.push((format!("the rotated password in {region}'s store"), password));
    }
    let mut haystacks: Vec<(String, String)> = vec![("pgdr secrets rotate's output".into(), rotate_output)];
    for e in std::fs::read_dir(sb.dir.join("logs")).expect("logs").filter_map(|e| e.ok()) {
        haystacks.push((e.path().display().to_string(), std::fs::read_to_string(e.path()).unwrap_or_default()));
    }
    for n in sb.nodes() {
        let pg_log = n.data_dir.with_file_name("data.log");
        haystacks.push((pg_log.display().to_string(), std::fs::read_to_string(&pg_log).unwrap_or_default()));
    }
    let events = api.events(None).await.expect("events");
    haystacks.push(("GET /v1/events".into(), serde_json::to_string(&events).expect("json")));
    for w in api.workflows().await.expect("workflows") {
        let v = api.workflow(&w.id).await.expect("workflow");
        haystacks.push((format!("GET /v1/workflows/{}", w.id), serde_json::to_string(&v).expect("json")));
    }
    let mut pids: Vec<i32> = vec![run.0.id() as i32];
    pids.extend(sb.nodes().iter().filter_map(|n| n.agent_pid));
    pids.extend(sb.nodes().iter().filter_map(|n| n.postmaster_pid));
    for e in std::fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid.is_some_and(|p: i32| pids.contains(&p)) {
            pids.push(pid);
        }
    }
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        haystacks.push((format!("/proc/{pid}/cmdline"), String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    for (where_, text) in &haystacks {
        for (name, value) in &secrets {
            assert!(!text.contains(value.as_str()), "the secret {name} shows in {where_}");
        }
    }
    eprintln!("{} places searched for {} secrets", haystacks.len(), secrets.len());

    // Private files, no `trust`.
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    for e in std::fs::read_dir(sb.dir.join("secrets")).expect("secrets").filter_map(|e| e.ok()) {
        assert_eq!(mode(&e.path()) & 0o077, 0, "{} is readable by others", e.path().display());
    }
    assert_eq!(mode(&sb.dir.join("logs")) & 0o077, 0, "logs/ is open to others");
    for n in sb.nodes() {
        let hba = std::fs::read_to_string(n.data_dir.join("pg_hba.conf")).expect("pg_hba.conf");
        let trust: Vec<&str> = hba
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.split_whitespace().any(|w| w == "trust"))
            .collect();
        assert!(trust.is_empty(), "{}: trust in pg_hba.conf: {trust:?}", n.name);
        let sockets = n.data_dir.with_file_name("data.run");
        assert_eq!(mode(&sockets) & 0o077, 0, "{} is open to others", sockets.display());
    }

    // TCP logins only over TLS (`hostssl`, `hostnossl ... reject`): none of
    // pgdr's own connections, made all along this test, was refused for
    // lack of TLS; a plain client is refused and says why, a verify-full
    // one gets in; the same for replication connections.
    for n in sb.nodes() {
        let pg_log = std::fs::read_to_string(n.data_dir.with_file_name("data.log")).unwrap_or_default();
        let plain: Vec<&str> = pg_log.lines().filter(|l| l.contains("no encryption")).collect();
        assert!(plain.is_empty(), "{}: something of pgdr logged in without TLS: {plain:?}", n.name);
    }
    for n in sb.nodes() {
        let base = format!(
            "host={} port={} user=postgres dbname=postgres password='{}' connect_timeout=5",
            n.host,
            n.port,
            sb.password()
        );
        let refused =
            pgdr_drill::observer::connect(&format!("{base} sslmode=disable"), &n.name, Duration::from_secs(10))
                .await
                .err()
                .unwrap_or_else(|| panic!("{}: a login without TLS was let in", n.name));
        // The server's message is in the error's source.
        let refused = format!("{refused:?}");
        assert!(refused.contains("no encryption"), "{}: {refused}", n.name);
        let client =
            pgdr_drill::observer::connect(&format!("{base}{}", sb.tls_params()), &n.name, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{}: verify-full: {e}", n.name));
        client.simple_query("select 1").await.unwrap_or_else(|e| panic!("{}: over TLS: {e}", n.name));
        let ca = &cfg.tls.as_ref().expect("tls").ca;
        for (sslmode, ok) in [("disable", false), ("verify-full", true)] {
            let out = Command::new("psql")
                .arg("-X")
                .arg("-d")
                .arg(format!(
                    "host={} port={} user=postgres dbname=postgres replication=true connect_timeout=5 sslmode={sslmode} sslrootcert={}",
                    n.host,
                    n.port,
                    ca.display()
                ))
                .args(["-c", "IDENTIFY_SYSTEM"])
                .env("PGPASSWORD", sb.password())
                .output()
                .expect("psql");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), ok, "{}: replication with sslmode={sslmode}: {err}", n.name);
            if !ok {
                assert!(err.contains("no encryption"), "{}: {err}", n.name);
            }
        }
    }
    drop(run);
    drop(sb);
}
