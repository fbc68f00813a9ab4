//! Config loading and validation: the fixtures in `fixtures/config/` parse to
//! the values they say, every kind of bad input names its key and line, and
//! no secret value ever shows up in `Debug` output or an error.

use std::time::Duration;

use proptest::prelude::*;
use runfleet_core::config::{
    Arch, Config, ConfigError, ConfigErrorKind, MapSecrets, Market, Os, RunnerScope, WarmWindow,
    format_duration, parse, parse_duration,
};

const INTERFACE_EXAMPLE: &str = include_str!("fixtures/config/interface-example.toml");
const APP_AUTH: &str = include_str!("fixtures/config/app-auth.toml");
const MINIMAL: &str = include_str!("fixtures/config/minimal.toml");

const TOKEN: &str = "ghp_TOKEN-sentinel-7f3a9c";
const WEBHOOK: &str = "whsec-sentinel-1b2c3d";
const PRIVATE_KEY: &str =
    "-----BEGIN RSA PRIVATE KEY-----\nKEY-sentinel-9e8d7c\n-----END RSA PRIVATE KEY-----";
const EXTERNAL_ID: &str = "extid-sentinel-4455";
const POOL_EXTERNAL_ID: &str = "pool-extid-sentinel-6677";
const DB_PASSWORD: &str = "dbpass-sentinel-8899";

fn secrets() -> MapSecrets {
    MapSecrets::new()
        .with_env("GITHUB_TOKEN", TOKEN)
        .with_env("RUNFLEET_WEBHOOK_SECRET", WEBHOOK)
        .with_env("RUNFLEET_EXTERNAL_ID", EXTERNAL_ID)
        .with_env("RUNFLEET_INSTALLATION_ID", "678\n")
        .with_env("EXTRA_LABEL", "gpu")
        .with_env(
            "RUNFLEET_DATABASE_URL",
            format!("postgres://runfleet:{DB_PASSWORD}@db.internal:5432/runfleet"),
        )
        // A PEM file ends with a newline; exactly one is dropped.
        .with_file("/etc/runfleet/app.pem", format!("{PRIVATE_KEY}\n"))
        .with_file("/etc/runfleet/setup.sh", "#!/bin/sh\r\necho ready\r\n\r\n")
        .with_file(
            "/etc/runfleet/pool-external-id",
            format!("{POOL_EXTERNAL_ID}\r\n"),
        )
}

fn ok(text: &str) -> Config {
    match parse(text, &secrets()) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got: {e}"),
    }
}

fn err(text: &str) -> ConfigError {
    err_with(text, &secrets())
}

fn err_with(text: &str, secrets: &MapSecrets) -> ConfigError {
    match parse(text, secrets) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e,
    }
}

#[test]
fn interface_example_parses() {
    let c = ok(INTERFACE_EXAMPLE);
    assert_eq!(c.fleet, "acme-ci");

    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.store, "sqlite://runfleet.db");
    assert_eq!(c.server.reconcile_interval, Duration::from_secs(30));
    assert_eq!(c.server.completed_grace, Duration::from_secs(60));
    assert_eq!(c.server.boot_timeout, Duration::from_secs(600));

    assert_eq!(c.github.api_url, "https://api.github.com");
    assert_eq!(
        c.github.webhook_secret.as_ref().map(|s| s.expose()),
        Some(WEBHOOK)
    );
    assert_eq!(c.github.token.as_ref().map(|s| s.expose()), Some(TOKEN));
    assert_eq!(c.github.app_id, None);
    assert!(c.github.app_private_key.is_none());
    assert_eq!(c.github.installation_id, None);
    assert_eq!(
        c.github.repos,
        Some(vec!["acme/app".to_owned(), "acme/lib".to_owned()])
    );
    assert!(!c.github.poll);

    assert_eq!(c.aws.region.as_deref(), Some("eu-west-2"));
    assert_eq!(c.aws.role_arn, None);
    assert!(c.aws.external_id.is_none());

    assert_eq!(c.pools.len(), 1);
    let p = &c.pools[0];
    assert_eq!(p.name, "linux-x64");
    assert_eq!(p.labels, ["self-hosted", "linux", "x64"]);
    assert_eq!(p.launch_template, "lt-0123456789abcdef0");
    assert_eq!(p.launch_template_version, None);
    assert_eq!(p.instance_types, ["m7i.large", "m6i.large", "m5.large"]);
    assert_eq!(p.subnets, ["subnet-aaa", "subnet-bbb"]);
    assert_eq!(p.market, Market::SpotThenOnDemand);
    assert_eq!(p.os, Os::Linux);
    assert_eq!(p.arch, Arch::X64);
    assert_eq!(p.max_runners, 50);
    assert_eq!(p.warm, 0);
    assert_eq!(p.runner_scope, RunnerScope::Repo);
    assert_eq!(p.runner_group_id, 1);
    assert_eq!(p.max_lifetime, Duration::from_secs(6 * 3600));
    assert_eq!(p.runner_version, None);
    assert_eq!(p.setup_script, None);
    assert_eq!(p.role_arn, None);
    assert!(p.external_id.is_none());

    assert_eq!(c.pool("linux-x64").map(|p| p.max_runners), Some(50));
    assert!(c.pool("nope").is_none());
    assert_eq!(Config::parse(INTERFACE_EXAMPLE, &secrets()), Ok(c));
}

