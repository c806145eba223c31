//! The deployment files and the docs stay true: every metric the Grafana dashboard charts
//! is one the broker exports, and README's key table and the shipped config name every
//! config key the broker has. The image keeps its defaults in the config file it ships,
//! not in its environment, and its build context leaves `target/` out. The compose file
//! and config/kubernetes/ (a kustomization of built-in kinds, optional parts apart)
//! validate as their containers see them, require an admin token and route the
//! subscriptions they mount. The JetStream fleets (docker/compose.jetstream.yaml,
//! config/kubernetes/jetstream/) validate with the image's environment, keep two
//! instances up, probe paths the broker answers and publish no admin API beyond loopback.

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

// The deployments: docker/ (the image and its compose files) and config/kubernetes/.

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

/// What docker/Dockerfile gives a container: the last stage's environment, command,
/// volumes, exposed ports and the files it copies from the build context.
struct Image {
    env: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    volumes: Vec<String>,
    expose: Vec<u16>,
    /// The last stage's RUN commands, joined.
    run: String,
    /// (path in the build context, path in the image) of the last stage's COPY.
    files: Vec<(String, String)>,
    /// Every path any stage copies from the build context.
    context: Vec<String>,
}

impl Image {
    fn load() -> Image {
        let text = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
        let joined = text.replace("\\\n", " ");
        let mut image = Image::stage(Vec::new());
        let json = |args: &str| -> Vec<String> {
            serde_json::from_str(args)
                .unwrap_or_else(|_| panic!("{args}: use the JSON (exec) form"))
        };
        for line in joined.lines().map(str::trim) {
            let Some((instruction, args)) = line.split_once(' ') else {
                continue;
            };
            match instruction {
                "FROM" => image = Image::stage(std::mem::take(&mut image.context)),
                "ENV" => {
                    for pair in args.split_whitespace() {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("ENV {args}: use the KEY=VALUE form"));
                        image.env.insert(k.to_string(), v.to_string());
                    }
                }
                "ENTRYPOINT" => image.entrypoint = json(args),
                "CMD" => image.cmd = json(args),
                "VOLUME" => image.volumes.extend(json(args)),
                "EXPOSE" => image
                    .expose
                    .extend(args.split_whitespace().map(|p| p.parse::<u16>().unwrap())),
                "RUN" => image.run.push_str(args),
                "COPY" => {
                    let words: Vec<&str> = args.split_whitespace().collect();
                    let from_stage = words.iter().any(|w| w.starts_with("--from"));
                    let paths: Vec<&str> = words
                        .iter()
                        .copied()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let (dest, sources) = paths.split_last().unwrap();
                    for source in sources.iter().filter(|_| !from_stage) {
                        image.context.push(source.to_string());
                        let target = match dest.strip_suffix('/') {
                            Some(dir) => format!("{dir}/{}", source.rsplit('/').next().unwrap()),
                            None => dest.to_string(),
                        };
                        image.files.push((source.to_string(), target));
                    }
                }
                _ => {}
            }
        }
        image
    }

    /// A new stage: of the stages before it, only what they copy from the build
    /// context counts (the context must still hold it).
    fn stage(context: Vec<String>) -> Image {
        Image {
            env: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            volumes: Vec::new(),
            expose: Vec::new(),
            run: String::new(),
            files: Vec::new(),
            context,
        }
    }

    /// The repository file the image holds at `path`.
    fn source_of(&self, path: &Path) -> Option<&str> {
        self.files
            .iter()
            .find(|(_, target)| Path::new(target) == path)
            .map(|(source, _)| source.as_str())
    }
}

/// The value of `-c`/`--config` in a command line.
fn config_flag(argv: &[String]) -> Option<PathBuf> {
    let at = argv.iter().position(|a| a == "-c" || a == "--config")?;
    argv.get(at + 1).map(PathBuf::from)
}

/// The environment docker/Dockerfile gives the image: in every container that runs it.
fn image_env() -> BTreeMap<String, String> {
    Image::load().env
}

/// A server config as a container sees it: the file under the image's and the
/// container's own environment.
fn server_config(origin: &Path, text: &str, env: BTreeMap<String, String>) -> Config {
    let mut all = image_env();
    all.extend(env);
    switchyard::config::from_yaml(Some(origin), text, &all)
        .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", origin.display()))
}

