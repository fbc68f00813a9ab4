//! The rendered Linux boot script, checked from the outside:
//!
//! - `shellcheck -s bash` reports nothing on any variant (x64/arm64, with and
//!   without `runner_version` and `setup_script`), and `bash -n` parses it;
//! - run for real under bash with every command that would touch the machine
//!   (curl, aws, runuser, shutdown, useradd, ...) replaced by a stub that
//!   records its arguments, and every path moved into a scratch directory, it
//!   does what the boot contract says: IMDSv2, SSM polling, setup before the
//!   runner, the JIT config only on the runner's command line, and a power-off
//!   on every way out.
//!
//! shellcheck is a Debian package (`apt-get install shellcheck`). Without it
//! the shellcheck test fails when `CI` is set and prints a notice otherwise.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use runfleet_core::config::{Arch, Os};
use runfleet_core::userdata::{UserDataParams, render, render_linux};

const SETUP_WITH_SHEBANG: &str = "#!/bin/bash\nset -eu\napt-get install -y jq\n";
const SETUP_PLAIN: &str =
    "echo \"setting up $(hostname)\"\ncat <<'EOF' >/etc/motd\nrunfleet\nEOF\n";

fn params() -> UserDataParams<'static> {
    UserDataParams {
        fleet: "acme-ci",
        os: Os::Linux,
        arch: Arch::X64,
        runner_version: None,
        setup_script: None,
        max_lifetime_secs: 6 * 3600,
        jit_poll_timeout_secs: 600,
    }
}

fn variants() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for arch in [Arch::X64, Arch::Arm64] {
        for version in [None, Some("2.330.0")] {
            for setup in [None, Some(SETUP_WITH_SHEBANG), Some(SETUP_PLAIN)] {
                let p = UserDataParams {
                    arch,
                    runner_version: version,
                    setup_script: setup,
                    ..params()
                };
                let name = format!("{arch:?} version={version:?} setup={}", setup.is_some());
                out.push((name, render(&p).expect("valid params render")));
            }
        }
    }
    out
}

/// Unvalidated input through the infallible renderer: still one valid
/// script (shellcheck would rightly note `$(...)` inside single quotes).
fn unvalidated() -> String {
    render_linux(&UserDataParams {
        fleet: "a'b $(reboot) \"c\"",
        runner_version: Some("`id`"),
        ..params()
    })
}

fn shellcheck_available() -> bool {
    Command::new("shellcheck")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn shellcheck_finds_nothing() {
    if !shellcheck_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "shellcheck is not installed but CI is set: install it (apt-get install -y shellcheck)"
        );
        eprintln!("notice: shellcheck not installed; skipping (apt-get install -y shellcheck)");
        return;
    }
    for (name, script) in variants() {
        let out = run_with_stdin(
            Command::new("shellcheck").args(["-s", "bash", "-"]),
            &script,
        );
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "shellcheck on {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bash_parses_every_variant() {
    let mut all = variants();
    all.push(("unvalidated".into(), unvalidated()));
    for (name, script) in all {
        let out = run_with_stdin(Command::new("bash").args(["-n", "/dev/stdin"]), &script);
        assert!(
            out.status.success(),
            "bash -n on {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Shell quoting round-trips: the unvalidated fleet reaches bash unchanged
/// and runs nothing.
#[test]
fn unvalidated_strings_stay_data() {
    let fleet = "a'b $(touch /nonexistent/pwned) \"c\" `id` \\ end";
    let script = render_linux(&UserDataParams { fleet, ..params() });
    let line = script
        .lines()
        .find(|l| l.starts_with("FLEET="))
        .expect("FLEET line");
    let out = Command::new("bash")
        .args(["-c", &format!("{line}\nprintf %s \"$FLEET\"")])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), fleet);
}

// ---------------------------------------------------------------------------
// Running the script against stubs.

const JIT: &str = "SECRET-JIT-4f9a0c==";
const INSTANCE: &str = "i-0123456789abcdef0";

/// Every command the script runs that could change the machine. `shutdown`,
/// `poweroff` and `setsid` above all: a real one would stop this host.
const STUBS: &[(&str, &str)] = &[
    (
        "curl",
        r#"out=""; url=""; put=0; token=""
while (($#)); do
  case "$1" in
    -o) out=$2; shift ;;
    -X) [[ $2 == PUT ]] && put=1; shift ;;
    -H) [[ $2 == "X-aws-ec2-metadata-token: "* ]] && token=${2#*: }; shift ;;
    --connect-timeout | --max-time) shift ;;
    *) url=$1 ;;
  esac
  shift
done
if ((put)); then [[ $url == http://169.254.169.254/latest/api/token ]] && printf TOKEN123; exit; fi
case "$url" in
  http://169.254.169.254/latest/meta-data/*) [[ $token == TOKEN123 ]] || exit 22 ;;
esac
case "$url" in
  */meta-data/instance-id) printf i-0123456789abcdef0 ;;
  */meta-data/placement/region) printf eu-west-2 ;;
  https://github.com/actions/runner/releases/download/v*/actions-runner-linux-*.tar.gz) cp "$RF_STUB/runner.tar.gz" "$out" ;;
  *) echo "stub curl: unexpected $url" >&2; exit 22 ;;