#[test]
fn every_optional_key_parses() {
    let c = ok(APP_AUTH);
    assert_eq!(c.fleet, "acme-prod");
    assert_eq!(c.server.listen, "[::]:9090");
    assert_eq!(
        c.server.store,
        format!("postgres://runfleet:{DB_PASSWORD}@db.internal:5432/runfleet")
    );
    assert_eq!(c.server.reconcile_interval, Duration::from_secs(90));
    assert_eq!(c.server.completed_grace, Duration::ZERO);
    assert_eq!(c.server.boot_timeout, Duration::from_secs(900));

    // The trailing slash is dropped so that clients can append paths.
    assert_eq!(c.github.api_url, "https://ghe.acme.example/api/v3");
    assert!(c.github.token.is_none());
    assert!(
        c.github.webhook_secret.is_none(),
        "optional with poll = true"
    );
    assert_eq!(c.github.app_id, Some(12345));
    assert_eq!(
        c.github.app_private_key.as_ref().map(|s| s.expose()),
        Some(PRIVATE_KEY)
    );
    assert_eq!(
        c.github.installation_id,
        Some(678),
        "integer read through env:"
    );
    assert_eq!(c.github.repos, None, "App auth may leave repos out");
    assert!(c.github.poll);

    assert_eq!(c.aws.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        c.aws.role_arn.as_deref(),
        Some("arn:aws:iam::123456789012:role/runfleet")
    );
    assert_eq!(
        c.aws.external_id.as_ref().map(|s| s.expose()),
        Some(EXTERNAL_ID)
    );

    let arm = &c.pools[0];
    assert_eq!(arm.name, "linux-arm64");
    assert_eq!(
        arm.labels,
        ["self-hosted", "linux", "ARM64", "gpu"],
        "env: inside an array"
    );
    assert_eq!(arm.launch_template, "runfleet-linux-arm64");
    assert_eq!(arm.launch_template_version.as_deref(), Some("7"));
    assert_eq!(arm.instance_types, ["m7g.large", "m6g.large"]);
    assert_eq!(arm.subnets, ["subnet-0aaa", "subnet-0bbb", "subnet-0ccc"]);
    assert_eq!(arm.market, Market::Spot);
    assert_eq!(arm.os, Os::Linux);
    assert_eq!(arm.arch, Arch::Arm64);
    assert_eq!(arm.max_runners, 200);
    assert_eq!(arm.warm, 5);
    assert_eq!(arm.runner_scope, RunnerScope::Org);
    assert_eq!(arm.runner_group_id, 3);
    assert_eq!(arm.max_lifetime, Duration::from_secs(36 * 3600));
    assert_eq!(arm.runner_version.as_deref(), Some("2.330.0"));
    // One trailing "\r\n" dropped, the blank line before it kept.
    assert_eq!(
        arm.setup_script.as_deref(),
        Some("#!/bin/sh\r\necho ready\r\n")
    );
    assert_eq!(
        arm.role_arn.as_deref(),
        Some("arn:aws:iam::210987654321:role/runfleet-builds")
    );
    assert_eq!(
        arm.external_id.as_ref().map(|s| s.expose()),
        Some(POOL_EXTERNAL_ID)
    );

    let win = &c.pools[1];
    assert_eq!(win.name, "windows");
    assert_eq!(win.os, Os::Windows);
    assert_eq!(win.arch, Arch::X64);
    assert_eq!(win.market, Market::SpotThenOnDemand);
    assert_eq!(win.max_lifetime, Duration::from_secs(6 * 3600));
}

#[test]
fn defaults_fill_everything_optional() {
    let c = ok(MINIMAL);
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.store, "sqlite://runfleet.db");
    assert_eq!(c.server.reconcile_interval, Duration::from_secs(30));
    assert_eq!(c.server.completed_grace, Duration::from_secs(60));
    assert_eq!(c.server.boot_timeout, Duration::from_secs(600));
    assert_eq!(c.server.lease_ttl, Duration::from_secs(15));
    assert_eq!(c.server.launch_batch_window, Duration::from_millis(25));
    assert_eq!(c.server.launch_batch_max, 20);
    assert_eq!(c.github.api_url, "https://api.github.com");
    assert!(!c.github.poll);
    assert_eq!(c.aws.region, None);
    let p = &c.pools[0];
    assert!(p.subnets.is_empty());
    assert_eq!(p.market, Market::OnDemand);
    assert_eq!(p.os, Os::Linux);
    assert_eq!(p.arch, Arch::X64);
    assert_eq!(p.max_runners, 10);
    assert_eq!(p.warm, 0);
    assert_eq!(p.runner_scope, RunnerScope::Repo);
    assert_eq!(p.runner_group_id, 1);
    assert_eq!(p.max_lifetime, Duration::from_secs(6 * 3600));
}

// ---------------------------------------------------------------------------
// Bad inputs: each names the key and the line
// ---------------------------------------------------------------------------

/// A valid config, one line per entry, edited line by line by [`edit`].
const BASE: &[&str] = &[
    "fleet = \"acme-ci\"",
    "",
    "[server]",
    "boot_timeout = \"10m\"",
    "",
    "[github]",
    "token = \"env:GITHUB_TOKEN\"",
    "webhook_secret = \"env:RUNFLEET_WEBHOOK_SECRET\"",
    "repos = [\"acme/app\"]",
    "",
    "[[pool]]",
    "name = \"linux\"",
    "labels = [\"self-hosted\", \"linux\"]",
    "launch_template = \"lt-0123456789abcdef0\"",
    "instance_types = [\"m7i.large\"]",
    "",
    "[[pool]]",
    "name = \"arm\"",
    "labels = [\"self-hosted\", \"arm64\"]",
    "launch_template = \"lt-0123456789abcdef0\"",
    "instance_types = [\"m7g.large\"]",
    "arch = \"arm64\"",
];

/// BASE with whole lines replaced (`new` may hold several lines or none).
fn edit(edits: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = BASE.iter().map(|l| (*l).to_owned()).collect();
    for (old, new) in edits {
        let i = lines
            .iter()
            .position(|l| l == old)
            .unwrap_or_else(|| panic!("no line {old:?} in BASE"));
        lines[i] = (*new).to_owned();
    }
    lines.join("\n") + "\n"
}

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        + 1
}

/// Asserts the error's key, its line (that of the first line containing
/// `at`) and its whole one-line rendering `<display> (line N)`.
fn assert_error(text: &str, at: &str, key: &str, display: &str) -> ConfigError {
    let e = err(text);
    let line = line_of(text, at);
    assert_eq!(e.to_string(), format!("{display} (line {line})"));
    assert_eq!(e.key(), Some(key));
    assert_eq!(e.line(), Some(line));
    e
}

#[test]
fn base_is_valid() {
    let c = ok(&edit(&[]));
    assert_eq!(c.pools.len(), 2);
}

#[test]
fn unknown_key_at_top_level() {
    let text = edit(&[("", "flet = \"typo\"")]);
    let e = assert_error(&text, "flet", "flet", "unknown key `flet`");
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
}

