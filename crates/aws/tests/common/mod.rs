//! Test harness: a real moto server on loopback, and a fault-injecting proxy
//! in front of it.
//!
//! - [`Moto::start`] uses `RUNFLEET_MOTO_URL` when set; otherwise it spawns
//!   `moto_server -H 127.0.0.1 -p <free port>` (binary from
//!   `RUNFLEET_MOTO_SERVER`, `/root/.cache/runfleet-venv/bin/moto_server`, or
//!   `PATH`), waits until it answers (bounded poll), and kills it on drop.
//!   Without moto a test fails when `CI` is set and prints a skip notice
//!   otherwise.
//! - [`Proxy`] forwards every request to moto and can answer chosen
//!   operations with an AWS error (per protocol: EC2 XML, query XML for STS,
//!   JSON for SSM), lose the answer of a call that moto did execute, delay a
//!   call, or enforce EC2-shaped token buckets. It counts requests per
//!   operation (`ec2:RunInstances`, `ssm:PutParameter`, `sts:AssumeRole`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::{Credentials, SharedCredentialsProvider};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use runfleet_core::bucket::TokenBucket;

pub const REGION: &str = "us-east-1";

/// A moto server for one test.
pub struct Moto {
    pub url: String,
    child: Option<Child>,
}

/// The `moto_server` to run: `RUNFLEET_MOTO_SERVER`, the default
/// virtualenv, or `PATH`.
pub fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNFLEET_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from("/root/.cache/runfleet-venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Whether `GET /moto-api/` answers 200 on `port`.
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200")
}

impl Moto {
    /// A running moto, or `None` (after a skip notice) when there is none
    /// and `CI` is not set.
    pub fn start(test: &str) -> Option<Moto> {
        if let Ok(url) = std::env::var("RUNFLEET_MOTO_URL") {
            return Some(Moto { url, child: None });
        }
        let Some(bin) = moto_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{test}: moto_server not found (set RUNFLEET_MOTO_URL or RUNFLEET_MOTO_SERVER, \
                     or pip install 'moto[server]' into /root/.cache/runfleet-venv)"
                );
            }
            eprintln!("SKIP {test}: moto_server not found; install moto[server] to run it");
            return None;
        };
        let port = free_port();
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if answers(port) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{test}: moto_server exited early: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{test}: moto_server did not answer within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Moto {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An SDK config for a local endpoint: fixed region, dummy keys, no
/// process environment involved.
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    sdk_config_with_keys(endpoint, "AKIDRUNFLEETTEST", "not-a-secret")
}

pub fn sdk_config_with_keys(endpoint: &str, key: &str, secret: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            key, secret, None, None, "test",
        )))
        .build()
}

/// What the proxy does to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this AWS error without forwarding. In `message`, `{body}` is
    /// replaced by the request body (to test that echoes are scrubbed).
    Aws {
        status: u16,
        code: String,
        message: String,
    },
    /// Forward (moto executes it), then answer 503 `Unavailable`.
    LoseAnswer,
    /// Wait, then forward.
    Delay(Duration),
}

