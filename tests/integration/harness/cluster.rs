//! A Redis Cluster of the test's own: three masters, no replicas, no persistence, each a
//! `redis-server` on free loopback ports, joined with `redis-cli --cluster create`. A master
//! can be killed and started again on its port and cluster config file: it rejoins with its
//! slots and without its data, as a master without persistence comes back from a restart.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// How long the cluster may take to form, or a master to rejoin it.
const SETTLE: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut cluster = Self::reserve();
        cluster.create().await;
        cluster
    }

    /// Ports and a directory for a cluster, nothing started yet: [`RedisCluster::create`]
    /// starts it.
    pub fn reserve() -> RedisCluster {
        RedisCluster {
            dir: super::temp_dir("redis-cluster"),
            nodes: (0..3)
                .map(|_| Node {
                    port: free_port_pair(),
                    child: None,
                })
                .collect(),
        }
    }

    /// Starts the reserved masters and joins them into a cluster.
    pub async fn create(&mut self) {
        let cluster = self;
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index);
        }
        for index in 0..cluster.nodes.len() {
            cluster.answering(index).await;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addresses)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .expect("redis-cli is installed")
        })
        .await
        .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.settled().await;
    }

    /// `redis://127.0.0.1:<port>` of every node: the gateway's seed nodes.
    pub fn seed_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|index| self.url(index)).collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn url(&self, index: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[index].port)
    }

    /// A plain connection to one node (not a cluster client: it asks that node alone).
    pub async fn node(&self, index: usize) -> MultiplexedConnection {
        redis::Client::open(self.url(index))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The node that holds `key`'s slot: the only one that answers for it rather than
    /// redirecting (`MOVED`).
    pub async fn master_of(&self, key: &str) -> usize {
        for index in 0..self.nodes.len() {
            let mut node = self.node(index).await;
            let answered = redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut node)
                .await;
            if answered.is_ok() {
                return index;
            }
        }
        panic!("no master holds {key}");
    }

    /// The keys matching `pattern` that node `index` holds.
    pub async fn keys_on(&self, index: usize, pattern: &str) -> Vec<String> {
        let mut node = self.node(index).await;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut node)
            .await
            .unwrap()
    }

    /// Kills master `index`: everything it held is gone.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts master `index` again, empty, on its port and cluster config file, and waits
    /// until every node says the cluster is whole again.
    pub async fn start_again(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.answering(index).await;
        self.settled().await;
    }

    fn spawn(&mut self, index: usize) {
        let port = self.nodes[index].port.to_string();
        let config_file = self.dir.join(format!("nodes-{port}.conf"));
        let child = Command::new("redis-server")
            .args(["--port", &port])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(&config_file)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.nodes[index].child = Some(child);
    }

    async fn answering(&self, index: usize) {
        let client = redis::Client::open(self.url(index)).unwrap();
        tokio::time::timeout(SETTLE, async {
            loop {
                if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("redis-server answers");
    }

    /// Waits until every node reports the cluster whole: all slots served, every node known.
    async fn settled(&self) {
        let count = self.nodes.len();
        tokio::time::timeout(SETTLE, async {
            loop {
                let mut whole = true;
                for index in 0..count {
                    let info = self.try_info(index).await.unwrap_or_default();
                    whole &= info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&format!("cluster_known_nodes:{count}"));
                }
                if whole {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the cluster settles");
    }

    async fn try_info(&self, index: usize) -> Option<String> {
        let client = redis::Client::open(self.url(index)).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut connection)
            .await
            .ok()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that is free, and whose cluster bus port (10000 above) is free too.
fn free_port_pair() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}