#[test]
fn unknown_key_in_pool() {
    let text = edit(&[(
        "instance_types = [\"m7i.large\"]",
        "instnce_types = [\"m7i.large\"]",
    )]);
    let e = assert_error(
        &text,
        "instnce_types",
        "pool[0].instnce_types",
        "unknown key `instnce_types` in pool[0]",
    );
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);

    let text = edit(&[("arch = \"arm64\"", "arch = \"arm64\"\nmin_runners = 1")]);
    assert_error(
        &text,
        "min_runners",
        "pool[1].min_runners",
        "unknown key `min_runners` in pool[1]",
    );
}

#[test]
fn unknown_key_in_sections_and_inline_tables() {
    let text = edit(&[(
        "boot_timeout = \"10m\"",
        "boot_timeout = \"10m\"\nport = 8080",
    )]);
    assert_error(&text, "port", "server.port", "unknown key `port` in server");

    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\"]\n[github.app]\nid = 1",
    )]);
    assert_error(
        &text,
        "[github.app]",
        "github.app",
        "unknown key `app` in github",
    );

    let text = edit(&[("", "aws = { region = \"eu-west-2\", regoin = \"x\" }")]);
    assert_error(&text, "regoin", "aws.regoin", "unknown key `regoin` in aws");
}

#[test]
fn wrong_types() {
    let text = edit(&[("boot_timeout = \"10m\"", "listen = 8080")]);
    let e = assert_error(
        &text,
        "listen",
        "server.listen",
        "server.listen: expected a string, found an integer",
    );
    assert_eq!(e.kind(), ConfigErrorKind::WrongType);

    let text = edit(&[("name = \"arm\"", "name = \"arm\"\nmax_runners = \"50\"")]);
    assert_error(
        &text,
        "max_runners",
        "pool[1].max_runners",
        "pool[1].max_runners: expected an integer, found a string (write the number without quotes)",
    );

    let text = edit(&[(
        "labels = [\"self-hosted\", \"linux\"]",
        "labels = \"self-hosted\"",
    )]);
    assert_error(
        &text,
        "labels = \"self",
        "pool[0].labels",
        "pool[0].labels: expected an array, found a string",
    );

    let text = edit(&[(
        "labels = [\"self-hosted\", \"linux\"]",
        "labels = [\"self-hosted\", 42]",
    )]);
    assert_error(
        &text,
        "42",
        "pool[0].labels[1]",
        "pool[0].labels[1]: expected a string, found an integer",
    );

    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\"]\npoll = \"yes\"",
    )]);
    assert_error(
        &text,
        "poll",
        "github.poll",
        "github.poll: expected true or false, found a string (write it without quotes)",
    );

    let text = edit(&[("fleet = \"acme-ci\"", "fleet = 1979-05-27")]);
    assert_error(
        &text,
        "fleet",
        "fleet",
        "fleet: expected a string, found a datetime",
    );

    let text = edit(&[
        ("[server]", "server = \"fast\""),
        ("boot_timeout = \"10m\"", ""),
    ]);
    assert_error(
        &text,
        "server",
        "server",
        "server: expected a table, found a string",
    );

    // `[pool]` instead of `[[pool]]`: only one of the two pools, as a table.
    let text = edit(&[("[[pool]]", "[pool]"), ("[[pool]]", "[x]")]);
    let e = err(&text);
    assert_eq!(e.key(), Some("pool"), "{e}");
    assert_eq!(e.line(), Some(line_of(&text, "[pool]")));
    assert_eq!(
        e.to_string(),
        format!(
            "pool: expected an array of [[pool]] tables, found a table (line {})",
            line_of(&text, "[pool]")
        )
    );
}

#[test]
fn integers_out_of_range_or_fractional() {
    let text = edit(&[("arch = \"arm64\"", "max_runners = 99999999999999999999")]);
    assert_error(
        &text,
        "max_runners",
        "pool[1].max_runners",
        "pool[1].max_runners: integer out of range",
    );
    let text = edit(&[("arch = \"arm64\"", "max_runners = 5000000000")]);
    assert_error(
        &text,
        "max_runners",
        "pool[1].max_runners",
        "pool[1].max_runners: must be between 1 and 4294967295",
    );
    let text = edit(&[("arch = \"arm64\"", "warm = 1.5")]);
    assert_error(
        &text,
        "warm",
        "pool[1].warm",
        "pool[1].warm: expected an integer, found a float",
    );
}

#[test]
fn launch_batching_keys() {
    let text = edit(&[(
        "boot_timeout = \"10m\"",
        "launch_batch_window = \"0s\"\nlaunch_batch_max = 1",
    )]);
    let c = ok(&text);
    assert_eq!(c.server.launch_batch_window, Duration::ZERO);
    assert_eq!(c.server.launch_batch_max, 1);
    let text = edit(&[("boot_timeout = \"10m\"", "launch_batch_max = 0")]);
    assert_error(
        &text,
        "launch_batch_max",
        "server.launch_batch_max",
        "server.launch_batch_max: must be between 1 and 1000",
    );
    let text = edit(&[("boot_timeout = \"10m\"", "launch_batch_window = \"soon\"")]);
    let e = err(&text);
    assert_eq!(e.key(), Some("server.launch_batch_window"));
    assert!(e.to_string().contains("invalid duration"), "{e}");
}

#[test]
fn wrong_type_of_secret_never_echoes_it() {
    let text = edit(&[("token = \"env:GITHUB_TOKEN\"", "token = 987654321012")]);
    let e = assert_error(
        &text,
        "987654321012",
        "github.token",
        "github.token: expected a string, found an integer",
    );
    assert!(!e.to_string().contains("987654321012"));
}

