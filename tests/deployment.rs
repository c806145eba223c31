//! The deployment files and the docs stay true: the Kubernetes config and subscriptions
//! validate, every metric the Grafana dashboard charts is one the broker exports, and
//! README's key table and the shipped config name every config key the broker has. The
//! JetStream fleets (docker/compose.jetstream.yaml, config/kubernetes/jetstream/) validate
//! with the image's environment, keep two instances up, probe paths the broker answers
//! and publish no admin API beyond loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchyard::clock::SystemClock;
use switchyard::config::yaml::{self, Node, Value};
use switchyard::config::{Backend, Config};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(e) => e.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n),
        _ => None,
    }
}

#[test]
fn readme_lists_every_config_key_with_its_default() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = switchyard::config::key_table();
    assert!(
        readme.contains(&table),
        "README's config table differs from the schema (src/config/mod.rs SCHEMA); it should read:\n{table}"
    );
}

#[test]
fn the_shipped_config_spells_out_every_key() {
    let text = std::fs::read_to_string(root().join("config/switchyard.yaml")).unwrap();
    let doc = yaml::parse(&text).unwrap().pop().unwrap();
    for key in switchyard::config::SCHEMA {
        let mut node = Some(&doc);
        for part in key.path.split('.') {
            node = node.and_then(|n| get(n, part));
        }
        // A key whose setting changes its meaning (a set `subscriptions` must exist) is
        // shown commented out.
        let leaf = key.path.rsplit('.').next().unwrap();
        assert!(
            node.is_some() || text.contains(&format!("# {leaf}: {}", key.default)),
            "config/switchyard.yaml does not show {}",
            key.path
        );
    }
}

#[test]
fn the_kubernetes_config_and_subscriptions_validate() {
    let text = std::fs::read_to_string(root().join("config/kubernetes/switchyard.yaml")).unwrap();
    let docs = yaml::parse(&text).unwrap();
    let config_map = |name: &str| {
        docs.iter()
            .find(|d| {
                get(d, "kind").and_then(Node::scalar_text).as_deref() == Some("ConfigMap")
                    && get(get(d, "metadata").unwrap(), "name")
                        .and_then(Node::scalar_text)
                        .as_deref()
                        == Some(name)
            })
            .and_then(|d| get(d, "data"))
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    };
    let server = get(config_map("switchyard-config"), "switchyard.yaml")
        .unwrap()
        .scalar_text()
        .unwrap();
    let config = switchyard::config::from_yaml(
        Some(Path::new("switchyard.yaml")),
        &server,
        &Default::default(),
    )
    .expect("the server config validates");
    assert_eq!(
        config.subscriptions,
        vec![PathBuf::from("/etc/switchyard/subscriptions")]
    );
    let Value::Map(files) = &config_map("switchyard-subscriptions").value else {
        panic!()
    };
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(k, _, v)| (PathBuf::from(k), v.scalar_text().unwrap()))
        .collect();
    let subs = switchyard::config::subscriptions::from_sources(
        &sources,
        &config.brokers,
        &config.delivery,
    )
    .expect("the subscriptions validate");
    assert_eq!(subs.len(), 2);
}

#[test]
fn the_dashboard_charts_only_exported_metrics() {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let exported: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("config/grafana/switchyard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        let expr = p["targets"][0]["expr"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("switchyard_") || w.starts_with("process_"))
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for n in names {
            let base = n.trim_end_matches("_bucket");
            assert!(
                exported.contains(base),
                "the dashboard charts {n}, which is not exported"
            );
        }
    }
}

// The JetStream deployments: docker/compose.jetstream.yaml and config/kubernetes/jetstream/.

fn parse_file(rel: &str) -> Vec<Node> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    yaml::parse(&text).unwrap_or_else(|e| panic!("{rel}:{}: {}", e.line, e.message))
}

