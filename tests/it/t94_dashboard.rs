//! The web dashboard in a real browser: headless Chromium, driven over
//! WebDriver by chromedriver, opens node 1's dashboard, sees the three nodes
//! and every shard, the cluster's requests (served by node 2) in its charts,
//! the hooks, and node 3 as down, missing from the request figures and its
//! shards under-replicated once it is killed. The charts' arithmetic is
//! checked in the same browser against fixtures.
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
    check_cluster_rates(&browser).await;
    check_charts(&browser, &c, &http).await;
    check_hooks(&browser, &c).await;
    screenshot(&browser, "healthy").await;
    assert_eq!(tile(&browser, "under").await, Some(0), "no shard is under-replicated while all nodes run");

    c.kill(3);
    wait()
        .for_element(Locator::Css("#nodes tr[data-node='3'][data-health='down']"))
        .await
        .unwrap_or_else(|e| panic!("node 3 is never shown down ({e}); node 1 log:\n{}", c.log_tail(1)));
    assert_eq!(count(&browser, "#nodes tr[data-node][data-health='up']").await, 2, "nodes 1 and 2 stay up");
    // RF 3 on 3 nodes: every shard has a replica on node 3, and no other
    // node to take it.
    eventually("the under-replicated tile to count every shard", || async {
        (tile(&browser, "under").await? == shards).then_some(())
    })
    .await;
    wait()
        .for_element(Locator::Css("#load-nodes tr[data-node='3'][data-state='missing']"))
        .await
        .expect("node 3 is shown missing from the request figures, not as idle");
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

/// The number on a summary tile (`data-kind`), once it renders.
async fn tile(browser: &Client, kind: &str) -> Option<usize> {
    let css = format!("#summary .tile[data-kind='{kind}'] b");
    browser.find(Locator::Css(&css)).await.ok()?.text().await.ok()?.parse().ok()
}

/// The text of the first element matching `css`.
async fn text_of(browser: &Client, css: &str) -> Option<String> {
    browser.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// A number as the dashboard prints it (`1,234`, `0.5`), if it is one.
fn number(text: &str) -> Option<f64> {
    text.replace(',', "").parse().ok()
}

/// The cluster figures of two polls: node 1 served 100 requests in 2 s, all
/// under 1 ms; node 2 served 300, 30 of them between 10 and 25 ms; node 3
/// did not answer the second poll.
async fn check_cluster_rates(browser: &Client) {
    let js = r#"
        const d = window.ringkvDashboard;
        const bk = (a, b, c) => [["0.001", a], ["0.01", b], ["0.025", c], ["+Inf", c]];
        const node = (id, requests, buckets) => ({ id, ok: true, requests, buckets });
        const summaries = (nodes) => new Map(nodes.map((n) => [n.id, d.loadSummary(n)]));
        const prev = summaries([node(1, 1000, bk(1000, 1000, 1000)), node(2, 500, bk(500, 500, 500)), node(3, 10, bk(10, 10, 10))]);
        const cur = summaries([node(1, 1100, bk(1100, 1100, 1100)), node(2, 800, bk(700, 770, 800)), { id: 3, ok: false, error: "timeout" }]);
        const r = d.clusterRates(prev, cur, 2);
        const alone = d.clusterRates(prev, new Map([[1, cur.get(1)]]), 2);
        return { ops: r.ops, p99: r.p99, nodes: r.nodes, alone: alone.p99 };
    "#;
    let got = browser.execute(js, vec![]).await.expect("run the dashboard's cluster arithmetic");
    assert_eq!(got["ops"].as_f64(), Some(200.0), "50 + 150 ops/s; the missing node adds nothing: {got}");
    let p99 = got["p99"].as_f64().expect("a p99");
    // 400 requests merged: rank 396 falls among node 2's 30 slow ones (370..400).
    assert!((p99 - (0.01 + 0.015 * 26.0 / 30.0)).abs() < 1e-9, "p99 from the merged histograms: {got}");
    assert_eq!(got["nodes"][2], json!({"id": 3, "missing": true, "ops": null, "p99": null}), "{got}");
    assert_eq!(got["nodes"][1]["ops"].as_f64(), Some(150.0), "{got}");
    assert!(got["alone"].as_f64().expect("a p99") <= 0.001, "node 1 alone is fast: {got}");
}

/// The charts draw the cluster's ops/s and p99 while requests flow, and
/// the requests are served by node 2, not by node 1 whose page this is.
async fn check_charts(browser: &Client, c: &ProcCluster, http: &str) {
    let addr = http.to_string();
    let load_status = tokio::task::spawn_blocking(move || http_status(&addr, "/cluster/load")).await.expect("join");
    let wait = || browser.wait().at_most(PATIENCE);
    assert_eq!(load_status, 200, "/cluster/load answers, so the charts have data to draw");
    let client = c.node_client(2);
    let load = tokio::spawn(async move {
        for i in 0u64.. {
            let _ = client.put(format!("k{}", i % 100), "v").await;
        }
    });
    wait().for_element(Locator::Css("#chart-ops polyline")).await.expect("an ops/s line");
    eventually("the ops/s readout and node 2's row to show requests", || async {
        let total = number(&text_of(browser, "#ops-now").await?)?;
        let node2 = number(&text_of(browser, "#load-nodes tr[data-node='2'] td[data-col='ops']").await?)?;
        (total > 0.0 && node2 > 0.0).then_some(())
    })
    .await;
    wait().for_element(Locator::Css("#chart-p99 polyline")).await.expect("a p99 line");
    assert_eq!(count(browser, "#load-nodes tr[data-node][data-state='ok']").await, 3, "every node answered");
    load.abort();
}

/// The hooks table shows each hook's kind and limit hits, and the tile
/// counts only hooks still deployed.
async fn check_hooks(browser: &Client, c: &ProcCluster) {
    use ringkv_client::proto::HookStage;
    use ringkv_tests::hooks::lua_hook;
    let client = c.client();
    let accept = "function validate(key, value, ctx)\n  return true\nend\n";
    client.deploy_hook(lua_hook("kept", HookStage::Validate, "kept/", accept)).await.expect("deploy kept");
    client.deploy_hook(lua_hook("gone", HookStage::Validate, "gone/", accept)).await.expect("deploy gone");
    client.remove_hook("gone").await.expect("remove gone");
    eventually("the table to list both hooks, the removed one as such", || async {
        (count(browser, "#hooks tr[data-hook='kept']:not(.inactive)").await == 1
            && count(browser, "#hooks tr[data-hook='gone'].inactive").await == 1)
            .then_some(())
    })
    .await;
    assert_eq!(tile(browser, "hooks").await, Some(1), "the removed hook is not counted");
    // The table is redrawn every second, so a row read cell by cell can go
    // stale between two reads: read it again until one read is whole.
    let cells = eventually("one whole read of the kept hook's row", || async {
        let mut cells = Vec::new();
        for cell in browser.find_all(Locator::Css("#hooks tr[data-hook='kept'] td")).await.ok()? {
            cells.push((cell.attr("data-col").await.ok()?, cell.text().await.ok()?));
        }
        (!cells.is_empty()).then_some(cells)
    })
    .await;
    assert_eq!(cells.get(2).map(|(_, text)| text.as_str()), Some("Lua"), "the kind column: {cells:?}");
    let limit_hits = cells.iter().find(|(col, _)| col.as_deref() == Some("limit-hits"));
    assert_eq!(limit_hits.map(|(_, text)| text.as_str()), Some("0"), "a limit-hits column: {cells:?}");
}