#[test]
fn bad_durations() {
    let text = edit(&[("boot_timeout = \"10m\"", "boot_timeout = \"10x\"")]);
    let e = assert_error(
        &text,
        "boot_timeout",
        "server.boot_timeout",
        "server.boot_timeout: invalid duration \"10x\": unknown unit \"x\" (use d, h, m, s or ms)",
    );
    assert_eq!(e.kind(), ConfigErrorKind::Invalid);

    for bad in ["", "10", "-5s", "1.5h", "30m1h"] {
        let text = edit(&[(
            "boot_timeout = \"10m\"",
            &format!("reconcile_interval = \"{bad}\""),
        )]);
        let e = err(&text);
        assert_eq!(e.key(), Some("server.reconcile_interval"), "{bad:?}: {e}");
        assert_eq!(e.line(), Some(4), "{bad:?}: {e}");
        assert!(
            e.message()
                .starts_with(&format!("invalid duration \"{bad}\": ")),
            "{e}"
        );
    }

    let text = edit(&[("boot_timeout = \"10m\"", "boot_timeout = \"0s\"")]);
    assert_error(
        &text,
        "boot_timeout",
        "server.boot_timeout",
        "server.boot_timeout: must be longer than zero",
    );
    let text = edit(&[("boot_timeout = \"10m\"", "reconcile_interval = \"0ms\"")]);
    assert_error(
        &text,
        "reconcile_interval",
        "server.reconcile_interval",
        "server.reconcile_interval: must be longer than zero",
    );
    let text = edit(&[("arch = \"arm64\"", "max_lifetime = \"0h\"")]);
    assert_error(
        &text,
        "max_lifetime",
        "pool[1].max_lifetime",
        "pool[1].max_lifetime: must be longer than zero",
    );
    let text = edit(&[("boot_timeout = \"10m\"", "lease_ttl = \"0s\"")]);
    assert_error(
        &text,
        "lease_ttl",
        "server.lease_ttl",
        "server.lease_ttl: must be longer than zero",
    );
    let text = edit(&[("boot_timeout = \"10m\"", "lease_ttl = \"2s\"")]);
    assert_eq!(ok(&text).server.lease_ttl, Duration::from_secs(2));
    // Zero grace is meaningful: terminate as soon as the job completed.
    let text = edit(&[("boot_timeout = \"10m\"", "completed_grace = \"0s\"")]);
    assert_eq!(ok(&text).server.completed_grace, Duration::ZERO);

    let text = edit(&[("arch = \"arm64\"", "max_lifetime = \"10m\"")]);
    assert_error(
        &text,
        "max_lifetime",
        "pool[1].max_lifetime",
        "pool[1].max_lifetime: must be longer than server.boot_timeout (10m)",
    );
}

#[test]
fn pool_without_labels() {
    let text = edit(&[("labels = [\"self-hosted\", \"arm64\"]", "")]);
    let e = err(&text);
    assert_eq!(e.kind(), ConfigErrorKind::Missing);
    assert_eq!(e.key(), Some("pool[1].labels"));
    // The line of the pool's `[[pool]]` header.
    assert_eq!(e.line(), Some(17));
    assert_eq!(
        e.to_string(),
        "pool[1].labels: required key is missing (line 17)"
    );

    let text = edit(&[("labels = [\"self-hosted\", \"linux\"]", "labels = []")]);
    assert_error(
        &text,
        "labels = []",
        "pool[0].labels",
        "pool[0].labels: must not be empty",
    );
}

#[test]
fn pool_with_empty_instance_types() {
    let text = edit(&[("instance_types = [\"m7g.large\"]", "instance_types = []")]);
    assert_error(
        &text,
        "instance_types = []",
        "pool[1].instance_types",
        "pool[1].instance_types: must not be empty",
    );

    let text = edit(&[(
        "instance_types = [\"m7i.large\"]",
        "instance_types = [\"m7i.large\", \"m6i.large\", \"m7i.large\"]",
    )]);
    assert_error(
        &text,
        "instance_types",
        "pool[0].instance_types[2]",
        "pool[0].instance_types[2]: duplicate of instance_types[0]",
    );
}

#[test]
fn duplicate_pool_names() {
    let text = edit(&[("name = \"arm\"", "name = \"linux\"")]);
    let e = err(&text);
    assert_eq!(
        e.to_string(),
        "pool[1].name: duplicate pool name (also pool[0]) (line 18)"
    );
    assert_eq!(e.key(), Some("pool[1].name"));
}

#[test]
fn unreadable_file() {
    let text = edit(&[(
        "token = \"env:GITHUB_TOKEN\"",
        "app_id = 1\napp_private_key = \"file:/etc/runfleet/missing.pem\"",
    )]);
    let e = assert_error(
        &text,
        "app_private_key",
        "github.app_private_key",
        "github.app_private_key: cannot read file /etc/runfleet/missing.pem: no such file",
    );
    assert_eq!(e.kind(), ConfigErrorKind::Indirection);
}

#[test]
fn errors_stay_on_one_line() {
    // A TOML escape can put a newline into a path or a key name.
    let text = edit(&[(
        "token = \"env:GITHUB_TOKEN\"",
        "app_id = 1\napp_private_key = \"file:/etc/a\\nb.pem\"",
    )]);
    assert_error(
        &text,
        "app_private_key",
        "github.app_private_key",
        "github.app_private_key: cannot read file /etc/a\\nb.pem: no such file",
    );

    let text = edit(&[("", "\"odd\\nkey\" = 1")]);
    let e = assert_error(&text, "odd", "odd\\nkey", "unknown key `odd\\nkey`");
    assert!(!e.to_string().contains('\n'));

    // A reason from the secret source with a newline in it.
    struct Noisy;
    impl runfleet_core::config::SecretSource for Noisy {
        fn env(&self, _: &str) -> Option<String> {
            Some("v".to_owned())
        }
        fn read_file(&self, _: &str) -> Result<String, String> {
            Err("permission denied\n(os error 13)".to_owned())
        }
    }
    let text = edit(&[(
        "name = \"arm\"",
        "name = \"arm\"\nsetup_script = \"file:/s.sh\"",
    )]);
    let e = parse(&text, &Noisy).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "pool[1].setup_script: cannot read file /s.sh: permission denied; (os error 13) (line {})",
            line_of(&text, "setup_script")
        )
    );
}

