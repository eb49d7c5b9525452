//! deploy/k8s, read as YAML and checked for the structure a working cluster
//! needs: a StatefulSet whose serviceName is a headless Service that
//! publishes not-ready pods, probes on /readyz and /healthz over the HTTP
//! port, a volume claim template mounted at the data directory, and args and
//! RINGKV_* variables that the real `ringkv serve` accepts, with pod 0
//! finding itself in the seed list (so it, and only it, bootstraps).
//!
//! No Kubernetes runs here, so the last test plays the StatefulSet's pods
//! with `docker run`: the image from scripts/build-image.sh, each pod's host
//! name and DNS name, and the manifest's own args and environment. Its
//! containers, network and image tag are its own, so it can share the Docker
//! engine with t92_container.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use clap::{CommandFactory, Parser};
use ringkv::cli::{Cli, Command};
use ringkv_client::Client;
use ringkv_tests::container::{build_image, describe};
use ringkv_tests::{eventually, settled};
use serde_norway::Value;

/// Every document of every YAML file in deploy/k8s, by kind and name.
fn manifests() -> BTreeMap<(String, String), Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let mut docs = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            let kind = str_at(&value, &["kind"]).to_string();
            // A Kustomization has no name; everything Kubernetes applies does.
            let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default();
            let name = name.to_string();
            assert!(!name.is_empty() || kind == "Kustomization", "{}: a {kind} without a name", path.display());
            assert!(docs.insert((kind.clone(), name.clone()), value).is_none(), "{kind} {name} defined twice");
        }
    }
    docs
}

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| v.get(key).unwrap_or_else(|| panic!("no {key:?} on the way to {path:?}")))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn seq_at<'a>(value: &'a Value, path: &[&str]) -> &'a Vec<Value> {
    at(value, path).as_sequence().unwrap_or_else(|| panic!("{path:?} is not a list"))
}

/// The entry of a list of `name:` maps (containers, ports, env, ...) called `name`.
fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(name)).unwrap_or_else(|| panic!("no {name:?}"))
}

fn strings(list: &[Value]) -> Vec<String> {
    list.iter().map(|v| v.as_str().expect("a string").to_string()).collect()
}

/// Expands Kubernetes' `$(VAR)` references the way the kubelet does for one pod.
fn expand(text: &str, vars: &BTreeMap<&str, String>) -> String {
    vars.iter().fold(text.to_string(), |t, (k, v)| t.replace(&format!("$({k})"), v))
}