/// A JetStream variant's config: three copies on the servers.
fn assert_jetstream(config: &Config, origin: &Path) {
    assert_eq!(
        config.storage.backend,
        Backend::JetStream,
        "{}",
        origin.display()
    );
    let jetstream = config.storage.jetstream.as_ref().unwrap();
    assert_eq!(jetstream.replicas, 3, "{}", origin.display());
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

/// A Kubernetes variant (a kustomization): its one workload (the StatefulSet of
/// config/kubernetes/, the Deployment of jetstream/), the one container, the config that
/// container reads, and its pod's labels.
struct Kubernetes {
    docs: Vec<Node>,
    workload: Node,
    container: Node,
    config: Config,
    labels: BTreeMap<String, String>,
}

impl Kubernetes {
    fn load(dir: &str, kind: &str) -> Kubernetes {
        let docs = kustomized(dir);
        let workloads = of_kind(&docs, kind);
        assert_eq!(workloads.len(), 1, "{dir}: one {kind}");
        let workload = workloads[0].clone();
        let labels = entries(at(&workload, "spec.template.metadata.labels"));
        assert!(
            selects(at(&workload, "spec.selector.matchLabels"), &labels),
            "the {kind}'s selector does not select its pods"
        );
        let containers = items(&workload, "spec.template.spec.containers");
        assert_eq!(containers.len(), 1);
        let container = containers[0].clone();
        let mut k = Kubernetes {
            docs,
            workload,
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

    /// The subscription files of every folder the config names, from the ConfigMaps
    /// mounted there, validate.
    fn check_subscriptions(&self) {
        for dir in &self.config.subscriptions {
            let sources: Vec<(PathBuf, String)> = self
                .mounted(dir)
                .into_iter()
                .map(|(file, text)| (dir.join(file), text))
                .collect();
            subscriptions(&self.config, &sources);
        }
    }

    /// The files of the ConfigMap mounted at `dir` in the container.
    fn mounted(&self, dir: &Path) -> BTreeMap<String, String> {
        let mount = items(&self.container, "volumeMounts")
            .iter()
            .find(|m| Path::new(&text(m, "mountPath")) == dir)
            .unwrap_or_else(|| panic!("nothing is mounted at {}", dir.display()));
        let volume = items(&self.workload, "spec.template.spec.volumes")
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
    let k = Kubernetes::load("config/kubernetes/jetstream", "Deployment");
    assert_jetstream(&k.config, Path::new("config/kubernetes/jetstream"));
    let jetstream = k.config.storage.jetstream.as_ref().unwrap();
    assert!(!jetstream.servers.is_empty());

    // Every pod can reach a pod's admin listener: the API there takes a token.
    assert!(
        k.config.admin.token.is_some(),
        "the admin API takes no token"
    );

    let replicas = int(&k.workload, "spec.replicas").unwrap_or(1);
    assert!(
        replicas >= 2,
        "{replicas} replica: nothing answers while it restarts"
    );

    k.check_subscriptions();

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
    let k = Kubernetes::load("config/kubernetes/jetstream", "Deployment");
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
    mounted_at(volumes, target)
        .unwrap_or_else(|| panic!("nothing is mounted at {}", target.display()))
}

/// The host side (a path relative to docker/, or a named volume) of the compose volume
/// mounted at `target`, if any.
fn mounted_at<'a>(volumes: &'a [String], target: &Path) -> Option<&'a str> {
    volumes
        .iter()
        .filter_map(|v| v.split(':').collect::<Vec<_>>().get(..2).map(<[_]>::to_vec))
        .find(|p| Path::new(p[1]) == target)
        .map(|p| p[0])
}

/// The subscription files of a folder, with their text.
fn folder_sources(folder: &Path) -> Vec<(PathBuf, String)> {
    std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .collect()
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
        let env = entries(at(s, "environment"))
            .into_iter()
            .map(|(k, v)| (k, interpolate(&v, "the-operators-own-token")))
            .collect();
        let config = server_config(&origin, &text, env);
        assert_jetstream(&config, &origin);
        assert_eq!(
            config.admin.token.as_deref(),
            Some("the-operators-own-token"),
            "{name}: the admin API takes the operator's token"
        );
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
        subscriptions(
            &config,
            &folder_sources(&root().join("docker").join(host_subs)),
        );
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

#[test]
fn the_image_keeps_its_defaults_in_the_config_file_it_ships_not_in_its_environment() {
    let image = Image::load();
    // Variables of the command line, not config keys (src/config/mod.rs, apply_env).
    let not_keys = [
        "SWITCHYARD_CONFIG",
        "SWITCHYARD_LOG",
        "SWITCHYARD_LOG_FORMAT",
    ];
    let overrides: Vec<&String> = image
        .env
        .keys()
        .filter(|k| k.starts_with("SWITCHYARD_") && !not_keys.contains(&k.as_str()))
        .collect();
    assert!(
        overrides.is_empty(),
        "the image's ENV sets {overrides:?}, which override every config file a deployment \
         mounts: set them in the file the image ships"
    );

    // The file the image's own command reads, found as the binary finds it.
    let argv: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
    let (file, _) = switchyard::config::resolve_path(config_flag(&argv).as_deref(), &image.env)
        .expect("the image names its config file (`-c` or SWITCHYARD_CONFIG)");
    let source = image
        .source_of(&file)
        .unwrap_or_else(|| panic!("the image does not ship {}", file.display()));
    let text = std::fs::read_to_string(root().join(source)).unwrap();
    let config = switchyard::config::from_yaml(Some(&file), &text, &image.env)
        .unwrap_or_else(|e| panic!("{source} does not validate:\n{e}"));

    assert_eq!(config.ingress.listen, "0.0.0.0:8080".parse().unwrap());
    // Where the kubelet's probes, Prometheus and a published port reach it.
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "admin on {}: nothing outside the container reaches it",
        config.admin.listen
    );
    for port in [config.ingress.listen.port(), config.admin.listen.port()] {
        assert!(
            image.expose.contains(&port),
            "the image does not expose {port}"
        );
    }
    assert_eq!(config.storage.path, Path::new("/var/lib/switchyard"));
    assert!(
        image
            .volumes
            .iter()
            .any(|v| Path::new(v) == config.storage.path),
        "the data directory is not the image's volume: {:?}",
        image.volumes
    );
    assert_eq!(
        config.subscriptions,
        [PathBuf::from("/etc/switchyard/subscriptions")]
    );
    for dir in [&config.storage.path, &config.subscriptions[0]] {
        assert!(
            image.run.contains(dir.to_str().unwrap()),
            "the image does not create {}",
            dir.display()
        );
    }
}

/// Whether a .dockerignore pattern leaves `path` (relative to the context) out: it
/// matches the path or a folder above it, `*` within one part, `**` any parts.
fn ignores(pattern: &str, path: &str) -> bool {
    fn part(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => name.strip_prefix(head).is_some_and(|rest| {
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && part(tail, &rest[i..]))
            }),
        }
    }
    fn parts(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.split_first(), path.split_first()) {
            (None, _) => true,
            (Some((&"**", rest)), _) => (0..=path.len()).any(|i| parts(rest, &path[i..])),
            (Some((p, rest)), Some((name, names))) => part(p, name) && parts(rest, names),
            (Some(_), None) => false,
        }
    }
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_matches('/').split('/').collect();
    parts(&pattern, &path)
}

