//! The lab's deployment: regions on their own loopback subnets, a sample
//! service and an edge per serving region, and WAN links for every path that
//! crosses regions (and for clients reaching edges, so that a dark region is
//! dark to its own users too).
//!
//! Address plan: region N uses 127.0.N.0/24; its edge binds 127.0.N.1, its
//! sample service 127.0.N.10, WAN links from it toward other regions'
//! services 127.0.N.100 and WAN links for its clients 127.0.N.200. Ports are
//! chosen by the kernel, so several labs can run side by side.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::load::EdgePath;
use crate::process::Proc;
use crate::wan::Wan;

/// Health and retry settings the lab gives its edges; tuned for detection
/// under a second with a 70 ms cross-region round trip.
#[derive(Debug, Clone)]
pub struct EdgeTuning {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub try_timeout_ms: u64,
    /// When false, edges get an empty retry budget.
    pub retries: bool,
    /// TTL of the edges' DNS answers for `payments.lab.`.
    pub dns_ttl: Duration,
}

impl Default for EdgeTuning {
    fn default() -> Self {
        EdgeTuning {
            interval_ms: 200,
            timeout_ms: 150,
            fall: 3,
            rise: 3,
            try_timeout_ms: 300,
            retries: true,
            dns_ttl: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegionSpec {
    pub name: String,
    /// 1-based; the third octet of the region's subnet.
    pub index: u8,
    pub serves_traffic: bool,
}

impl RegionSpec {
    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, self.index, host))
    }

    pub fn client_label(&self) -> String {
        format!("clients@{}", self.name)
    }
}

pub fn default_regions() -> Vec<RegionSpec> {
    vec![
        RegionSpec {
            name: "us-east".into(),
            index: 1,
            serves_traffic: true,
        },
        RegionSpec {
            name: "us-west".into(),
            index: 2,
            serves_traffic: true,
        },
        RegionSpec {
            name: "witness".into(),
            index: 3,
            serves_traffic: false,
        },
    ]
}

/// A serving region's processes and addresses.
pub struct RegionRuntime {
    pub spec: RegionSpec,
    pub service_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The edge's DNS server (UDP and TCP).
    pub dns_addr: SocketAddr,
    service: Option<Proc>,
    edge: Option<Proc>,
    /// How this region's edge reaches each serving region's service, in failover order.
    backend_paths: Vec<(String, SocketAddr)>,
}

impl RegionRuntime {
    pub fn is_running(&self) -> bool {
        self.edge.is_some()
    }
}

pub struct Deployment {
    pub regions: Vec<RegionSpec>,
    pub serving: Vec<RegionRuntime>,
    pub wan: Wan,
    pub one_way_delay: Duration,
    binary: PathBuf,
    dir: PathBuf,
    tuning: EdgeTuning,
}

const READY_TIMEOUT: Duration = Duration::from_secs(15);