esac"#,
    ),
    (
        "aws",
        r#"delete="ssm delete-parameter --region eu-west-2 --name /runfleet/acme-ci/instances/i-0123456789abcdef0/jitconfig"
if [[ "$*" == "$delete" ]]; then
  if [[ ${RF_DELETE_EXIT:-0} != 0 ]]; then
    echo "An error occurred (AccessDeniedException) when calling the DeleteParameter operation: not authorized to perform: ssm:DeleteParameter" >&2
    exit "$RF_DELETE_EXIT"
  fi
  exit 0
fi
n=$(( $(cat "$RF_STUB/aws.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$RF_STUB/aws.count"
want="ssm get-parameter --region eu-west-2 --name /runfleet/acme-ci/instances/i-0123456789abcdef0/jitconfig --with-decryption --query Parameter.Value --output text"
[[ "$*" == "$want" ]] || { echo "stub aws: unexpected $*" >&2; exit 252; }
if ((n < RF_JIT_AFTER)); then
  echo "An error occurred (ParameterNotFound) when calling the GetParameter operation" >&2
  exit 254
fi
printf '%s\n' "$RF_JIT""#,
    ),
    (
        "runuser",
        r#"pwd >"$RF_STUB/runuser.pwd"
exit "${RF_RUNNER_EXIT:-0}""#,
    ),
    ("shutdown", "exit 0"),
    ("poweroff", "exit 0"),
    ("setsid", "exit 0"),
    ("id", "exit 1"),
    ("useradd", "exit 0"),
    ("usermod", "exit 0"),
    ("getent", "exit 0"),
    ("chown", "exit 0"),
    ("uname", "echo x86_64"),
];

struct Sandbox {
    dir: PathBuf,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("runfleet-ud-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("systemd")).unwrap();
        for (stub, body) in STUBS {
            let path = dir.join("bin").join(stub);
            let script = format!(
                "#!/bin/bash\nprintf '%s\\n' \"{stub} $*\" >>\"$RF_STUB/calls.log\"\n{body}\n"
            );
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A runner release: a tarball holding run.sh.
        let pkg = dir.join("pkg");
        fs::create_dir_all(&pkg).unwrap();
        write_exec(&pkg.join("run.sh"), "#!/bin/sh\nexit 0\n");
        let tar = Command::new("tar")
            .arg("-czf")
            .arg(dir.join("runner.tar.gz"))
            .arg("-C")
            .arg(&pkg)
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success());
        Sandbox { dir }
    }

    fn runner_dir(&self) -> PathBuf {
        self.dir.join("opt/actions-runner")
    }

    /// Move the script's machine paths into the sandbox; each must occur
    /// exactly once so that a change to the script fails here loudly.
    fn relocate(&self, script: &str, uptime_secs: u64) -> String {
        fs::write(self.dir.join("uptime"), format!("{uptime_secs}.42 7.00\n")).unwrap();
        let d = self.dir.display();
        let mut s = script.to_string();
        for (from, to) in [
            (
                "RUNNER_DIR=/opt/actions-runner\n".to_string(),
                format!("RUNNER_DIR={d}/opt/actions-runner\n"),
            ),
            (
                "STATE_DIR=/run/runfleet\n".into(),
                format!("STATE_DIR={d}/state\n"),
            ),
            (
                "LOG=/var/log/runfleet-boot.log\n".into(),
                format!("LOG={d}/boot.log\n"),
            ),
            ("/proc/uptime".into(), format!("{d}/uptime")),
            ("/run/systemd/system".into(), format!("{d}/systemd")),
        ] {
            assert_eq!(s.matches(&from).count(), 1, "{from:?} in the script");
            s = s.replace(&from, &to);
        }
        assert!(!s.contains("/opt/") || s.contains(&format!("{d}/opt/")));
        s
    }

    fn run(&self, script: &str, jit_after: u32, runner_exit: i32) -> Run {
        self.run_with(script, jit_after, runner_exit, &[])
    }

    fn run_with(
        &self,
        script: &str,
        jit_after: u32,
        runner_exit: i32,
        env: &[(&str, &str)],
    ) -> Run {
        let path = self.dir.join("user-data.sh");
        fs::write(&path, script).unwrap();
        let output = Command::new("bash")
            .arg(&path)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.join("bin").display()),
            )
            .env("RF_STUB", &self.dir)
            .env("RF_JIT", JIT)
            .env("RF_JIT_AFTER", jit_after.to_string())
            .env("RF_RUNNER_EXIT", runner_exit.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            status: output.status.code(),
            output: String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
            log: fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default(),
            calls: fs::read_to_string(self.dir.join("calls.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }
}

fn write_exec(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[derive(Debug)]
struct Run {
    status: Option<i32>,
    output: String,
    log: String,
    calls: Vec<String>,
}

impl Run {
    fn position(&self, prefix: &str) -> usize {
        self.calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call {prefix:?} in {:#?}\n{}", self.calls, self.log))
    }

    fn called(&self, prefix: &str) -> bool {
        self.calls.iter().any(|c| c.starts_with(prefix))
    }

    /// The last thing the script did was to power the machine off, and the
    /// JIT config was never printed.
    fn assert_powered_off_cleanly(&self) {
        assert_eq!(
            self.calls.last().map(String::as_str),
            Some("shutdown -P now"),
            "{:#?}\n{}",
            self.calls,
            self.log
        );
        assert!(self.log.contains("powering off"), "{}", self.log);
        assert!(
            !self.log.contains(JIT),
            "JIT config in the log:\n{}",
            self.log
        );
        assert!(!self.output.contains(JIT), "JIT config on the console");
    }
}

#[test]
fn boots_downloads_sets_up_runs_and_powers_off() {
    let sb = Sandbox::new("happy");
    let setup = "#!/bin/bash\nprintf '%s\\n' setup-ran >>\"$RF_STUB/calls.log\"\n";
    let script = render(&UserDataParams {
        runner_version: Some("2.330.0"),
        setup_script: Some(setup),
        ..params()
    })
    .unwrap();
    let run = sb.run(&sb.relocate(&script, 100), 2, 0);
    assert_eq!(run.status, Some(0), "{}", run.output);

    // Max lifetime 6 h from boot, 100 s already gone: 21500 s left.
    let shutdown_timer = run.position("shutdown -P +359 ");
    let sleeper = run.position("setsid sh -c sleep 21500; shutdown -P now || poweroff -f");
    let token = run.position("curl -fsS --connect-timeout 2 --max-time 5 -X PUT");
    let download = run.position("curl -fsSL --connect-timeout 10 -o ");
    assert!(run.calls[download].ends_with(
        "https://github.com/actions/runner/releases/download/v2.330.0/actions-runner-linux-x64-2.330.0.tar.gz"
    ));
    let setup_ran = run.position("setup-ran");
    let chown = run.position("chown -R runner: ");
    let first_poll = run.position("aws ssm get-parameter");
    let delete = run.position("aws ssm delete-parameter");
    let runner = run.position("runuser ");
    assert!(shutdown_timer < token && sleeper < token);
    assert!(token < download && download < setup_ran && setup_ran < chown);
    assert!(chown < first_poll && first_poll < delete && delete < runner);
    assert_eq!(
        run.calls
            .iter()
            .filter(|c| c.starts_with("aws ssm get-parameter"))
            .count(),
        2,
        "polled until the parameter appeared"
    );
    // Read, then deleted at once: before the runner starts, exactly once.
    assert_eq!(delete, first_poll + 2, "{:#?}", run.calls);
    assert_eq!(
        run.calls[delete],
        "aws ssm delete-parameter --region eu-west-2 --name /runfleet/acme-ci/instances/i-0123456789abcdef0/jitconfig"
    );
    assert_eq!(
        run.calls
            .iter()
            .filter(|c| c.starts_with("aws ssm delete-parameter"))
            .count(),
        1
    );
    assert!(!run.log.contains("could not delete"), "{}", run.log);
    assert!(run.called("useradd --create-home --shell /bin/bash runner"));
    assert!(run.called("usermod -aG docker runner"));

    assert_eq!(
        run.calls[runner],
        format!("runuser -u runner -- ./run.sh --jitconfig {JIT}")
    );
    let cwd = fs::read_to_string(sb.dir.join("runuser.pwd")).unwrap();
    assert_eq!(Path::new(cwd.trim()), sb.runner_dir());
    assert!(sb.runner_dir().join("run.sh").exists());
    assert!(!sb.runner_dir().join("runner.tar.gz").exists());
    assert!(
        run.log
            .contains(&format!("instance {INSTANCE} in eu-west-2, fleet acme-ci"))
    );
    assert!(run.log.contains("runner exited with status 0"));
    run.assert_powered_off_cleanly();
}

#[test]
fn runner_failure_still_powers_off() {
    let sb = Sandbox::new("runner-fails");
    fs::create_dir_all(sb.runner_dir()).unwrap();
    write_exec(&sb.runner_dir().join("run.sh"), "#!/bin/sh\nexit 0\n");
    let script = render(&params()).unwrap();
    let run = sb.run(&sb.relocate(&script, 30), 1, 3);
    assert!(run.log.contains("using the runner installed in"));
    assert!(
        !run.called("curl -fsSL"),
        "pre-installed runner: no download"
    );
    assert!(
        run.log.contains("runner exited with status 3"),
        "{}",
        run.log
    );
    run.assert_powered_off_cleanly();
}

#[test]
fn a_failed_delete_of_the_parameter_is_logged_and_the_runner_still_runs() {
    let sb = Sandbox::new("delete-fails");
    fs::create_dir_all(sb.runner_dir()).unwrap();
    write_exec(&sb.runner_dir().join("run.sh"), "#!/bin/sh\nexit 0\n");
    let script = render(&params()).unwrap();
    let run = sb.run_with(
        &sb.relocate(&script, 30),
        1,
        0,
        &[("RF_DELETE_EXIT", "254")],
    );
    assert_eq!(run.status, Some(0), "{}", run.output);
    let delete = run.position("aws ssm delete-parameter");
    let runner = run.position("runuser ");
    assert!(delete < runner);
    assert_eq!(
        run.calls[runner],
        format!("runuser -u runner -- ./run.sh --jitconfig {JIT}")
    );
    assert!(
        run.log.contains(
            "warning: could not delete /runfleet/acme-ci/instances/i-0123456789abcdef0/jitconfig (runfleet will): An error occurred (AccessDeniedException)"
        ),
        "{}",
        run.log
    );
    assert!(
        !run.log.contains("command failed"),
        "a failed delete is not an error: {}",
        run.log
    );
    assert!(run.log.contains("runner exited with status 0"));
    run.assert_powered_off_cleanly();
}

#[test]
fn gives_up_on_a_missing_jit_config_and_powers_off() {
    let sb = Sandbox::new("jit-timeout");
    fs::create_dir_all(sb.runner_dir()).unwrap();
    write_exec(&sb.runner_dir().join("run.sh"), "#!/bin/sh\nexit 0\n");
    let script = render(&UserDataParams {
        jit_poll_timeout_secs: 1,
        ..params()
    })
    .unwrap();
    let run = sb.run(&sb.relocate(&script, 30), u32::MAX, 0);
    assert_eq!(run.status, Some(1), "{}", run.output);
    assert!(run.called("aws ssm get-parameter"));
    assert!(!run.called("aws ssm delete-parameter"), "nothing to delete");
    assert!(!run.called("runuser"));
    assert!(
        run.log.contains(
            "no runner config at /runfleet/acme-ci/instances/i-0123456789abcdef0/jitconfig"
        ) && run.log.contains("ParameterNotFound"),
        "{}",
        run.log
    );
    run.assert_powered_off_cleanly();
}

#[test]
fn failing_setup_script_powers_off_before_the_runner() {
    let sb = Sandbox::new("setup-fails");
    fs::create_dir_all(sb.runner_dir()).unwrap();
    write_exec(&sb.runner_dir().join("run.sh"), "#!/bin/sh\nexit 0\n");
    let script = render(&UserDataParams {
        setup_script: Some("echo about to fail\nexit 7\n"),
        ..params()
    })
    .unwrap();
    let run = sb.run(&sb.relocate(&script, 30), 1, 0);
    assert_eq!(run.status, Some(1));
    assert!(run.log.contains("about to fail"));
    assert!(
        run.log.contains("the setup script failed with status 7"),
        "{}",
        run.log
    );
    assert!(!run.called("aws ") && !run.called("runuser"));
    run.assert_powered_off_cleanly();
}

#[test]
fn no_runner_and_no_version_powers_off() {
    let sb = Sandbox::new("no-runner");
    let run = sb.run(&sb.relocate(&render(&params()).unwrap(), 30), 1, 0);
    assert_eq!(run.status, Some(1));
    assert!(
        run.log.contains("no runner in") && run.log.contains("no runner_version configured"),
        "{}",
        run.log
    );
    assert!(!run.called("runuser"));
    run.assert_powered_off_cleanly();
}

#[test]
fn past_max_lifetime_powers_off_at_once() {
    let sb = Sandbox::new("too-old");
    let script = render(&UserDataParams {
        max_lifetime_secs: 600,
        ..params()
    })
    .unwrap();
    let run = sb.run(&sb.relocate(&script, 601), 1, 0);
    assert_eq!(run.status, Some(1));
    assert!(
        run.log.contains("max lifetime of 600s already reached"),
        "{}",
        run.log
    );
    assert!(!run.called("curl"));
    run.assert_powered_off_cleanly();
}

#[test]
fn missing_aws_cli_powers_off_with_a_clear_reason() {
    // The script appends the usual system directories to PATH; a host with a
    // real AWS CLI there cannot play an image without one.
    let system_aws = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/snap/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join("aws").exists());
    if system_aws {
        eprintln!(
            "notice: this host has an aws CLI on the system PATH; scenario not reproducible here"
        );
        return;
    }
    let sb = Sandbox::new("no-aws");
    fs::remove_file(sb.dir.join("bin/aws")).unwrap();
    let run = sb.run(&sb.relocate(&render(&params()).unwrap(), 30), 1, 0);
    assert_eq!(run.status, Some(1));
    assert!(
        run.log
            .contains("required command 'aws' is not installed in the image"),
        "{}",
        run.log
    );
    assert!(!run.called("curl"));
    run.assert_powered_off_cleanly();
}

#[test]
fn failure_before_logging_is_set_up_still_powers_off() {
    let sb = Sandbox::new("early");
    let script = sb.relocate(&render(&params()).unwrap(), 30);
    let unwritable = format!("LOG={}/missing/boot.log\n", sb.dir.display());
    let script = script.replace(&format!("LOG={}/boot.log\n", sb.dir.display()), &unwritable);
    let run = sb.run(&script, 1, 0);
    assert_ne!(run.status, Some(0));
    assert_eq!(run.calls, ["shutdown -P now"], "{}", run.output);
    assert!(run.output.contains("powering off"), "{}", run.output);
}

#[test]
fn wrong_architecture_powers_off_with_a_clear_reason() {
    let sb = Sandbox::new("arch");
    let script = render(&UserDataParams {
        arch: Arch::Arm64,
        runner_version: Some("2.330.0"),
        ..params()
    })
    .unwrap();
    let run = sb.run(&sb.relocate(&script, 30), 1, 0);
    assert_eq!(run.status, Some(1));
    assert!(
        run.log
            .contains("the pool's arch is arm64 but this machine is x64"),
        "{}",
        run.log
    );
    assert!(!run.called("curl -fsSL") && !run.called("runuser"));
    run.assert_powered_off_cleanly();
}