/// The node at a path of map keys (keys without dots).
fn at<'a>(node: &'a Node, path: &str) -> Option<&'a Node> {
    path.split('.').try_fold(node, get)
}

fn text(node: &Node, path: &str) -> String {
    at(node, path)
        .and_then(Node::scalar_text)
        .unwrap_or_else(|| panic!("no {path}"))
}

fn int(node: &Node, path: &str) -> Option<i64> {
    match at(node, path)?.value {
        Value::Int(i) => Some(i),
        _ => None,
    }
}

fn items<'a>(node: &'a Node, path: &str) -> &'a [Node] {
    match at(node, path).map(|n| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

fn strings(node: &Node, path: &str) -> Vec<String> {
    items(node, path)
        .iter()
        .map(|n| n.scalar_text().unwrap())
        .collect()
}

fn entries(node: Option<&Node>) -> BTreeMap<String, String> {
    match node.map(|n| &n.value) {
        Some(Value::Map(e)) => e
            .iter()
            .map(|(k, _, v)| (k.clone(), v.scalar_text().unwrap_or_default()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The environment docker/Dockerfile gives the image (`ENV` with `\` continuations):
/// overrides of the config file in every container that runs it.
fn image_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let env: BTreeMap<String, String> = joined
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(env.contains_key("SWITCHYARD_ADMIN_LISTEN"), "{env:?}");
    env
}

/// A server config as a container sees it: the file under the image's and the
/// container's own environment.
fn server_config(origin: &Path, text: &str, env: BTreeMap<String, String>) -> Config {
    let mut all = image_env();
    all.extend(env);
    let config = switchyard::config::from_yaml(Some(origin), text, &all)
        .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", origin.display()));
    assert_eq!(
        config.storage.backend,
        Backend::JetStream,
        "{}",
        origin.display()
    );
    let jetstream = config.storage.jetstream.as_ref().unwrap();
    assert_eq!(jetstream.replicas, 3, "{}", origin.display());
    config
}

fn subscriptions(config: &Config, sources: &[(PathBuf, String)]) {
    let subs =
        switchyard::config::subscriptions::from_sources(sources, &config.brokers, &config.delivery)
            .expect("the subscriptions validate");
    assert!(!subs.is_empty(), "no subscriptions in {sources:?}");
}

/// Every document of the resources a kustomization lists.
fn kustomized(dir: &str) -> Vec<Node> {
    let kustomization = parse_file(&format!("{dir}/kustomization.yaml")).remove(0);
    let resources = strings(&kustomization, "resources");
    assert!(!resources.is_empty());
    resources
        .iter()
        .flat_map(|r| parse_file(&format!("{dir}/{r}")))
        .collect()
}

fn of_kind<'a>(docs: &'a [Node], kind: &str) -> Vec<&'a Node> {
    docs.iter()
        .filter(|d| at(d, "kind").and_then(Node::scalar_text).as_deref() == Some(kind))
        .collect()
}

/// Whether `selector` (matchLabels) selects pods labelled `labels`.
fn selects(selector: Option<&Node>, labels: &BTreeMap<String, String>) -> bool {
    let wanted = entries(selector);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Kubernetes JetStream variant: its Deployment, the one container, the config that
/// container reads, and its pod's labels.
struct Kubernetes {
    docs: Vec<Node>,
    deployment: Node,
    container: Node,
    config: Config,
    labels: BTreeMap<String, String>,
}

impl Kubernetes {
    fn load() -> Kubernetes {
        let docs = kustomized("config/kubernetes/jetstream");
        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 1);
        let deployment = deployments[0].clone();
        let labels = entries(at(&deployment, "spec.template.metadata.labels"));
        assert!(
            selects(at(&deployment, "spec.selector.matchLabels"), &labels),
            "the Deployment's selector does not select its pods"
        );
        let containers = items(&deployment, "spec.template.spec.containers");
        assert_eq!(containers.len(), 1);
        let container = containers[0].clone();
        let mut k = Kubernetes {
            docs,
            deployment,
            container,
            config: switchyard::config::from_yaml(None, "", &Default::default()).unwrap(),
            labels,
        };
        // The file `-c` names, from the ConfigMap mounted at its folder.
        let args = strings(&k.container, "args");
        let file = PathBuf::from(&args[args.iter().position(|a| a == "-c").unwrap() + 1]);
        let data = k.mounted(file.parent().unwrap());
        let name = file.file_name().unwrap().to_str().unwrap();
        let env = items(&k.container, "env")
            .iter()
            // A value from a Secret is not in the manifests: any will do to validate, and
            // `valueFrom: {env}` reads the process's environment.
            .map(|e| {
                let name = text(e, "name");
                let value = at(e, "value")
                    .and_then(Node::scalar_text)
                    .unwrap_or_else(|| "from-a-secret".into());
                std::env::set_var(&name, &value);
                (name, value)
            })
            .collect();
        k.config = server_config(&file, data.get(name).expect("the config file"), env);
        k
    }

    /// The files of the ConfigMap mounted at `dir` in the container.
    fn mounted(&self, dir: &Path) -> BTreeMap<String, String> {
        let mount = items(&self.container, "volumeMounts")
            .iter()
            .find(|m| Path::new(&text(m, "mountPath")) == dir)
            .unwrap_or_else(|| panic!("nothing is mounted at {}", dir.display()));
        let volume = items(&self.deployment, "spec.template.spec.volumes")
            .iter()
            .find(|v| text(v, "name") == text(mount, "name"))
            .unwrap_or_else(|| panic!("no volume for {}", dir.display()));
        let config_map = text(volume, "configMap.name");
        let doc = of_kind(&self.docs, "ConfigMap")
            .into_iter()
            .find(|d| text(d, "metadata.name") == config_map)
            .unwrap_or_else(|| panic!("no ConfigMap {config_map}"));
        entries(at(doc, "data"))
    }

    /// The container port a probe or a Service names, by name or number.
    fn container_port(&self, port: &Node) -> u16 {
        let ports = items(&self.container, "ports");
        let found = match &port.value {
            Value::Int(n) => ports.iter().find(|p| int(p, "containerPort") == Some(*n)),
            Value::Str(name) => ports.iter().find(|p| text(p, "name") == *name),
            _ => None,
        };
        let number = found.and_then(|p| int(p, "containerPort"));
        u16::try_from(number.unwrap_or_else(|| panic!("no container port {port:?}"))).unwrap()
    }

    /// The `httpGet` path of a probe, after checking that it asks the admin listener.
    fn probe_path(&self, probe: &str) -> String {
        let http = at(&self.container, &format!("{probe}.httpGet"))
            .unwrap_or_else(|| panic!("no {probe}.httpGet"));
        assert_eq!(
            self.container_port(get(http, "port").expect("a port")),
            self.config.admin.listen.port(),
            "the {probe} does not ask the admin listener"
        );
        text(http, "path")
    }
}

#[test]
fn the_kubernetes_jetstream_variant_validates_and_stays_up_through_a_drain() {
    let k = Kubernetes::load();
    let jetstream = k.config.storage.jetstream.as_ref().unwrap();
    assert!(!jetstream.servers.is_empty());

    // Every pod can reach a pod's admin listener: the API there takes a token.
    assert!(
        k.config.admin.token.is_some(),
        "the admin API takes no token"
    );

    let replicas = int(&k.deployment, "spec.replicas").unwrap_or(1);
    assert!(
        replicas >= 2,
        "{replicas} replica: nothing answers while it restarts"
    );

    for dir in &k.config.subscriptions {
        let sources: Vec<(PathBuf, String)> = k
            .mounted(dir)
            .into_iter()
            .map(|(file, text)| (dir.join(file), text))
            .collect();
        subscriptions(&k.config, &sources);
    }

    let budgets = of_kind(&k.docs, "PodDisruptionBudget");
    let budget = budgets
        .iter()
        .find(|b| selects(at(b, "spec.selector.matchLabels"), &k.labels))
        .expect("a PodDisruptionBudget selecting the Deployment's pods");
    let allowed = match (
        int(budget, "spec.minAvailable"),
        int(budget, "spec.maxUnavailable"),
    ) {
        (Some(min), None) => (1..replicas).contains(&min),
        (None, Some(max)) => (1..replicas).contains(&max),
        other => panic!("the budget sets one of minAvailable and maxUnavailable: {other:?}"),
    };
    assert!(
        allowed,
        "the budget keeps no instance up, or lets no drain through"
    );

    let services = of_kind(&k.docs, "Service");
    let ingress = services
        .iter()
        .find(|s| selects(at(s, "spec.selector"), &k.labels))
        .expect("a Service for the pods");
    let ports = items(ingress, "spec.ports");
    assert!(
        ports.iter().any(|p| {
            k.container_port(get(p, "targetPort").expect("a targetPort"))
                == k.config.ingress.listen.port()
        }),
        "the Service does not reach the ingress"
    );
    // The admin API stays inside the pods.
    for s in &services {
        for p in items(s, "spec.ports") {
            if let Some(target) = get(p, "targetPort") {
                assert_ne!(k.container_port(target), k.config.admin.listen.port());
            }
        }
    }
}

#[tokio::test]
async fn the_kubernetes_jetstream_probes_ask_what_the_broker_answers() {
    let k = Kubernetes::load();
    let readiness = k.probe_path("readinessProbe");
    let liveness = k.probe_path("livenessProbe");

    // A real broker (the embedded backend: the admin listener is the same on both).
    let dir = tempfile::tempdir().unwrap();
    let config = switchyard::config::from_yaml(
        None,
        &format!("storage: {{path: {}}}\n", dir.path().display()),
        &Default::default(),
    )
    .unwrap();
    let server = switchyard::server::Server::start(
        config,
        Vec::new(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let admin = server.admin_addr;
    assert_eq!(status(admin, &liveness).await, 200, "{liveness}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let code = status(admin, &readiness).await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 503, "{readiness} is not a health path");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{readiness} not ready in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// The status of `GET path` on `addr`, over a plain HTTP/1.1 connection.
async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: switchyard\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

/// A compose `ports` entry: the host address (when one is given) and the container port.
fn published(entry: &str) -> (Option<&str>, &str, u16) {
    let parts: Vec<&str> = entry.split(':').collect();
    let container = parts.last().unwrap().parse().unwrap();
    match parts.as_slice() {
        [ip, host, _] => (Some(ip), host, container),
        [host, _] => (None, host, container),
        _ => panic!("ports entry {entry:?}: publish HOST:CONTAINER or IP:HOST:CONTAINER"),
    }
}

/// A compose bind mount `HOST:CONTAINER[:MODE]`, the host path relative to docker/.
fn bind<'a>(volumes: &'a [String], target: &Path) -> &'a str {
    volumes
        .iter()
        .filter_map(|v| v.split(':').collect::<Vec<_>>().get(..2).map(<[_]>::to_vec))
        .find(|p| Path::new(p[1]) == target)
        .map(|p| p[0])
        .unwrap_or_else(|| panic!("nothing is mounted at {}", target.display()))
}

#[test]
fn the_compose_jetstream_fleet_validates_and_keeps_the_admin_api_on_loopback() {
    let compose = parse_file("docker/compose.jetstream.yaml").remove(0);
    let Some(Value::Map(services)) = at(&compose, "services").map(|n| &n.value) else {
        panic!("no services")
    };
    let image = |s: &Node| {
        at(s, "image")
            .and_then(Node::scalar_text)
            .unwrap_or_default()
    };
    let named_volumes = entries(at(&compose, "volumes"));

    // Three NATS servers, 2.12 or newer, each on the shared config and a volume of its own.
    let nats: Vec<(&String, &Node)> = services
        .iter()
        .filter(|(_, _, s)| image(s).starts_with("nats:"))
        .map(|(name, _, s)| (name, s))
        .collect();
    assert_eq!(nats.len(), 3, "a three-server cluster");
    let conf = std::fs::read_to_string(root().join("docker/nats-jetstream.conf")).unwrap();
    assert!(
        conf.contains("sync_interval: always"),
        "docs/scale-out.md's setting"
    );
    let mut names = BTreeSet::new();
    for (name, s) in &nats {
        let tag = image(s);
        let version: Vec<u32> = tag["nats:".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(version >= vec![2, 12], "{name}: {tag}");
        let command = strings(s, "command");
        let config = &command[command.iter().position(|a| a == "--config").unwrap() + 1];
        assert_eq!(
            bind(&strings(s, "volumes"), Path::new(config)),
            "./nats-jetstream.conf"
        );
        names.insert(
            command[command.iter().position(|a| a == "--server_name").unwrap() + 1].clone(),
        );
        assert!(
            conf.contains(&format!("nats://{name}:6222")),
            "no route to {name}"
        );
        let data = strings(s, "volumes")
            .into_iter()
            .find_map(|v| v.strip_suffix(":/data").map(str::to_string))
            .unwrap_or_else(|| panic!("{name} keeps no data volume"));
        assert!(
            named_volumes.contains_key(&data),
            "{name}: {data} is not a named volume"
        );
    }
    assert_eq!(names.len(), 3, "JetStream needs each server named apart");

    // Two or more instances with the same config and subscriptions.
    let instances: Vec<(&String, &Node)> = services
        .iter()
        .filter(|(_, _, s)| image(s).starts_with("switchyard:"))
        .map(|(name, _, s)| (name, s))
        .collect();
    assert!(instances.len() >= 2, "a fleet of one");
    let mut shared = BTreeSet::new();
    let mut ingress_ports = BTreeSet::new();
    for (name, s) in &instances {
        let command = strings(s, "command");
        let file = PathBuf::from(&command[command.iter().position(|a| a == "-c").unwrap() + 1]);
        let volumes = strings(s, "volumes");
        let host_file = bind(&volumes, &file);
        let origin = Path::new("docker").join(host_file.trim_start_matches("./"));
        let text = std::fs::read_to_string(root().join(&origin)).unwrap();
        let config = server_config(&origin, &text, entries(at(s, "environment")));
        let servers = &config.storage.jetstream.as_ref().unwrap().servers;
        let wanted: Vec<String> = nats
            .iter()
            .map(|(n, _)| format!("nats://{n}:4222"))
            .collect();
        assert_eq!(servers, &wanted, "{name} names the compose file's servers");

        let [subs] = config.subscriptions.as_slice() else {
            panic!("{name}: one subscriptions folder")
        };
        let host_subs = bind(&volumes, subs);
        let folder = root().join("docker").join(host_subs);
        let sources: Vec<(PathBuf, String)> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        subscriptions(&config, &sources);
        shared.insert((host_file.to_string(), host_subs.to_string()));

        for entry in strings(s, "ports") {
            let (ip, host, container) = published(&entry);
            if container == config.admin.listen.port() {
                assert_eq!(
                    ip,
                    Some("127.0.0.1"),
                    "{name} publishes its admin API: {entry}"
                );
            } else {
                assert_eq!(container, config.ingress.listen.port(), "{name}: {entry}");
                assert!(
                    ingress_ports.insert(host.to_string()),
                    "{name}: {entry} is taken"
                );
            }
        }
    }
    assert_eq!(
        shared.len(),
        1,
        "the instances read different files: {shared:?}"
    );
    assert_eq!(
        ingress_ports.len(),
        instances.len(),
        "each ingress on a port of its own"
    );
}