impl Fault {
    pub fn aws(status: u16, code: &str) -> Fault {
        Fault::Aws {
            status,
            code: code.to_string(),
            message: format!("injected {code}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    op: String,
    body_contains: Vec<String>,
    fault: Fault,
    remaining: Option<u32>,
}

#[derive(Default)]
struct ProxyState {
    upstream: String,
    client: Option<reqwest::Client>,
    rules: Mutex<Vec<Rule>>,
    received: Mutex<BTreeMap<String, u64>>,
    rejected: Mutex<BTreeMap<String, u64>>,
    faulted: Mutex<BTreeMap<String, u64>>,
    bodies: Mutex<HashMap<String, Vec<String>>>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    started: Option<Instant>,
}

/// A fault-injecting HTTP proxy on 127.0.0.1:0 in front of moto.
pub struct Proxy {
    pub url: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: Some(reqwest::Client::new()),
            started: Some(Instant::now()),
            ..ProxyState::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { url, state, task }
    }

    fn add(&self, op: &str, body_contains: &[&str], fault: Fault, times: Option<u32>) {
        self.state.rules.lock().unwrap().push(Rule {
            op: op.to_string(),
            body_contains: body_contains.iter().map(|s| s.to_string()).collect(),
            fault,
            remaining: times,
        });
    }
    /// Every request of `op` gets `fault`.
    pub fn fail(&self, op: &str, fault: Fault) {
        self.add(op, &[], fault, None);
    }
    /// The next `n` requests of `op` get `fault`.
    pub fn fail_times(&self, op: &str, n: u32, fault: Fault) {
        self.add(op, &[], fault, Some(n));
    }
    /// Requests of `op` whose (form-decoded) body contains every string get `fault`.
    pub fn fail_when(&self, op: &str, body_contains: &[&str], fault: Fault) {
        self.add(op, body_contains, fault, None);
    }
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }
    /// Enforces token buckets per operation, answering `RequestLimitExceeded`
    /// (HTTP 503) when one is empty, as EC2 does.
    pub fn buckets(&self, shapes: &[(&str, u32, f64)]) {
        let now = self.now_ms();
        let mut b = self.state.buckets.lock().unwrap();
        b.clear();
        for (op, cap, rate) in shapes {
            b.insert(op.to_string(), TokenBucket::new(*cap, *rate, now));
        }
    }
    fn now_ms(&self) -> u64 {
        self.state.started.unwrap().elapsed().as_millis() as u64
    }
    /// Requests of `op` received (faulted and rejected ones included).
    pub fn count(&self, op: &str) -> u64 {
        self.state
            .received
            .lock()
            .unwrap()
            .get(op)
            .copied()
            .unwrap_or(0)
    }
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.received.lock().unwrap().clone()
    }
    /// Requests rejected by the simulated buckets, by operation.
    pub fn rejected(&self) -> BTreeMap<String, u64> {
        self.state.rejected.lock().unwrap().clone()
    }
    pub fn faulted(&self, op: &str) -> u64 {
        self.state
            .faulted
            .lock()
            .unwrap()
            .get(op)
            .copied()
            .unwrap_or(0)
    }
    /// The decoded bodies of the requests of `op`, in order.
    pub fn bodies(&self, op: &str) -> Vec<String> {
        self.state
            .bodies
            .lock()
            .unwrap()
            .get(op)
            .cloned()
            .unwrap_or_default()
    }
    pub fn reset_counts(&self) {
        self.state.received.lock().unwrap().clear();
        self.state.rejected.lock().unwrap().clear();
        self.state.faulted.lock().unwrap().clear();
        self.state.bodies.lock().unwrap().clear();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The service from the SigV4 credential scope (`.../us-east-1/ec2/aws4_request`).
fn service_of(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split(',').next())
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or("unknown")
        .to_string()
}

/// `service:Operation` and the decoded body.
fn operation(headers: &HeaderMap, body: &[u8]) -> (String, String, bool) {
    let service = service_of(headers);
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let op = target.rsplit('.').next().unwrap_or(target);
        return (
            format!("{service}:{op}"),
            String::from_utf8_lossy(body).into_owned(),
            true,
        );
    }
    let raw = String::from_utf8_lossy(body);
    let decoded: Vec<String> = raw.split('&').map(percent_decode).collect();
    let op = decoded
        .iter()
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_string();
    (format!("{service}:{op}"), decoded.join("&"), false)
}

fn error_response(service: &str, json: bool, status: u16, code: &str, message: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let (ctype, body) = if json {
        (
            "application/x-amz-json-1.1",
            serde_json::json!({"__type": code, "message": message}).to_string(),
        )
    } else if service == "ec2" {
        (
            "text/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>proxy-injected</RequestID></Response>",
                esc(code),
                esc(message)
            ),
        )
    } else {
        (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>proxy-injected</RequestId></ErrorResponse>",
                esc(code),
                esc(message)
            ),
        )
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(ctype));
    if json {
        r.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_str(code).unwrap());
    }
    r
}