#[test]
fn missing_env_var() {
    let text = edit(&[]);
    let without_token = MapSecrets::new().with_env("RUNFLEET_WEBHOOK_SECRET", WEBHOOK);
    let e = err_with(&text, &without_token);
    assert_eq!(
        e.to_string(),
        "github.token: environment variable GITHUB_TOKEN is not set (line 7)"
    );
    assert_eq!(e.kind(), ConfigErrorKind::Indirection);

    // Plain (non-secret) strings take indirection too, and fail the same way.
    let text = edit(&[("name = \"arm\"", "name = \"env:POOL_NAME\"")]);
    assert_error(
        &text,
        "POOL_NAME",
        "pool[1].name",
        "pool[1].name: environment variable POOL_NAME is not set",
    );

    let text = edit(&[(
        "webhook_secret = \"env:RUNFLEET_WEBHOOK_SECRET\"",
        "webhook_secret = \"env:\"",
    )]);
    assert_error(
        &text,
        "webhook_secret",
        "github.webhook_secret",
        "github.webhook_secret: \"env:\" needs a variable name",
    );

    // Set but empty: a secret must have a value.
    let empty = secrets().with_env("GITHUB_TOKEN", "");
    let e = err_with(&edit(&[]), &empty);
    assert_eq!(e.to_string(), "github.token: must not be empty (line 7)");
}

#[test]
fn github_auth_exactly_one() {
    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\"]\napp_id = 12\napp_private_key = \"file:/etc/runfleet/app.pem\"",
    )]);
    assert_error(
        &text,
        "token",
        "github.token",
        "github.token: set either token or the app_* keys, not both",
    );

    let text = edit(&[("token = \"env:GITHUB_TOKEN\"", "")]);
    let e = err(&text);
    assert_eq!(e.kind(), ConfigErrorKind::Missing);
    assert_eq!(
        e.to_string(),
        "github.token: GitHub auth is required: set token, or app_id and app_private_key (line 6)"
    );

    let text = edit(&[("token = \"env:GITHUB_TOKEN\"", "app_id = 12")]);
    assert_eq!(
        err(&text).to_string(),
        "github.app_private_key: required with app_id (line 6)"
    );

    let text = edit(&[(
        "token = \"env:GITHUB_TOKEN\"",
        "app_private_key = \"file:/etc/runfleet/app.pem\"",
    )]);
    assert_eq!(
        err(&text).to_string(),
        "github.app_id: required with app_private_key (line 6)"
    );

    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\"]\ninstallation_id = 5",
    )]);
    assert_error(
        &text,
        "installation_id",
        "github.installation_id",
        "github.installation_id: only with GitHub App auth (app_id and app_private_key)",
    );

    let text = edit(&[(
        "token = \"env:GITHUB_TOKEN\"",
        "app_id = 0\napp_private_key = \"file:/etc/runfleet/app.pem\"",
    )]);
    assert_error(
        &text,
        "app_id",
        "github.app_id",
        "github.app_id: must be at least 1",
    );
}

#[test]
fn repos_rules() {
    let text = edit(&[("repos = [\"acme/app\"]", "")]);
    assert_eq!(
        err(&text).to_string(),
        "github.repos: required with token auth (only GitHub App auth may leave it out) (line 6)"
    );

    let text = edit(&[("repos = [\"acme/app\"]", "repos = []")]);
    assert_error(
        &text,
        "repos",
        "github.repos",
        "github.repos: must not be empty",
    );

    let text = edit(&[("repos = [\"acme/app\"]", "repos = [\"acme/app\", \"acme\"]")]);
    assert_error(
        &text,
        "repos",
        "github.repos[1]",
        "github.repos[1]: must be \"owner/name\" or \"owner/*\" with GitHub's characters",
    );

    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\", \"ACME/App\"]",
    )]);
    assert_error(
        &text,
        "repos",
        "github.repos[1]",
        "github.repos[1]: duplicate of repos[0] (compared case-insensitively)",
    );
}

#[test]
fn webhook_secret_unless_polling() {
    let text = edit(&[("webhook_secret = \"env:RUNFLEET_WEBHOOK_SECRET\"", "")]);
    assert_eq!(
        err(&text).to_string(),
        "github.webhook_secret: required unless poll = true (line 6)"
    );

    let text = edit(&[(
        "webhook_secret = \"env:RUNFLEET_WEBHOOK_SECRET\"",
        "poll = true",
    )]);
    let c = ok(&text);
    assert!(c.github.poll && c.github.webhook_secret.is_none());
}

#[test]
fn bad_fleet_name() {
    for bad in [
        "Acme",
        "acme_ci",
        "-acme",
        "acme-",
        "",
        "a-very-long-fleet-name-that-is-33c",
    ] {
        let text = edit(&[("fleet = \"acme-ci\"", &format!("fleet = \"{bad}\""))]);
        let e = err(&text);
        assert_eq!(e.key(), Some("fleet"), "{bad:?}");
        assert_eq!(e.line(), Some(1), "{bad:?}");
        assert_eq!(
            e.to_string(),
            "fleet: must be 1-32 characters of a-z, 0-9 and '-', not starting or ending with '-' (it goes into tags and SSM paths) (line 1)"
        );
    }
    let text = edit(&[("fleet = \"acme-ci\"", "")]);
    let e = err(&text);
    assert_eq!(e.to_string(), "fleet: required key is missing");
    assert_eq!(e.line(), None);
}

#[test]
fn windows_on_arm64_is_rejected() {
    let text = edit(&[("arch = \"arm64\"", "arch = \"arm64\"\nos = \"windows\"")]);
    assert_error(
        &text,
        "arch",
        "pool[1].arch",
        "pool[1].arch: arm64 is not supported with os = \"windows\"",
    );
}

