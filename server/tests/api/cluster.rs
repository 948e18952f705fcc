//! Two server instances behind one port: a real HAProxy (Debian package, installed by
//! `scripts/setup.sh`) balancing round robin over them, as `make cluster` runs it.

use crate::helpers::{ADMIN, TestApp, eventually, spawn_app};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use std::time::Duration;

/// HAProxy in front of `backends`, killed when dropped.
struct Balancer {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`
    address: String,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// Starts HAProxy round robin over `backends` (base URLs) and waits until it answers.
async fn balance(app: &TestApp, backends: &[&str]) -> Balancer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let host = url.trim_start_matches("http://");
            format!("    server s{i} {host} check inter 500ms\n")
        })
        .collect();
    let config = format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
         frontend shop\n    bind 127.0.0.1:{port}\n    option forwardfor\n    default_backend instances\n\
         backend instances\n    balance roundrobin\n    option httpchk GET /readyz\n{servers}"
    );
    std::fs::create_dir_all(&app.scratch).expect("scratch");
    let path = app.scratch.join("haproxy.cfg");
    std::fs::write(&path, config).expect("haproxy.cfg");
    let child = std::process::Command::new(haproxy_binary())
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("haproxy runs (scripts/setup.sh installs it)");
    let balancer = Balancer {
        child,
        address: format!("http://127.0.0.1:{port}"),
    };
    // Both instances pass their health check and take requests before the test starts.
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(20),
        "HAProxy forwards to both instances",
        || async {
            for _ in 0..4 {
                let _ = client
                    .get(format!("{}/api/products?limit=1", balancer.address))
                    .send()
                    .await;
            }
            let mut counts = Vec::new();
            for base in backends {
                counts.push(served(app, base, "GET /api/products").await);
            }
            if counts.iter().all(|&n| n > 0) {
                Ok(())
            } else {
                Err(format!("requests per instance: {counts:?}"))
            }
        },
    )
    .await;
    balancer
}

/// Requests instance `base` served on `route`, from its own metrics.
async fn served(app: &TestApp, base: &str, route: &str) -> u64 {
    let m: Value = app
        .client
        .get(format!("{base}/api/ml-metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    m["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == route)
        .and_then(|r| r["requests"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn two_instances_behind_one_port_share_dashboard_sessions_and_cache_invalidation() {
    let app = spawn_app().await;
    let peer = app.spawn_peer().await;
    let lb = balance(&app, &[&app.address, &peer]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Signed in through the balancer, on whichever instance; every poll then works, wherever
    // round robin sends it.
    let login = client
        .post(format!("{}/dashboard/login", lb.address))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("request");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    let before = [
        served(&app, &app.address, "GET /api/ml-metrics").await,
        served(&app, &peer, "GET /api/ml-metrics").await,
    ];
    for _ in 0..6 {
        let poll = client
            .get(format!("{}/api/ml-metrics", lb.address))
            .header(COOKIE, &cookie)
            .send()
            .await
            .expect("request");
        assert_eq!(
            poll.status(),
            StatusCode::OK,
            "the session holds on every instance"
        );
    }
    let after = [
        served(&app, &app.address, "GET /api/ml-metrics").await,
        served(&app, &peer, "GET /api/ml-metrics").await,
    ];
    // Beyond the one direct request that counted `before` on each.
    assert!(
        after[0] > before[0] + 1 && after[1] > before[1] + 1,
        "both instances answered: {before:?} -> {after:?}"
    );

    // Both instances cache the product; a change made through the balancer lands on one, and
    // the other drops its copy when PostgreSQL's NOTIFY reaches it.
    let id = app.product_id("Wireless Mouse").await;
    let detail = format!("{}/api/products/{id}", lb.address);
    for _ in 0..4 {
        assert_eq!(
            client.get(&detail).send().await.expect("request").status(),
            StatusCode::OK
        );
    }
    let renamed = client
        .patch(&detail)
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Balanced Mouse"}))
        .send()
        .await
        .expect("request");
    assert_eq!(renamed.status(), StatusCode::OK);
    eventually(
        Duration::from_millis(1500),
        "both instances serve the new name",
        || async {
            let mut names = Vec::new();
            for _ in 0..4 {
                let body: Value = client
                    .get(&detail)
                    .send()
                    .await
                    .expect("request")
                    .json()
                    .await
                    .expect("json");
                names.push(body["name"].as_str().unwrap_or("").to_owned());
            }
            if names.iter().all(|n| n == "Balanced Mouse") {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    )
    .await;
}
