//! A three-node NATS cluster owned by one test: three `nats-server`
//! processes with JetStream, routes to each other on loopback, their own
//! store directories, and the shared server's users and permissions. A node
//! can be killed (SIGKILL) and started again on the same ports and store,
//! as a crashed machine that comes back would.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_ok, nats_auth_conf, print_log_tail, read_lossy, tcp_accepts};
use super::{NATS_CONF, SERVER_START_TIMEOUT};

/// One node: its ports, files and process.
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    conf_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

/// Three nats-server processes forming one JetStream cluster (`syncdata`),
/// named `n1`, `n2`, `n3`. Killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts the three nodes under `dir` (`dir/n1`, …) and waits until
    /// every one is healthy (JetStream with a meta leader).
    pub async fn start(dir: &Path) -> NatsCluster {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut taken = Vec::new();
        let mut port = || loop {
            let p = free_port();
            if !taken.contains(&p) {
                taken.push(p);
                return p;
            }
        };
        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (port(), port(), port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let auth = nats_auth_conf();
        let mut nodes = Vec::new();
        for (i, &(port, monitor_port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let node_dir = dir.join(&name);
            fs::create_dir_all(&node_dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", node_dir.display()));
            let conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 {NATS_CONF}jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{\n  name: syncdata\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n{auth}",
                store = node_dir.join("store").display(),
                routes = routes.join(", "),
            );
            let conf_path = node_dir.join("nats-server.conf");
            fs::write(&conf_path, conf).expect("cannot write nats-server.conf");
            nodes.push(Node {
                name,
                port,
                monitor_port,
                conf_path,
                log_path: node_dir.join("nats-server.log"),
                child: None,
            });
        }
        let mut cluster = NatsCluster { nodes };
        for i in 0..3 {
            cluster.launch(i);
        }
        for i in 0..3 {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// Client URL of node `i` (0, 1, 2).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// All three client URLs, comma-separated (a client configuration that
    /// knows every node).
    pub fn urls(&self) -> String {
        (0..3).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// The server name of node `i` (`n1`, …), as JetStream reports leaders.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match &mut self.nodes[i].child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (same ports, same store) and waits until it
    /// is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.launch(i);
        self.wait_ready(i).await;
    }

    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.nodes[i].log_path)
    }

    fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", node.log_path.display()));
        let log_err = log.try_clone().expect("cannot clone log file handle");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&node.conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nats-server ({e}); run scripts/deps.sh"));
        node.child = Some(child);
    }

    async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while Instant::now() < deadline {
            if !self.is_running(i) {
                panic!(
                    "cluster node {} exited; its log:\n{}",
                    self.nodes[i].name,
                    self.log(i)
                );
            }
            let n = &self.nodes[i];
            if http_ok(n.monitor_port, "/healthz").await && tcp_accepts(n.port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "cluster node {} not healthy after {SERVER_START_TIMEOUT:?}; its log:\n{}",
            self.nodes[i].name,
            self.log(i)
        );
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if std::thread::panicking() {
                print_log_tail(&self.nodes[i].name, &self.nodes[i].log_path);
            }
            self.kill9(i);
        }
    }
}