#[test]
fn pool_rules() {
    let text = edit(&[(
        "labels = [\"self-hosted\", \"linux\"]",
        "labels = [\"self-hosted\", \"Linux\", \"linux\"]",
    )]);
    assert_error(
        &text,
        "labels",
        "pool[0].labels[2]",
        "pool[0].labels[2]: duplicate of labels[1] (compared case-insensitively)",
    );

    let long = "x".repeat(101);
    let text = edit(&[(
        "labels = [\"self-hosted\", \"linux\"]",
        &format!("labels = [\"{long}\"]"),
    )]);
    assert_error(
        &text,
        "labels",
        "pool[0].labels[0]",
        "pool[0].labels[0]: must be at most 100 characters",
    );

    let text = edit(&[("labels = [\"self-hosted\", \"linux\"]", "labels = [\"\"]")]);
    assert_error(
        &text,
        "labels",
        "pool[0].labels[0]",
        "pool[0].labels[0]: must not be an empty string",
    );

    let text = edit(&[("name = \"arm\"", "name = \"Arm_64\"")]);
    assert_error(
        &text,
        "Arm_64",
        "pool[1].name",
        "pool[1].name: must be 1-40 characters of a-z, 0-9 and '-'",
    );

    let text = edit(&[("name = \"arm\"", "")]);
    assert_eq!(
        err(&text).to_string(),
        "pool[1].name: required key is missing (line 17)"
    );

    let text = edit(&[("arch = \"arm64\"", "max_runners = 0")]);
    assert_error(
        &text,
        "max_runners",
        "pool[1].max_runners",
        "pool[1].max_runners: must be between 1 and 4294967295",
    );

    let text = edit(&[("arch = \"arm64\"", "max_runners = 4\nwarm = 5")]);
    assert_error(
        &text,
        "warm",
        "pool[1].warm",
        "pool[1].warm: must not be more than max_runners (4)",
    );

    let text = edit(&[("arch = \"arm64\"", "warm = -1")]);
    assert_error(
        &text,
        "warm",
        "pool[1].warm",
        "pool[1].warm: must be between 0 and 4294967295",
    );

    let text = edit(&[("arch = \"arm64\"", "runner_group_id = 7")]);
    assert_error(
        &text,
        "runner_group_id",
        "pool[1].runner_group_id",
        "pool[1].runner_group_id: runner groups other than 1 need runner_scope = \"org\"",
    );
    let text = edit(&[("arch = \"arm64\"", "runner_group_id = 1")]);
    assert_eq!(ok(&text).pools[1].runner_group_id, 1);
    let text = edit(&[(
        "arch = \"arm64\"",
        "runner_group_id = 7\nrunner_scope = \"org\"",
    )]);
    assert_eq!(ok(&text).pools[1].runner_group_id, 7);

    let text = edit(&[("arch = \"arm64\"", "market = \"spott\"")]);
    assert_error(
        &text,
        "market",
        "pool[1].market",
        "pool[1].market: \"spott\" is not one of \"spot\", \"on-demand\", \"spot-then-on-demand\"",
    );

    let text = edit(&[("arch = \"arm64\"", "launch_template_version = \"latest\"")]);
    assert_error(
        &text,
        "launch_template_version",
        "pool[1].launch_template_version",
        "pool[1].launch_template_version: must be \"$Default\", \"$Latest\" or a version number",
    );

    let text = edit(&[(
        "instance_types = [\"m7i.large\"]",
        "instance_types = [\"m7i large\"]",
    )]);
    assert_error(
        &text,
        "instance_types",
        "pool[0].instance_types[0]",
        "pool[0].instance_types[0]: \"m7i large\" is not an EC2 instance type like \"m7i.large\"",
    );
}

#[test]
fn at_least_one_pool() {
    let text =
        "fleet = \"acme-ci\"\n[github]\ntoken = \"x\"\nwebhook_secret = \"y\"\nrepos = [\"a/b\"]\n";
    let e = err(text);
    assert_eq!(e.to_string(), "pool: at least one [[pool]] is required");
    let text = format!("pool = []\n{text}");
    // After [github] it would be github's key: an unknown one.
    let after = format!("{text}pool = []\n").replacen("pool = []\n", "", 1);
    assert_eq!(
        err(&after).to_string(),
        "unknown key `pool` in github (line 6)"
    );
    assert_eq!(
        err(&text).to_string(),
        "pool: at least one [[pool]] is required (line 1)"
    );
}

#[test]
fn server_and_aws_rules() {
    let text = edit(&[("boot_timeout = \"10m\"", "listen = \"localhost:8080\"")]);
    assert_error(
        &text,
        "listen",
        "server.listen",
        "server.listen: must be an IP address and port, like \"127.0.0.1:8080\" or \"[::]:8080\"",
    );

    // A store URL may hold a password: the error does not repeat it.
    let text = edit(&[(
        "boot_timeout = \"10m\"",
        "store = \"mysql://u:hunter2@db/x\"",
    )]);
    let e = assert_error(
        &text,
        "store",
        "server.store",
        "server.store: must start with sqlite://, postgres:// or postgresql://",
    );
    assert!(!e.to_string().contains("hunter2"));

    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\"]\napi_url = \"api.github.com\"",
    )]);
    assert_error(
        &text,
        "api_url",
        "github.api_url",
        "github.api_url: must be an http:// or https:// URL, like \"https://api.github.com\"",
    );

    let text = edit(&[("", "[aws]\nrole_arn = \"arn:aws:iam::1234:role/x\"")]);
    assert_error(
        &text,
        "role_arn",
        "aws.role_arn",
        "aws.role_arn: must be an IAM role ARN like \"arn:aws:iam::123456789012:role/runfleet\"",
    );

    let text = edit(&[("arch = \"arm64\"", "role_arn = \"runfleet\"")]);
    assert_error(
        &text,
        "role_arn",
        "pool[1].role_arn",
        "pool[1].role_arn: must be an IAM role ARN like \"arn:aws:iam::123456789012:role/runfleet\"",
    );

    let text = edit(&[("", "[aws]\nexternal_id = \"env:RUNFLEET_EXTERNAL_ID\"")]);
    assert_error(
        &text,
        "external_id",
        "aws.external_id",
        "aws.external_id: only with aws.role_arn",
    );

    let text = edit(&[("", "[aws]\nregion = \"EU West 2\"")]);
    assert_error(
        &text,
        "region",
        "aws.region",
        "aws.region: \"EU West 2\" is not an AWS region like \"eu-west-2\"",
    );
}

#[test]
fn syntax_errors_have_lines() {
    let text = edit(&[("name = \"arm\"", "name = \"arm")]);
    let e = err(&text);
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert_eq!(e.key(), None);
    assert_eq!(e.line(), Some(line_of(&text, "name = \"arm")));
    assert!(e.to_string().starts_with("invalid TOML: "), "{e}");
    assert!(!e.to_string().contains('\n'));

    let text = edit(&[("arch = \"arm64\"", "name = \"again\"")]);
    let e = err(&text);
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert_eq!(e.line(), Some(line_of(&text, "again")));
}

// ---------------------------------------------------------------------------
// Secrets never leak
// ---------------------------------------------------------------------------

const SENTINELS: [&str; 6] = [
    TOKEN,
    WEBHOOK,
    "KEY-sentinel-9e8d7c",
    EXTERNAL_ID,
    POOL_EXTERNAL_ID,
    DB_PASSWORD,
];