#[test]
fn the_build_context_leaves_out_build_output_and_keeps_what_the_dockerfile_copies() {
    let text = std::fs::read_to_string(root().join(".dockerignore"))
        .expect("no .dockerignore: `docker build` sends the whole target/ as its context");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "an exception: {patterns:?}"
    );
    let excluded = |path: &str| patterns.iter().any(|p| ignores(p, path));
    for out in [
        "target/release/switchyard",
        ".git/HEAD",
        "fuzz/target/debug/x",
        "fuzz/corpus/x",
    ] {
        assert!(excluded(out), ".dockerignore sends {out}");
    }
    for source in Image::load().context {
        assert!(
            !excluded(&source),
            ".dockerignore leaves out {source}, which docker/Dockerfile copies"
        );
    }
}

/// A compose value after interpolation, with each `${NAME:?message}` (a variable
/// `docker compose up` refuses to run without) as `required`. Any other form is refused:
/// `${NAME:-x}` ships a known value, `${NAME}` an empty one when it is unset.
fn interpolate(value: &str, required: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (expr, tail) = after
            .strip_prefix('{')
            .and_then(|a| a.split_once('}'))
            .unwrap_or_else(|| panic!("{value}: write ${{NAME:?message}}"));
        assert!(
            expr.split_once(":?")
                .is_some_and(|(name, _)| !name.is_empty()),
            "{value}: ${{{expr}}} has a default or none; write ${{NAME:?message}}"
        );
        out.push_str(required);
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[test]
fn compose_requires_an_admin_token_keeps_admin_on_loopback_and_routes_example_subscriptions() {
    let compose = parse_file("docker/compose.yaml").remove(0);
    let s = at(&compose, "services.switchyard").expect("a switchyard service");
    assert_eq!(text(s, "build.dockerfile"), "docker/Dockerfile");
    let image = Image::load();

    // The container's environment: the image's, then the service's, interpolated.
    let required = "the-operators-own-token";
    let mut env = image.env.clone();
    env.extend(
        entries(at(s, "environment"))
            .into_iter()
            .map(|(k, v)| (k, interpolate(&v, required))),
    );
    // `command` replaces the image's CMD.
    let command = strings(s, "command");
    let cmd = if command.is_empty() {
        &image.cmd
    } else {
        &command
    };
    let (file, _) = switchyard::config::resolve_path(config_flag(cmd).as_deref(), &env)
        .expect("the container names its config file");
    let volumes = strings(s, "volumes");
    let origin = match mounted_at(&volumes, &file) {
        Some(host) => Path::new("docker").join(host),
        None => PathBuf::from(image.source_of(&file).expect("the image ships the file")),
    };
    let config_text = std::fs::read_to_string(root().join(&origin)).unwrap();
    let config = switchyard::config::from_yaml(Some(&file), &config_text, &env)
        .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", origin.display()));

    assert_eq!(
        config.admin.token.as_deref(),
        Some(required),
        "the admin API takes no token, or one the compose file ships"
    );
    for entry in strings(s, "ports") {
        let (ip, _, container) = published(&entry);
        if container == config.admin.listen.port() {
            assert_eq!(
                ip,
                Some("127.0.0.1"),
                "the admin API is published on every host interface: {entry}"
            );
        }
    }
    let data = mounted_at(&volumes, &config.storage.path).expect("the log is on no volume");
    assert!(
        entries(at(&compose, "volumes")).contains_key(data),
        "{data} is not a named volume"
    );

    // The image's subscriptions folder is empty: compose mounts one that routes.
    assert!(!config.subscriptions.is_empty(), "no subscriptions folder");
    for dir in &config.subscriptions {
        let host = mounted_at(&volumes, dir).unwrap_or_else(|| {
            panic!(
                "nothing is mounted at {}: the broker starts with no subscriptions",
                dir.display()
            )
        });
        subscriptions(&config, &folder_sources(&root().join("docker").join(host)));
    }
}

/// Documents whose kind Kubernetes has without a CustomResourceDefinition.
fn assert_built_in(docs: &[Node], dir: &str) {
    const BUILT_IN: &[&str] = &[
        "v1",
        "apps/v1",
        "policy/v1",
        "networking.k8s.io/v1",
        "batch/v1",
        "autoscaling/v2",
        "rbac.authorization.k8s.io/v1",
    ];
    for d in docs {
        let api = at(d, "apiVersion").and_then(Node::scalar_text);
        let kind = at(d, "kind").and_then(Node::scalar_text);
        assert!(
            kind.is_some() && api.as_deref().is_some_and(|a| BUILT_IN.contains(&a)),
            "{dir}: {api:?} {kind:?} is not a built-in kind (an optional part goes in a folder \
             of its own)"
        );
    }
}

#[test]
fn config_kubernetes_is_a_kustomization_of_built_in_kinds_with_a_headless_governing_service() {
    let dir = "config/kubernetes";
    let kustomization = parse_file(&format!("{dir}/kustomization.yaml")).remove(0);
    let resources = strings(&kustomization, "resources");
    let tekton = std::fs::read_to_string(root().join("docs/tekton.md")).unwrap();
    // Every file beside the kustomization is one of its resources or, not being a
    // manifest, input that docs/tekton.md gives to `kubectl patch`.
    for entry in std::fs::read_dir(root().join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if path.is_dir() || !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        if !resources.iter().any(|r| r == name) {
            assert!(
                tekton.contains(&format!("--patch-file {dir}/{name}")),
                "{dir}/{name} is neither a resource of the kustomization nor patch input"
            );
            for doc in parse_file(&format!("{dir}/{name}")) {
                assert!(at(&doc, "kind").is_none(), "{name} is a manifest");
            }
        }
    }
    let docs = kustomized(dir);
    assert_built_in(&docs, dir);

    let sets = of_kind(&docs, "StatefulSet");
    assert_eq!(sets.len(), 1);
    let labels = entries(at(sets[0], "spec.template.metadata.labels"));
    let governing = text(sets[0], "spec.serviceName");
    let services = of_kind(&docs, "Service");
    let service = services
        .iter()
        .find(|s| text(s, "metadata.name") == governing)
        .unwrap_or_else(|| panic!("the StatefulSet's serviceName {governing} names no Service"));
    assert_eq!(
        at(service, "spec.clusterIP").and_then(Node::scalar_text),
        Some("None".to_string()),
        "the StatefulSet's Service {governing} is not headless"
    );
    assert!(selects(at(service, "spec.selector"), &labels));

    // The ServiceMonitor (it needs the Prometheus Operator's CRDs), a folder of its own.
    let monitoring = kustomized(&format!("{dir}/monitoring"));
    let monitors = of_kind(&monitoring, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let scraped = services
        .iter()
        .copied()
        .chain(of_kind(&monitoring, "Service"))
        .find(|s| {
            selects(
                at(monitors[0], "spec.selector.matchLabels"),
                &entries(at(s, "metadata.labels")),
            )
        })
        .expect("the ServiceMonitor selects no Service");
    assert!(selects(at(scraped, "spec.selector"), &labels));
    for endpoint in items(monitors[0], "spec.endpoints") {
        let port = text(endpoint, "port");
        assert!(
            items(scraped, "spec.ports")
                .iter()
                .any(|p| text(p, "name") == port),
            "the scraped Service has no port {port}"
        );
    }

    // kubectl renders each folder, where it is installed (it needs no cluster for this).
    for folder in [
        dir,
        "config/kubernetes/monitoring",
        "config/kubernetes/jetstream",
    ] {
        let Ok(out) = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join(folder))
            .output()
        else {
            continue;
        };
        assert!(
            out.status.success(),
            "kubectl kustomize {folder}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_kubernetes_statefulset_validates_and_takes_its_admin_token_from_a_secret() {
    let k = Kubernetes::load("config/kubernetes", "StatefulSet");
    assert!(
        k.config.admin.token.is_some(),
        "the admin API on {} takes no token",
        k.config.admin.listen
    );
    let secret = items(&k.container, "env")
        .iter()
        .find_map(|e| at(e, "valueFrom.secretKeyRef.name").and_then(Node::scalar_text))
        .expect("no variable of the container comes from a Secret");
    let tekton = std::fs::read_to_string(root().join("docs/tekton.md")).unwrap();
    assert!(
        tekton.contains(&format!("create secret generic {secret}")),
        "docs/tekton.md does not say how to create the Secret {secret}"
    );

    assert!(!k.config.subscriptions.is_empty());
    k.check_subscriptions();
    assert_eq!(k.probe_path("readinessProbe"), "/readyz");
    assert_eq!(k.probe_path("livenessProbe"), "/livez");

    // The log on the volume claim, where the ConfigMap puts it.
    let data = items(&k.container, "volumeMounts")
        .iter()
        .find(|m| Path::new(&text(m, "mountPath")) == k.config.storage.path)
        .map(|m| text(m, "name"))
        .unwrap_or_else(|| panic!("nothing is mounted at {}", k.config.storage.path.display()));
    assert!(
        items(&k.workload, "spec.volumeClaimTemplates")
            .iter()
            .any(|c| text(c, "metadata.name") == data),
        "{data} is not a volume claim"
    );

    // The admin API stays inside the pod: no Service of the base reaches it.
    for s in of_kind(&k.docs, "Service") {
        for p in items(s, "spec.ports") {
            if let Some(target) = get(p, "targetPort") {
                assert_ne!(
                    k.container_port(target),
                    k.config.admin.listen.port(),
                    "{} exposes the admin API",
                    text(s, "metadata.name")
                );
            }
        }
    }
}
