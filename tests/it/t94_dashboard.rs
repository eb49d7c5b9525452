//! The web dashboard in a real browser: headless Chromium, driven over
//! WebDriver by chromedriver, opens node 1's dashboard, sees the three nodes
//! and every shard, and shows node 3 as down once it is killed. The charts'
//! Prometheus parsing is checked in the same browser against a fixture.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`);
//! `./test.sh` installs them. Set `RINGKV_DASHBOARD_SCREENSHOT=/tmp/dash` to
//! keep `/tmp/dash-healthy.png` and `/tmp/dash-node3-down.png`.

use std::io::{Read, Write};

use fantoccini::{Client, Locator};
use ringkv_tests::browser::{count, ChromeDriver};
use ringkv_tests::{eventually, ProcCluster, PATIENCE};
use serde_json::{json, Value};

/// The status code of `GET path` on `addr`, over a bare HTTP/1.0 exchange.
fn http_status(addr: &str, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP port");
    s.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("an HTTP status line")
}

async fn screenshot(browser: &Client, name: &str) {
    if let Some(prefix) = std::env::var_os("RINGKV_DASHBOARD_SCREENSHOT") {
        let path = format!("{}-{name}.png", prefix.to_string_lossy());
        std::fs::write(&path, browser.screenshot().await.expect("screenshot")).expect("write screenshot");
        eprintln!("dashboard screenshot: {path}");
    }
}

#[tokio::test]
async fn dashboard_shows_nodes_shards_and_a_killed_node_as_down() {
    // 3 s is the shortest down timeout serve accepts with the default election timeout.
    let mut c = ProcCluster::start(3, &["--down-timeout", "3s"]).await;
    let shards = c.node_client(1).status().await.expect("status").shards.len();
    assert_eq!(shards, 16, "the harness starts 16 shards");
    let http = c.nodes[&1].http.clone();

    let driver = ChromeDriver::start();
    let browser = driver.session(&["--window-size=1280,1500"]).await;
    browser.goto(&format!("http://{http}/")).await.expect("open the dashboard");

    let wait = || browser.wait().at_most(PATIENCE);
    wait().for_element(Locator::Css("#nodes tr[data-node]")).await.expect("the node table renders");
    eventually("the dashboard to list 3 nodes, all up", || async {
        (count(&browser, "#nodes tr[data-node][data-health='up']").await == 3).then_some(())
    })
    .await;
    eventually(&format!("the ring to show {shards} shards"), || async {
        (count(&browser, "#ring .shard[data-shard]").await == shards).then_some(())
    })
    .await;
    eventually("every shard to show its leader among 3 replicas", || async {
        (count(&browser, "#ring .shard .rep.leader").await == shards
            && count(&browser, "#ring .shard .rep").await == shards * 3)
            .then_some(())
    })
    .await;
    assert_eq!(
        browser.find(Locator::Id("partitioner")).await.expect("partitioner").text().await.ok().as_deref(),
        Some("none (whole key)")
    );

    check_metrics_parsing(&browser).await;
    check_charts(&browser, &c, &http).await;
    screenshot(&browser, "healthy").await;

    c.kill(3);
    wait()
        .for_element(Locator::Css("#nodes tr[data-node='3'][data-health='down']"))
        .await
        .unwrap_or_else(|e| panic!("node 3 is never shown down ({e}); node 1 log:\n{}", c.log_tail(1)));
    assert_eq!(count(&browser, "#nodes tr[data-node][data-health='up']").await, 2, "nodes 1 and 2 stay up");
    screenshot(&browser, "node3-down").await;

    browser.close().await.expect("end the browser session");
}