impl Deployment {
    /// Starts every process and link; returns once all edges serve.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        regions: Vec<RegionSpec>,
        one_way_delay: Duration,
        tuning: EdgeTuning,
    ) -> Result<Deployment> {
        let wan = Wan::new();
        let serving_specs: Vec<RegionSpec> = regions
            .iter()
            .filter(|r| r.serves_traffic)
            .cloned()
            .collect();

        // Services first: edges need their addresses.
        let mut services = Vec::new();
        for r in &serving_specs {
            let store = dir.join(format!("{}.store", r.name));
            std::fs::write(&store, b"ok").context("create the sample store file")?;
            let (proc, addr) = start_service(binary, dir, r, SocketAddr::new(r.ip(10), 0)).await?;
            services.push((proc, addr));
        }

        let mut serving = Vec::new();
        for (j, r) in serving_specs.iter().enumerate() {
            let mut backend_paths = Vec::new();
            for (i, other) in serving_specs.iter().enumerate() {
                let target = services[i].1;
                let addr = if i == j {
                    target
                } else {
                    wan.add_link(
                        &r.name,
                        &other.name,
                        SocketAddr::new(r.ip(100), 0),
                        target,
                        one_way_delay,
                    )
                    .await
                    .with_context(|| format!("WAN link {} -> {}", r.name, other.name))?
                };
                backend_paths.push((other.name.clone(), addr));
            }
            serving.push(RegionRuntime {
                spec: r.clone(),
                service_addr: services[j].1,
                edge_addr: SocketAddr::new(r.ip(1), 0),
                admin_addr: SocketAddr::new(r.ip(1), 0),
                dns_addr: SocketAddr::new(r.ip(1), 0),
                service: None,
                edge: None,
                backend_paths,
            });
        }
        for (rt, (proc, _)) in serving.iter_mut().zip(services) {
            rt.service = Some(proc);
        }
        let mut deployment = Deployment {
            regions,
            serving,
            wan,
            one_way_delay,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            tuning,
        };
        for i in 0..deployment.serving.len() {
            deployment.start_edge(i).await?;
        }
        Ok(deployment)
    }

    fn edge_config(&self, rt: &RegionRuntime) -> String {
        let t = &self.tuning;
        let mut out = String::new();
        for r in &self.regions {
            out.push_str(&format!(
                "[[region]]\nname = \"{}\"\nserves_traffic = {}\n\n",
                r.name, r.serves_traffic
            ));
        }
        out.push_str(&format!(
            "[edge]\nregion = \"{}\"\nlisten = \"{}\"\nadmin = \"{}\"\nrequest_timeout = \"5s\"\ntry_timeout = \"{}ms\"\nshutdown_grace = \"1s\"\n\n",
            rt.spec.name, rt.edge_addr, rt.admin_addr, t.try_timeout_ms
        ));
        if !t.retries {
            out.push_str("retry_budget = 0.0\nretry_min_per_second = 0\n\n");
        }
        out.push_str(
            "[service.payments]\npolicy = \"failover\"\nwhen_all_unhealthy = \"fail-open\"\n\
             outlier = { consecutive_failures = 3, base_ejection = \"2s\", max_ejection = \"30s\" }\n\n",
        );
        for (region, addr) in &rt.backend_paths {
            out.push_str(&format!(
                "[[service.payments.backend]]\nregion = \"{region}\"\nurl = \"http://{addr}\"\n\
                 health = {{ path = \"/health\", interval = \"{}ms\", timeout = \"{}ms\", fall = {}, rise = {} }}\n\n",
                t.interval_ms, t.timeout_ms, t.fall, t.rise
            ));
        }
        let serving: Vec<RegionSpec> = self
            .regions
            .iter()
            .filter(|r| r.serves_traffic)
            .cloned()
            .collect();
        out.push_str(&crate::dns_client::edge_dns_config(
            rt.dns_addr,
            &serving,
            t.dns_ttl,
        ));
        out
    }

    async fn start_edge(&mut self, i: usize) -> Result<()> {
        let config = self.edge_config(&self.serving[i]);
        let rt = &mut self.serving[i];
        let path = self.dir.join(format!("edge-{}.toml", rt.spec.name));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let args = vec![
            "edge".to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        let name = format!("edge-{}", rt.spec.name);
        let (proc, words) =
            Proc::start(&name, &self.binary, &args, &self.dir, READY_TIMEOUT).await?;
        // "listening on ADDR admin ADDR dns ADDR"
        rt.edge_addr = words
            .first()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| anyhow!("{name} printed no listen address"))?;
        rt.admin_addr = words
            .get(2)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| anyhow!("{name} printed no admin address"))?;
        // "... dns ADDR": kept, so that a restarted edge answers DNS where it did.
        rt.dns_addr = match (words.get(3).map(String::as_str), words.get(4)) {
            (Some("dns"), Some(w)) => w
                .parse()
                .map_err(|_| anyhow!("{name} printed a bad DNS address"))?,
            _ => return Err(anyhow!("{name} printed no DNS address")),
        };
        rt.edge = Some(proc);
        Ok(())
    }

    /// Adds WAN links for clients located in each region toward every edge,
    /// and returns, per region, the edges in order of nearness.
    pub async fn client_paths(
        &self,
        local_delay: Duration,
    ) -> Result<Vec<(String, Vec<EdgePath>)>> {
        let mut out = Vec::new();
        for r in self.regions.iter().filter(|r| r.serves_traffic) {
            let mut paths = Vec::new();
            // Own region first, then the others in index order.
            let mut order: Vec<&RegionRuntime> = self.serving.iter().collect();
            order.sort_by_key(|rt| (rt.spec.name != r.name, rt.spec.index));
            for rt in order {
                let delay = if rt.spec.name == r.name {
                    local_delay
                } else {
                    self.one_way_delay
                };
                let addr = self
                    .wan
                    .add_link(
                        &r.client_label(),
                        &rt.spec.name,
                        SocketAddr::new(r.ip(200), 0),
                        rt.edge_addr,
                        delay,
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "WAN link for clients of {} to edge {}",
                            r.name, rt.spec.name
                        )
                    })?;
                paths.push(EdgePath {
                    region: rt.spec.name.clone(),
                    addr,
                });
            }
            out.push((r.name.clone(), paths));
        }
        Ok(out)
    }

    fn runtime_mut(&mut self, region: &str) -> Result<usize> {
        self.serving
            .iter()
            .position(|rt| rt.spec.name == region)
            .ok_or_else(|| anyhow!("no serving region named {region}"))
    }

    /// Kills every process of a region outright.
    pub async fn kill_region(&mut self, region: &str) -> Result<()> {
        let i = self.runtime_mut(region)?;
        let rt = &mut self.serving[i];
        if let Some(mut p) = rt.edge.take() {
            p.kill().await;
        }
        if let Some(mut p) = rt.service.take() {
            p.kill().await;
        }
        Ok(())
    }

    /// Starts a killed region's processes again on the same addresses.
    pub async fn restart_region(&mut self, region: &str) -> Result<()> {
        let i = self.runtime_mut(region)?;
        if self.serving[i].service.is_none() {
            let spec = self.serving[i].spec.clone();
            let addr = self.serving[i].service_addr;
            let (proc, _) = start_service(&self.binary, &self.dir, &spec, addr).await?;
            self.serving[i].service = Some(proc);
        }
        if self.serving[i].edge.is_none() {
            self.start_edge(i).await?;
        }
        Ok(())
    }

    /// Stops everything: edges first (they drain), then services, then the WAN.
    pub async fn shutdown(&mut self) {
        for rt in &mut self.serving {
            if let Some(mut p) = rt.edge.take() {
                p.stop(Duration::from_secs(3)).await;
            }
        }
        for rt in &mut self.serving {
            if let Some(mut p) = rt.service.take() {
                p.stop(Duration::from_secs(3)).await;
            }
        }
        self.wan.shutdown();
    }

    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

async fn start_service(
    binary: &Path,
    dir: &Path,
    r: &RegionSpec,
    listen: SocketAddr,
) -> Result<(Proc, SocketAddr)> {
    let store = dir.join(format!("{}.store", r.name));
    let args = vec![
        "sample-service".to_string(),
        "--listen".to_string(),
        listen.to_string(),
        "--region".to_string(),
        r.name.clone(),
        "--dep".to_string(),
        format!("store=file:{},critical", store.display()),
        "--dep".to_string(),
        "cache=always:ok".to_string(),
    ];
    let name = format!("service-{}", r.name);
    let (proc, words) = Proc::start(&name, binary, &args, dir, READY_TIMEOUT).await?;
    let addr = words
        .first()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("{name} printed no listen address"))?;
    Ok((proc, addr))
}