#[test]
fn debug_output_hides_secrets() {
    for text in [INTERFACE_EXAMPLE, APP_AUTH] {
        let config = ok(text);
        let shown = format!("{config:?} {config:#?}");
        for secret in SENTINELS {
            assert!(!shown.contains(secret), "{secret} visible in {shown}");
        }
    }
    // ... but the rest of the store URL is still there to debug with.
    let shown = format!("{:?}", ok(APP_AUTH).server);
    assert!(
        shown.contains("postgres://runfleet:***@db.internal:5432/runfleet"),
        "{shown}"
    );
    // and the secrets were read.
    let c = ok(APP_AUTH);
    assert!(
        c.github
            .app_private_key
            .as_ref()
            .unwrap()
            .expose()
            .contains("KEY-sentinel-9e8d7c")
    );
}

#[test]
fn errors_never_show_values_read_from_secrets() {
    // An integer read through env: that is not one.
    let text = edit(&[(
        "token = \"env:GITHUB_TOKEN\"",
        "app_id = \"env:GITHUB_TOKEN\"\napp_private_key = \"x\"",
    )]);
    let e = assert_error(
        &text,
        "app_id",
        "github.app_id",
        "github.app_id: the value read is not an integer",
    );
    assert!(!e.to_string().contains(TOKEN));

    // A fleet name read through env: that breaks the rules.
    let text = edit(&[("fleet = \"acme-ci\"", "fleet = \"env:GITHUB_TOKEN\"")]);
    let e = err(&text);
    assert_eq!(e.key(), Some("fleet"));
    assert!(!e.to_string().contains(TOKEN), "{e}");

    // Errors raised after the secrets were read do not carry them either.
    let text = edit(&[("arch = \"arm64\"", "arch = \"arm64\"\nos = \"windows\"")]);
    let e = format!("{:?} {}", err(&text), err(&text));
    for secret in SENTINELS {
        assert!(!e.contains(secret), "{e}");
    }
}

// ---------------------------------------------------------------------------
// repo_allowed
// ---------------------------------------------------------------------------