/// The pure functions behind the charts, on a fixture in the Prometheus text
/// format: two scrapes 2 s apart, 200 requests in between, 190 of them under
/// 5 ms and the other 10 between 5 and 10 ms.
async fn check_metrics_parsing(browser: &Client) {
    let prev = r#"# HELP ringkv_requests_total Client requests.
# TYPE ringkv_requests_total counter
ringkv_requests_total{rpc="Put",consistency="",code="OK"} 100
ringkv_requests_total{rpc="Get",consistency="linearizable",code="OK"} 50
# TYPE ringkv_request_duration_seconds histogram
ringkv_request_duration_seconds_bucket{rpc="Put",consistency="",le="0.001"} 40
ringkv_request_duration_seconds_bucket{rpc="Put",consistency="",le="0.005"} 90
ringkv_request_duration_seconds_bucket{rpc="Put",consistency="",le="0.01"} 100
ringkv_request_duration_seconds_bucket{rpc="Put",consistency="",le="+Inf"} 100
ringkv_request_duration_seconds_sum{rpc="Put",consistency=""} 0.3
ringkv_request_duration_seconds_count{rpc="Put",consistency=""} 100
ringkv_request_duration_seconds_bucket{rpc="Get",consistency="linearizable",le="0.001"} 20
ringkv_request_duration_seconds_bucket{rpc="Get",consistency="linearizable",le="0.005"} 45
ringkv_request_duration_seconds_bucket{rpc="Get",consistency="linearizable",le="0.01"} 50
ringkv_request_duration_seconds_bucket{rpc="Get",consistency="linearizable",le="+Inf"} 50
"#;
    let cur = prev
        .replace("\"OK\"} 100", "\"OK\"} 250")
        .replace("\"OK\"} 50", "\"OK\"} 100")
        .replace("le=\"0.001\"} 40", "le=\"0.001\"} 100")
        .replace("le=\"0.005\"} 90", "le=\"0.005\"} 230")
        .replace("le=\"0.01\"} 100", "le=\"0.01\"} 250")
        .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 250")
        .replace("le=\"0.001\"} 20", "le=\"0.001\"} 60")
        .replace("le=\"0.005\"} 45", "le=\"0.005\"} 95")
        .replace("le=\"0.01\"} 50", "le=\"0.01\"} 100")
        .replace("le=\"+Inf\"} 50", "le=\"+Inf\"} 100");
    let js = r#"
        const d = window.ringkvDashboard;
        const [prev, cur] = [d.summarize(d.parseMetrics(arguments[0])), d.summarize(d.parseMetrics(arguments[1]))];
        return {
            forward: d.rates(prev, cur, 2),
            restarted: d.rates(cur, prev, 2),
            escaped: d.parseMetrics('x{a="q\\"u,o}te",b="\\\\"} 7 1700000000'),
            overflow: d.quantile(0.99, [[0.1, 0], [1, 5], [Infinity, 100]]),
            none: d.quantile(0.99, [[0.1, 0], [Infinity, 0]]),
        };
    "#;
    let got = browser.execute(js, vec![json!(prev), json!(cur)]).await.expect("run the dashboard's parser");
    assert_eq!(got["forward"]["ops"].as_f64(), Some(100.0), "{got}");
    let p99 = got["forward"]["p99"].as_f64().expect("a p99");
    assert!((p99 - 0.009).abs() < 1e-9, "p99 interpolated inside the 5-10 ms bucket: {got}");
    assert_eq!(got["restarted"], json!({"ops": null, "p99": null}), "counters going back mean a restart: {got}");
    assert_eq!(got["escaped"], json!([{"name": "x", "labels": {"a": "q\"u,o}te", "b": "\\"}, "value": 7}]));
    assert_eq!(got["overflow"].as_f64(), Some(1.0), "beyond the last bound: that bound");
    assert_eq!(got["none"], Value::Null);
}

/// The node serves `/metrics`, and the charts draw ops/s and p99 while
/// requests flow.
async fn check_charts(browser: &Client, c: &ProcCluster, http: &str) {
    let addr = http.to_string();
    let metrics = tokio::task::spawn_blocking(move || http_status(&addr, "/metrics")).await.expect("join");
    let wait = || browser.wait().at_most(PATIENCE);
    assert_eq!(metrics, 200, "/metrics answers, so the charts have data to draw");
    let client = c.node_client(1);
    let load = tokio::spawn(async move {
        for i in 0u64.. {
            let _ = client.put(format!("k{}", i % 100), "v").await;
        }
    });
    wait().for_element(Locator::Css("#chart-ops polyline")).await.expect("an ops/s line");
    eventually("the ops/s readout to show requests", || async {
        let text = browser.find(Locator::Id("ops-now")).await.ok()?.text().await.ok()?;
        (text.replace(',', "").parse::<f64>().ok()? > 0.0).then_some(())
    })
    .await;
    wait().for_element(Locator::Css("#chart-p99 polyline")).await.expect("a p99 line");
    load.abort();
}