#[test]
fn the_statefulset_runs_ringkv_behind_a_headless_service() {
    let docs = manifests();
    let sts = docs
        .iter()
        .find_map(|((kind, _), v)| (kind == "StatefulSet").then_some(v))
        .expect("a StatefulSet in deploy/k8s");
    let service_name = str_at(sts, &["spec", "serviceName"]);
    let service = &docs[&("Service".to_string(), service_name.to_string())];
    assert_eq!(str_at(service, &["spec", "clusterIP"]), "None", "serviceName must name a headless Service");
    assert_eq!(
        at(service, &["spec", "publishNotReadyAddresses"]).as_bool(),
        Some(true),
        "peers must resolve each other before they are ready"
    );
    assert_eq!(
        at(service, &["spec", "selector"]),
        at(sts, &["spec", "template", "metadata", "labels"]),
        "the Service selects the StatefulSet's pods"
    );
    assert_eq!(at(sts, &["spec", "selector", "matchLabels"]), at(sts, &["spec", "template", "metadata", "labels"]));
    assert_eq!(
        str_at(sts, &["spec", "podManagementPolicy"]),
        "Parallel",
        "a restarted cluster needs a quorum up before any pod is ready"
    );
    let replicas = at(sts, &["spec", "replicas"]).as_u64().expect("replicas");
    assert!(replicas >= 3, "three replicas per shard need three nodes");

    let containers = seq_at(sts, &["spec", "template", "spec", "containers"]);
    let ringkv = named(containers, "ringkv");
    let ports = seq_at(ringkv, &["ports"]);
    let grpc_port = at(named(ports, "grpc"), &["containerPort"]).as_u64().expect("grpc port");
    let http_port = at(named(ports, "http"), &["containerPort"]).as_u64().expect("http port");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(str_at(ringkv, &[probe, "httpGet", "path"]), path, "{probe}");
        assert_eq!(str_at(ringkv, &[probe, "httpGet", "port"]), "http", "{probe} uses the --http port");
    }
    for resource in ["cpu", "memory"] {
        at(ringkv, &["resources", "requests", resource]);
    }
    at(ringkv, &["resources", "limits", "memory"]);

    let claims = seq_at(sts, &["spec", "volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1);
    let claim = str_at(&claims[0], &["metadata", "name"]);
    at(&claims[0], &["spec", "resources", "requests", "storage"]);
    let mount = named(seq_at(ringkv, &["volumeMounts"]), claim);
    let data_mount = str_at(mount, &["mountPath"]);

    // The args are a real `ringkv serve` command line, consistent with the
    // ports and the volume above.
    let args = strings(seq_at(ringkv, &["args"]));
    let cli = Cli::try_parse_from(std::iter::once("ringkv".to_string()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("the StatefulSet's args {args:?} are not a valid ringkv command line: {e}"));
    let Command::Serve(serve) = cli.command else { panic!("the StatefulSet does not run `ringkv serve`: {args:?}") };
    assert!(serve.id_from_hostname, "pods share one template: the id must come from the pod name");
    assert_eq!(serve.listen.as_deref(), Some(format!("0.0.0.0:{grpc_port}").as_str()));
    assert_eq!(serve.http.as_deref(), Some(format!("0.0.0.0:{http_port}").as_str()));
    assert_eq!(serve.data_dir.as_deref(), Some(Path::new(data_mount)));

    // Every RINGKV_* variable is one `serve` reads; the advertised address
    // and the seed use the headless Service's pod names and the gRPC port.
    let serve_command = Cli::command();
    let serve_command = serve_command.find_subcommand("serve").expect("serve subcommand");
    let known: Vec<String> =
        serve_command.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    let env = seq_at(ringkv, &["env"]);
    for var in env {
        let name = str_at(var, &["name"]);
        if name.starts_with("RINGKV_") {
            assert!(known.iter().any(|k| k == name), "{name} is not a `ringkv serve` variable (known: {known:?})");
        }
    }
    for from_field in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        assert_eq!(str_at(named(env, from_field.0), &["valueFrom", "fieldRef", "fieldPath"]), from_field.1);
    }
    let sts_name = str_at(sts, &["metadata", "name"]);
    let pod_env = |ordinal: u64, name: &str| {
        let vars = BTreeMap::from([("POD_NAME", format!("{sts_name}-{ordinal}")), ("POD_NAMESPACE", "db".into())]);
        expand(str_at(named(env, name), &["value"]), &vars)
    };
    let seeds: Vec<String> = pod_env(0, "RINGKV_JOIN").split(',').map(str::to_string).collect();
    for ordinal in 0..replicas {
        let advertise = pod_env(ordinal, "RINGKV_ADVERTISE");
        assert_eq!(advertise, format!("{sts_name}-{ordinal}.{service_name}.db.svc:{grpc_port}"));
        assert_eq!(pod_env(ordinal, "RINGKV_JOIN"), seeds.join(","), "every pod gets the same seeds");
        assert!(seeds.contains(&advertise), "every pod is a seed, so a pod that lost its volume is refused");
    }
    assert_eq!(seeds[0], pod_env(0, "RINGKV_ADVERTISE"), "pod 0, first seed, creates the cluster");
    assert_eq!(pod_env(0, "RINGKV_MIN_REPLICAS"), "3", "no write is acknowledged by one pod alone");
}

#[test]
fn every_manifest_is_a_known_kind_and_the_kustomization_lists_them_all() {
    let docs = manifests();
    for (kind, name) in docs.keys() {
        assert!(
            ["Service", "StatefulSet", "PodDisruptionBudget", "Kustomization"].contains(&kind.as_str()),
            "unexpected {kind} {name}"
        );
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization.yaml");
    let kustomization: Value = serde_norway::from_str(&text).expect("kustomization.yaml is YAML");
    let mut listed = strings(seq_at(&kustomization, &["resources"]));
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
    let pdb = &docs[&("PodDisruptionBudget".to_string(), "ringkv".to_string())];
    assert_eq!(at(pdb, &["spec", "maxUnavailable"]).as_u64(), Some(1), "one pod down at a time keeps a quorum");
}

const IMAGE: &str = "ringkv:t93-test";

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().expect("run docker");
    assert!(out.status.success(), "docker {args:?} failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers playing the StatefulSet's pods on one Docker network; dropping
/// it removes them, their anonymous data volumes and the network, printing
/// their logs first when the test is failing.
struct Pods {
    network: String,
    containers: Vec<String>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                if let Ok(out) = std::process::Command::new("docker").args(["logs", "--tail", "40", c]).output() {
                    eprintln!("--- logs of {c}\n{}", String::from_utf8_lossy(&out.stderr));
                }
            }
            let _ = std::process::Command::new("docker").args(["rm", "--force", "--volumes", c]).output();
        }
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

/// The host port Docker published for `container`'s `port`.
fn published(container: &str, port: u64) -> String {
    let mapping = docker(&["port", container, &format!("{port}/tcp")]);
    mapping.lines().next().expect("a published port").trim().to_string()
}

/// `GET path` over plain HTTP/1.0, as the kubelet's probe does; the status code.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: probe\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_statefulset_pods_form_a_cluster_when_run_as_containers() {
    build_image(IMAGE);

    let docs = manifests();
    let sts = &docs[&("StatefulSet".to_string(), "ringkv".to_string())];
    let sts_name = str_at(sts, &["metadata", "name"]);
    let service_name = str_at(sts, &["spec", "serviceName"]);
    let replicas = at(sts, &["spec", "replicas"]).as_u64().expect("replicas");
    let ringkv = named(seq_at(sts, &["spec", "template", "spec", "containers"]), "ringkv");
    let args = strings(seq_at(ringkv, &["args"]));
    let ports = seq_at(ringkv, &["ports"]);
    let grpc_port = at(named(ports, "grpc"), &["containerPort"]).as_u64().expect("grpc port");
    let http_port = at(named(ports, "http"), &["containerPort"]).as_u64().expect("http port");
    let namespace = "db";

    let mut pods = Pods { network: format!("ringkv-t93-{}", std::process::id()), containers: Vec::new() };
    docker(&["network", "create", &pods.network]);
    for ordinal in 0..replicas {
        let pod = format!("{sts_name}-{ordinal}");
        let vars = BTreeMap::from([("POD_NAME", pod.clone()), ("POD_NAMESPACE", namespace.to_string())]);
        let container = format!("{}-{pod}", pods.network);
        let mut run: Vec<String> = ["run", "--detach", "--read-only", "--name", &container, "--hostname", &pod]
            .iter()
            .map(|s| s.to_string())
            .collect();
        run.extend(["--network".into(), pods.network.clone()]);
        // The pod's DNS name under the headless Service.
        run.extend(["--network-alias".into(), format!("{pod}.{service_name}.{namespace}.svc")]);
        run.extend(["--publish".into(), format!("127.0.0.1::{grpc_port}")]);
        run.extend(["--publish".into(), format!("127.0.0.1::{http_port}")]);
        for var in seq_at(ringkv, &["env"]) {
            let name = str_at(var, &["name"]);
            let value = match var.get("value") {
                Some(v) => expand(v.as_str().expect("env value"), &vars),
                None => vars[name].clone(),
            };
            run.extend(["--env".into(), format!("{name}={value}")]);
        }
        run.push(IMAGE.to_string());
        run.extend(args.iter().cloned());
        pods.containers.push(container.clone());
        docker(&run.iter().map(String::as_str).collect::<Vec<_>>());
    }

    // Pod N is node N+1, advertised under its pod DNS name; pod 0 bootstrapped.
    let last = pods.containers.last().expect("pods").clone();
    let client = Client::connect([published(&last, grpc_port)]).expect("client").with_ring_routing(false);
    let status = eventually("the pods to form a settled cluster", || {
        let client = client.clone();
        async move { client.status().await.ok().filter(|s| settled(s, replicas as usize)) }
    })
    .await;
    let mut members: Vec<(u64, String)> = status.nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    members.sort();
    let expected: Vec<(u64, String)> =
        (0..replicas).map(|o| (o + 1, format!("{sts_name}-{o}.{service_name}.{namespace}.svc:{grpc_port}"))).collect();
    assert_eq!(members, expected);

    client.put("k8s", "pods").await.expect("put through the last pod");
    let first = Client::connect([published(&pods.containers[0], grpc_port)]).expect("client").with_ring_routing(false);
    let value = first.get("k8s").await.expect("get through pod 0").expect("the value");
    assert_eq!(&value.value[..], b"pods");

    // The readiness and liveness probes' paths answer 200 on the http port.
    for c in &pods.containers {
        let http = published(c, http_port);
        eventually(&format!("{c} to answer 200 on /readyz"), || {
            let http = http.clone();
            async move { (http_status(&http, "/readyz") == Some(200)).then_some(()) }
        })
        .await;
        assert_eq!(http_status(&http, "/healthz"), Some(200), "{c} /healthz");
    }
    drop(pods);
    docker(&["image", "rm", IMAGE]);
}