#[test]
fn repo_allow_list() {
    let text = edit(&[(
        "repos = [\"acme/app\"]",
        "repos = [\"acme/app\", \"Tools/*\"]",
    )]);
    let c = ok(&text);
    assert!(c.repo_allowed("acme/app"));
    assert!(c.repo_allowed("ACME/App"));
    assert!(c.repo_allowed("tools/anything"));
    assert!(c.repo_allowed("TOOLS/x.y"));
    assert!(!c.repo_allowed("acme/lib"));
    assert!(!c.repo_allowed("acme/app2"));
    assert!(!c.repo_allowed("other/app"));
    assert!(!c.repo_allowed("acme"));
    assert!(!c.repo_allowed("tools/"));
    assert!(!c.repo_allowed("tools/*"));
    assert!(!c.repo_allowed("tools/a/b"));

    // App auth without repos: every repository of the installations.
    let c = ok(APP_AUTH);
    assert!(c.repo_allowed("anyone/anything"));
    assert!(!c.repo_allowed("not-a-repo"));
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

#[test]
fn durations() {
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    for bad in ["", "10", "-5s", "10x", "1.5h", "m", "10s5m"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
}

proptest! {
    #[test]
    fn duration_round_trips(ms in 0u64..=u64::MAX) {
        let d = Duration::from_millis(ms);
        let text = format_duration(d);
        prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
    }

    #[test]
    fn duration_parts_add_up(d in 0u64..1000, h in 0u64..1000, m in 0u64..1000, s in 0u64..1000, ms in 0u64..1000) {
        let text = format!("{d}d{h}h{m}m{s}s{ms}ms");
        let expected = (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms;
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(expected)));
    }

    #[test]
    fn duration_parse_never_panics(s in "\\PC{0,24}") {
        if let Ok(d) = parse_duration(&s) {
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = parse(&text, &secrets());
    }

    #[test]
    fn parse_never_panics_on_toml_like_text(text in "([a-z_]{1,12} = (\"[a-z:/0-9.-]{0,12}\"|[0-9-]{1,4}|true|\\[\\]|\\[\"x\"\\])\n|\\[\\[?[a-z]{1,6}\\]\\]?\n|\n){0,30}") {
        let _ = parse(&text, &secrets());
    }

    #[test]
    fn parse_never_panics_on_mutated_valid_files(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..12, 0u8..4, "\\PC{0,8}"), 1..6),
    ) {
        let mut text: Vec<char> = [INTERFACE_EXAMPLE, APP_AUTH, MINIMAL][which].chars().collect();
        for (at, len, op, insert) in edits {
            let at = at.index(text.len() + 1);
            let end = (at + len).min(text.len());
            match op {
                0 => { text.drain(at..end); }
                1 => { text.splice(at..at, insert.chars()); }
                2 => { text.splice(at..end, insert.chars()); }
                _ => {
                    let copy: Vec<char> = text[at..end].to_vec();
                    text.splice(at..at, copy);
                }
            }
        }
        let text: String = text.into_iter().collect();
        match parse(&text, &secrets()) {
            Ok(_) => {}
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(!shown.contains('\n'), "{}", shown);
                for secret in SENTINELS {
                    prop_assert!(!shown.contains(secret), "{}", shown);
                }
                if let Some(line) = e.line() {
                    prop_assert!(line >= 1 && line <= text.split('\n').count(), "{} in {} lines", line, text.split('\n').count());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Warm schedules
// ---------------------------------------------------------------------------

/// BASE with `lines` appended to the last pool (`pool[1]`, max_runners 10).
fn with_schedule(lines: &str) -> String {
    edit(&[("arch = \"arm64\"", &format!("arch = \"arm64\"\n{lines}"))])
}

#[test]
fn warm_schedule_parses() {
    let text = with_schedule(
        "warm = 1\n\
         [[pool.warm_schedule]]\n\
         days = [\"mon-fri\"]\n\
         hours = \"08:00-18:00\"\n\
         warm = 4\n\
         timezone = \"+02:00\"\n\
         [[pool.warm_schedule]]\n\
         days = [\"sat\", \"Sunday\"]\n\
         warm = 0\n\
         [[pool.warm_schedule]]\n\
         hours = \"22:00-06:00\"\n\
         warm = 2\n",
    );
    let c = ok(&text);
    assert!(c.pools[0].warm_schedule.is_empty());
    let p = &c.pools[1];
    assert_eq!(p.warm, 1);
    assert_eq!(
        p.warm_schedule,
        vec![
            WarmWindow {
                days: 0b001_1111,
                start: 8 * 60,
                end: 18 * 60,
                utc_offset: 120,
                warm: 4,
            },
            WarmWindow {
                days: 0b110_0000,
                start: 0,
                end: 24 * 60,
                utc_offset: 0,
                warm: 0,
            },
            WarmWindow {
                days: 0b111_1111,
                start: 22 * 60,
                end: 6 * 60,
                utc_offset: 0,
                warm: 2,
            },
        ]
    );
    // 2024-01-01 was a Monday.
    const MON: u64 = 1_704_067_200_000;
    const H: u64 = 3_600_000;
    assert_eq!(p.warm_at(MON + 7 * H), 4, "09:00 at +02:00");
    assert_eq!(p.warm_at(MON + 16 * H), 1, "18:00 at +02:00: closed");
    assert_eq!(p.warm_at(MON + 23 * H), 2, "the night");
    assert_eq!(
        p.warm_at(MON + 5 * 24 * H + 3 * H),
        0,
        "Saturday: the weekend entry first"
    );
    assert_eq!(
        p.warm_at(MON + 3 * 24 * H + 12 * H),
        4,
        "Thursday 14:00 at +02:00"
    );
}

#[test]
fn warm_schedule_inline_and_env_values() {
    let text =
        with_schedule("warm_schedule = [{ hours = \"env:WORK_HOURS\", warm = \"env:WORK_WARM\" }]");
    let s = secrets()
        .with_env("WORK_HOURS", "09:00-17:00")
        .with_env("WORK_WARM", "3");
    let c = parse(&text, &s).unwrap();
    assert_eq!(c.pools[1].warm_schedule[0].start, 9 * 60);
    assert_eq!(c.pools[1].warm_schedule[0].warm, 3);
    let c = ok(&with_schedule("warm_schedule = []"));
    assert!(c.pools[1].warm_schedule.is_empty());
}

#[test]
fn warm_schedule_errors_name_the_key_and_line() {
    let entry = |body: &str| with_schedule(&format!("[[pool.warm_schedule]]\n{body}"));
    let key = "pool[1].warm_schedule[0]";
    assert_error(
        &entry("days = [\"mon\", \"fry\"]\nwarm = 1"),
        "days",
        &format!("{key}.days[1]"),
        &format!(
            "{key}.days[1]: \"fry\" is not a day: use mon, tue, wed, thu, fri, sat, sun or a range like \"mon-fri\""
        ),
    );
    assert_error(
        &entry("days = [\"mon-fri\", \"wed\"]\nwarm = 1"),
        "days",
        &format!("{key}.days[1]"),
        &format!("{key}.days[1]: names wed again (days of one entry must not overlap)"),
    );
    assert_error(
        &entry("days = []\nwarm = 1"),
        "days",
        &format!("{key}.days"),
        &format!("{key}.days: must not be empty (leave days out for every day)"),
    );
    let e = assert_error(
        &entry("hours = \"8-18\"\nwarm = 1"),
        "hours",
        &format!("{key}.hours"),
        &format!(
            "{key}.hours: \"8-18\" is not a time range like \"08:00-18:00\" (start-end, 24-hour clock, end exclusive; \"22:00-06:00\" wraps past midnight)"
        ),
    );
    assert_eq!(e.kind(), ConfigErrorKind::Invalid);
    assert_error(
        &entry("hours = \"08:00-25:00\"\nwarm = 1"),
        "hours",
        &format!("{key}.hours"),
        &format!(
            "{key}.hours: \"25:00\" is not a time of day (00:00 to 23:59, or 24:00 as an end)"
        ),
    );
    assert_error(
        &entry("hours = \"08:00-08:00\"\nwarm = 1"),
        "hours",
        &format!("{key}.hours"),
        &format!(
            "{key}.hours: \"08:00-08:00\" starts and ends at the same time; leave hours out for the whole day"
        ),
    );
    assert_error(
        &entry("timezone = \"Europe/Berlin\"\nwarm = 1"),
        "timezone",
        &format!("{key}.timezone"),
        &format!(
            "{key}.timezone: \"Europe/Berlin\" is not \"UTC\" or a fixed offset like \"+02:00\" or \"-05:30\" (time zone names are not supported: daylight saving time is not applied)"
        ),
    );
    assert_error(
        &entry("warm = 11"),
        "warm = 11",
        &format!("{key}.warm"),
        &format!("{key}.warm: must not be more than max_runners (10)"),
    );
    assert_error(
        &entry("warm = -1"),
        "warm = -1",
        &format!("{key}.warm"),
        &format!("{key}.warm: must be between 0 and 4294967295"),
    );
    let e = assert_error(
        &entry("hours = \"08:00-18:00\""),
        "[[pool.warm_schedule]]",
        &format!("{key}.warm"),
        &format!("{key}.warm: required key is missing"),
    );
    assert_eq!(e.kind(), ConfigErrorKind::Missing);
    let e = assert_error(
        &entry("warm = 1\nday = [\"mon\"]"),
        "day =",
        &format!("{key}.day"),
        &format!("unknown key `day` in {key}"),
    );
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
    let e = assert_error(
        &with_schedule("[pool.warm_schedule]\nwarm = 1"),
        "warm_schedule",
        "pool[1].warm_schedule",
        "pool[1].warm_schedule: expected an array of [[pool.warm_schedule]] tables, found a table",
    );
    assert_eq!(e.kind(), ConfigErrorKind::WrongType);
    // The second entry of the first pool.
    let text = edit(&[(
        "instance_types = [\"m7i.large\"]",
        "instance_types = [\"m7i.large\"]\nmax_runners = 3\n[[pool.warm_schedule]]\nwarm = 3\n[[pool.warm_schedule]]\nwarm = 4",
    )]);
    assert_error(
        &text,
        "warm = 4",
        "pool[0].warm_schedule[1].warm",
        "pool[0].warm_schedule[1].warm: must not be more than max_runners (3)",
    );
}