async fn handle(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let (op, decoded, json) = operation(&parts.headers, &body);
    let service = op.split(':').next().unwrap_or("").to_string();
    *st.received.lock().unwrap().entry(op.clone()).or_default() += 1;
    st.bodies
        .lock()
        .unwrap()
        .entry(op.clone())
        .or_default()
        .push(decoded.clone());

    // EC2-shaped buckets.
    {
        let now = st.started.unwrap().elapsed().as_millis() as u64;
        let mut buckets = st.buckets.lock().unwrap();
        if let Some(b) = buckets.get_mut(&op)
            && !b.try_take(1, now)
        {
            *st.rejected.lock().unwrap().entry(op.clone()).or_default() += 1;
            return error_response(
                &service,
                json,
                503,
                "RequestLimitExceeded",
                "Request limit exceeded.",
            );
        }
    }

    let fault = {
        let mut rules = st.rules.lock().unwrap();
        let hit = rules.iter_mut().find(|r| {
            r.op == op
                && r.remaining != Some(0)
                && r.body_contains.iter().all(|s| decoded.contains(s.as_str()))
        });
        hit.map(|r| {
            if let Some(n) = &mut r.remaining {
                *n -= 1;
            }
            r.fault.clone()
        })
    };
    let mut lose = false;
    if let Some(f) = fault {
        *st.faulted.lock().unwrap().entry(op.clone()).or_default() += 1;
        match f {
            Fault::Aws {
                status,
                code,
                message,
            } => {
                let message = message.replace("{body}", &decoded);
                return error_response(&service, json, status, &code, &message);
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::LoseAnswer => lose = true,
        }
    }

    let url = format!(
        "{}{}",
        st.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let client = st.client.as_ref().unwrap();
    let mut fwd = client.request(parts.method.clone(), &url);
    for (k, v) in &parts.headers {
        if k == "host" || k == "content-length" || k == "connection" {
            continue;
        }
        fwd = fwd.header(k, v);
    }
    let answer = fwd.body(body.to_vec()).send().await;
    let answer = match answer {
        Ok(a) => a,
        Err(_) => {
            return error_response(
                &service,
                json,
                502,
                "ProxyUpstreamError",
                "moto unreachable",
            );
        }
    };
    if lose {
        let _ = answer.bytes().await;
        return error_response(
            &service,
            json,
            503,
            "Unavailable",
            "answer lost in transit (injected)",
        );
    }
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    for (k, v) in &headers {
        if k == "transfer-encoding" || k == "connection" || k == "content-length" {
            continue;
        }
        r.headers_mut().insert(k, v.clone());
    }
    r
}

/// A VPC with two subnets and a launch template, made in moto for a test.
pub struct World {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub template_id: String,
    pub template_name: String,
    pub subnets: Vec<String>,
    pub ami: String,
}

impl World {
    /// Sets up in the account of `sdk`'s credentials (straight to moto).
    pub async fn create(sdk: &SdkConfig, name: &str) -> World {
        let ec2 = aws_sdk_ec2::Client::new(sdk);
        let ssm = aws_sdk_ssm::Client::new(sdk);
        let images = ec2.describe_images().send().await.expect("DescribeImages");
        let ami = images
            .images()
            .iter()
            .filter_map(|i| i.image_id())
            .next()
            .expect("moto knows an AMI")
            .to_string();
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.42.0.0/16")
            .send()
            .await
            .expect("CreateVpc");
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_string();
        let mut subnets = Vec::new();
        for (i, az) in ["us-east-1a", "us-east-1b"].iter().enumerate() {
            let s = ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(format!("10.42.{}.0/20", i * 16))
                .availability_zone(*az)
                .send()
                .await
                .expect("CreateSubnet");
            subnets.push(s.subnet().and_then(|s| s.subnet_id()).unwrap().to_string());
        }
        let template_name = format!("{name}-template");
        let lt = ec2
            .create_launch_template()
            .launch_template_name(&template_name)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&ami)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .expect("CreateLaunchTemplate");
        let template_id = lt
            .launch_template()
            .and_then(|t| t.launch_template_id())
            .unwrap()
            .to_string();
        World {
            ec2,
            ssm,
            template_id,
            template_name,
            subnets,
            ami,
        }
    }

    /// Ids of the instances tagged `key=value`, with their state names.
    pub async fn instances_tagged(&self, key: &str, value: &str) -> Vec<(String, String)> {
        let out = self
            .ec2
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build(),
            )
            .send()
            .await
            .expect("DescribeInstances");
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                (
                    i.instance_id().unwrap().to_string(),
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }
}
