//! User data: the boot script that turns a fresh EC2 instance into exactly one
//! ephemeral GitHub Actions runner, then powers the instance off.
//!
//! **Owns**: rendering the Linux script (bash, run by cloud-init) and the
//! Windows script (PowerShell in `<powershell>` tags, run by EC2Launch) from
//! [`UserDataParams`], and validating every value that is interpolated into
//! them. On the instance, the script:
//!
//! 1. schedules a hard power-off at `max_lifetime_secs` counted from boot,
//!    independent of the rest of the script and of runfleet;
//! 2. learns its instance id and region from IMDSv2;
//! 3. uses the runner in `/opt/actions-runner` (`C:\actions-runner`), or
//!    downloads `runner_version` from GitHub's releases;
//! 4. runs the operator's `setup_script` as root (SYSTEM on Windows); it is
//!    embedded verbatim in a quoted heredoc (Linux) or one quoted
//!    PowerShell string per line (Windows), so it cannot break the script;
//! 5. polls SSM Parameter Store for the SecureString
//!    `/runfleet/<fleet>/instances/<instance id>/jitconfig` every 2 s, for at
//!    most `jit_poll_timeout_secs` from the start of the script, and deletes
//!    it as soon as it has read it (`ssm:DeleteParameter` on its own path;
//!    a failed delete is logged, without the value, and does not stop the
//!    runner: runfleet deletes a parameter left behind);
//! 6. runs `run.sh --jitconfig` as the unprivileged user `runner` on Linux,
//!    `run.cmd --jitconfig` as SYSTEM on Windows (starting a process as
//!    another local user from EC2Launch needs a stored password; the machine
//!    serves one job and is then destroyed);
//! 7. powers off when the runner exits, and on any failure on the way. With
//!    `InstanceInitiatedShutdownBehavior=terminate` that terminates it.
//!
//! **Never**: does I/O, reads a clock, or embeds a secret. The runner's JIT
//! config travels only through SSM and is held in a shell variable on the
//! instance, never written to disk and never printed. User data itself is
//! readable by every process on the instance (IMDS) and by anyone allowed
//! `ec2:DescribeInstanceAttribute`, so `setup_script` must not hold secrets
//! either.
//!
//! **Public boundary**: [`render`] (validated and size-checked: what the
//! engine calls), and [`render_linux`] / [`render_windows`] for one OS. The
//! result is plain text; base64-encoding it is the AWS adapter's job.

use std::fmt::Write as _;

use crate::config::{Arch, Os};

/// EC2's limit on user data, in bytes, before base64 encoding.
pub const USER_DATA_LIMIT_BYTES: usize = 16 * 1024;

/// Upper bound for `max_lifetime_secs` and `jit_poll_timeout_secs` (30 days).
/// GitHub cancels self-hosted jobs after 5 days; anything longer is a typo,
/// and the bound keeps the scripts' arithmetic far from overflow.
pub const MAX_DURATION_SECS: u64 = 30 * 24 * 3600;

/// What the boot script needs to know; everything else it discovers on the
/// instance (IMDSv2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDataParams<'a> {
    /// e.g. `"acme-ci"`; the SSM path is
    /// `/runfleet/<fleet>/instances/<instance id>/jitconfig`.
    pub fleet: &'a str,
    pub os: Os,
    pub arch: Arch,
    /// e.g. `"2.330.0"`: downloaded when the image has no runner in
    /// `/opt/actions-runner` (`C:\actions-runner` on Windows).
    pub runner_version: Option<&'a str>,
    /// Operator script run as root (Administrator) before the runner starts:
    /// bash, or any interpreter named by a `#!` line, on Linux; PowerShell on
    /// Windows. Embedded verbatim.
    pub setup_script: Option<&'a str>,
    /// Hard power-off this many seconds after boot, even if runfleet is down.
    pub max_lifetime_secs: u64,
    /// Give up waiting for the JIT parameter after this long (from the start
    /// of the boot script) and power off. Use the pool's boot timeout.
    pub jit_poll_timeout_secs: u64,
}

/// Why user data could not be rendered. Messages name the offending field
/// and never quote the setup script's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    #[error("user data: invalid `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error(
        "user data: the rendered script is {size} bytes, over EC2's limit of {limit} bytes; \
         shorten `setup_script` (or install what it installs in the image)"
    )]
    TooLarge { size: usize, limit: usize },
}

impl UserDataError {
    /// The parameter at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            UserDataError::InvalidField { field, .. } => Some(field),
            UserDataError::TooLarge { .. } => None,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> UserDataError {
    UserDataError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Render the boot script for `p.os`: validated, and within EC2's size limit.
pub fn render(p: &UserDataParams) -> Result<String, UserDataError> {
    match p.os {
        Os::Linux => {
            validate_common(p)?;
            if let Some(script) = p.setup_script {
                reject_nul(script)?;
            }
            check_size(render_linux(p))
        }
        Os::Windows => render_windows(p),
    }
}

/// Render the Linux (bash) boot script.
///
/// Never fails: every interpolated string is single-quoted for the shell and
/// both durations are clamped to [`MAX_DURATION_SECS`], so even unvalidated
/// input cannot inject a command. [`render`] additionally rejects input that
/// would make a wrong (if harmless) script, and checks the size limit.
pub fn render_linux(p: &UserDataParams) -> String {
    let arch = match p.arch {
        Arch::X64 => "x64",
        Arch::Arm64 => "arm64",
    };
    let mut s = String::with_capacity(8 * 1024);
    s.push_str(LINUX_PREAMBLE);
    // `writeln!` into a String cannot fail.
    let _ = writeln!(s, "FLEET={}", sh_quote(p.fleet));
    let _ = writeln!(s, "ARCH={}", sh_quote(arch));
    let _ = writeln!(
        s,
        "RUNNER_VERSION={}",
        sh_quote(p.runner_version.unwrap_or(""))
    );
    let _ = writeln!(
        s,
        "MAX_LIFETIME_SECS={}",
        p.max_lifetime_secs.min(MAX_DURATION_SECS)
    );
    let _ = writeln!(
        s,
        "JIT_TIMEOUT_SECS={}",
        p.jit_poll_timeout_secs.min(MAX_DURATION_SECS)
    );
    s.push_str(LINUX_MAIN);
    match setup_script(p) {
        Some(script) => {
            let delim = unique_delimiter(script);
            s.push_str("\nlog \"running the setup script\"\n");
            let _ = writeln!(s, "cat >\"$STATE_DIR/setup\" <<'{delim}'");
            s.push_str(script);
            if !script.ends_with('\n') {
                s.push('\n');
            }
            let _ = writeln!(s, "{delim}");
            s.push_str(LINUX_RUN_SETUP);
        }
        None => s.push_str("\n# No setup script is configured for this pool.\n"),
    }
    s.push_str(LINUX_RUN_RUNNER);
    s
}

/// Render the Windows (PowerShell, EC2Launch) boot script. Only x64 is
/// supported; arm64 is an error naming `arch`.
pub fn render_windows(p: &UserDataParams) -> Result<String, UserDataError> {
    if p.arch != Arch::X64 {
        return Err(invalid(
            "arch",
            "Windows pools support only arch = \"x64\" (runfleet has no Windows arm64 boot script)",
        ));
    }
    validate_common(p)?;
    if let Some(script) = setup_script(p) {
        validate_windows_setup(script)?;
    }
    let mut s = String::with_capacity(8 * 1024);
    s.push_str(WINDOWS_PREAMBLE);
    let _ = writeln!(s, "$Fleet = {}", ps_quote(p.fleet));
    let _ = writeln!(
        s,
        "$RunnerVersion = {}",
        ps_quote(p.runner_version.unwrap_or(""))
    );
    let _ = writeln!(s, "$MaxLifetimeSecs = {}", p.max_lifetime_secs);
    let _ = writeln!(s, "$JitTimeoutSecs = {}", p.jit_poll_timeout_secs);
    s.push_str(WINDOWS_MAIN);
    match setup_script(p) {
        Some(script) => {
            // One single-quoted string per line: nothing the operator writes
            // can end the literal early.
            s.push_str("\n    $setup = Join-Path $StateDir 'setup.ps1'\n");
            s.push_str("    Set-Content -LiteralPath $setup -Encoding UTF8 -Value @(\n");
            for line in script.lines() {
                let _ = writeln!(s, "    {}", ps_quote(line));
            }
            s.push_str("    )\n");
            s.push_str(WINDOWS_RUN_SETUP);
        }
        None => s.push_str("\n    # No setup script is configured for this pool.\n"),
    }
    s.push_str(WINDOWS_RUN_RUNNER);
    check_size(s)
}

/// The setup script, if there is one worth running (blank counts as none).
fn setup_script<'a>(p: &UserDataParams<'a>) -> Option<&'a str> {
    p.setup_script.filter(|s| !s.trim().is_empty())
}

fn validate_common(p: &UserDataParams) -> Result<(), UserDataError> {
    if p.fleet.is_empty() {
        return Err(invalid("fleet", "must not be empty"));
    }
    if !p
        .fleet
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            "fleet",
            format!(
                "{:?} may contain only a-z, 0-9 and '-' (it goes into SSM paths and the boot script)",
                p.fleet
            ),
        ));
    }
    if let Some(v) = p.runner_version {
        let well_formed = !v.is_empty()
            && v.split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            return Err(invalid(
                "runner_version",
                format!("{v:?} must be digits separated by dots, like \"2.330.0\""),
            ));
        }
    }
    for (field, secs) in [
        ("max_lifetime_secs", p.max_lifetime_secs),
        ("jit_poll_timeout_secs", p.jit_poll_timeout_secs),
    ] {
        if secs == 0 || secs > MAX_DURATION_SECS {
            return Err(invalid(
                field,
                format!("{secs} must be between 1 and {MAX_DURATION_SECS} seconds"),
            ));
        }
    }
    Ok(())
}

fn reject_nul(script: &str) -> Result<(), UserDataError> {
    if script.contains('\0') {
        return Err(invalid("setup_script", "contains a NUL byte"));
    }
    Ok(())
}

/// EC2Launch finds the script by its tags anywhere in the user data: reject a
/// setup script that carries one.
fn validate_windows_setup(script: &str) -> Result<(), UserDataError> {
    reject_nul(script)?;
    let lower = script.to_ascii_lowercase();
    for tag in ["<powershell>", "</powershell>", "<persist>", "</persist>"] {
        if lower.contains(tag) {
            return Err(invalid(
                "setup_script",
                format!("contains {tag}, which EC2Launch would take for a user-data tag"),
            ));
        }
    }
    Ok(())
}

fn check_size(script: String) -> Result<String, UserDataError> {
    if script.len() > USER_DATA_LIMIT_BYTES {
        return Err(UserDataError::TooLarge {
            size: script.len(),
            limit: USER_DATA_LIMIT_BYTES,
        });
    }
    Ok(script)
}

/// Quote `s` as one bash word: single quotes, with `'` written as `'\''`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quote `s` as a PowerShell verbatim string: every single-quote character
/// (PowerShell also accepts the typographic ones) is doubled.
fn ps_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A heredoc delimiter that is no line of `body`.
fn unique_delimiter(body: &str) -> String {
    let mut delim = String::from("RUNFLEET_SETUP_EOF");
    let mut n = 0u32;
    // `lines()` also strips a trailing `\r`, so this is stricter than bash.
    while body.lines().any(|line| line == delim) {
        n += 1;
        delim = format!("RUNFLEET_SETUP_EOF_{n}");
    }
    delim
}

const LINUX_PREAMBLE: &str = r##"#!/bin/bash
# runfleet boot script (Linux): one ephemeral GitHub Actions runner, then power-off.
# Holds no secret: the runner's just-in-time config is read from SSM at boot and
# is never printed or written to disk.
set -Eeuo pipefail
shopt -s inherit_errexit 2>/dev/null || true # bash >= 4.4
umask 022
export PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"
export HOME="${HOME:-/root}" AWS_PAGER=""

log() { printf '%s runfleet: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
die() {
  log "error: $*"
  exit 1
}
# Whatever way this script ends, the machine goes down with it.
power_off() {
  local status=$?
  trap - EXIT
  set +e
  log "boot script ended with status $status; powering off"
  shutdown -P now || poweroff || poweroff -f
}
trap power_off EXIT
trap 'exit 143' TERM INT HUP
trap 'log "command failed at line $LINENO with status $?"' ERR

"##;

const LINUX_MAIN: &str = r##"RUNNER_DIR=/opt/actions-runner
RUNNER_USER=runner
STATE_DIR=/run/runfleet
LOG=/var/log/runfleet-boot.log

touch "$LOG"
chmod 600 "$LOG"
exec > >(tee -a "$LOG") 2>&1

# Hard stop at the max lifetime, counted from boot, whatever happens to this
# script or to runfleet: a systemd shutdown timer and a detached sleeper.
uptime_secs=$(cut -d. -f1 /proc/uptime)
remaining=$((MAX_LIFETIME_SECS - uptime_secs))
((remaining > 0)) || die "max lifetime of ${MAX_LIFETIME_SECS}s already reached"
if [[ -d /run/systemd/system ]]; then
  shutdown -P "+$(((remaining + 59) / 60))" "runfleet: max lifetime reached" ||
    log "warning: could not schedule a shutdown; relying on the sleeper"
fi
setsid sh -c "sleep $remaining; shutdown -P now || poweroff -f" </dev/null >/dev/null 2>&1 &
log "power-off scheduled in ${remaining}s (max lifetime)"

install -d -m 700 "$STATE_DIR"
for tool in curl aws runuser tar; do
  command -v "$tool" >/dev/null || die "required command '$tool' is not installed in the image"
done

retry() { # retry ATTEMPTS DELAY_SECS COMMAND...
  local attempts=$1 delay=$2 n=1
  shift 2
  until "$@"; do
    ((n < attempts)) || return 1
    n=$((n + 1))
    sleep "$delay"
  done
}
IMDS=http://169.254.169.254/latest
imds_token() {
  curl -fsS --connect-timeout 2 --max-time 5 -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "$IMDS/api/token"
}
imds_get() {
  curl -fsS --connect-timeout 2 --max-time 5 \
    -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS/meta-data/$1"
}
IMDS_TOKEN=$(retry 30 2 imds_token) || die "no IMDSv2 token"
INSTANCE_ID=$(retry 10 2 imds_get instance-id) || die "no instance id from IMDS"
REGION=$(retry 10 2 imds_get placement/region) || die "no region from IMDS"
[[ $INSTANCE_ID =~ ^i-[0-9a-f]+$ ]] || die "unexpected instance id from IMDS: $INSTANCE_ID"
[[ $REGION =~ ^[a-z0-9-]+$ ]] || die "unexpected region from IMDS: $REGION"
log "instance $INSTANCE_ID in $REGION, fleet $FLEET"

case "$(uname -m)" in
  x86_64) machine_arch=x64 ;;
  aarch64 | arm64) machine_arch=arm64 ;;
  *) machine_arch=$(uname -m) ;;
esac
[[ $machine_arch == "$ARCH" ]] || die "the pool's arch is $ARCH but this machine is $machine_arch"

if ! id -u "$RUNNER_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$RUNNER_USER"
fi
if getent group docker >/dev/null; then
  usermod -aG docker "$RUNNER_USER"
fi

if [[ -x $RUNNER_DIR/run.sh ]]; then
  log "using the runner installed in $RUNNER_DIR"
elif [[ -n $RUNNER_VERSION ]]; then
  url="https://github.com/actions/runner/releases/download/v$RUNNER_VERSION/actions-runner-linux-$ARCH-$RUNNER_VERSION.tar.gz"
  log "downloading $url"
  mkdir -p "$RUNNER_DIR"
  retry 5 5 curl -fsSL --connect-timeout 10 -o "$RUNNER_DIR/runner.tar.gz" "$url" ||
    die "could not download the runner from $url"
  tar -xzf "$RUNNER_DIR/runner.tar.gz" -C "$RUNNER_DIR"
  rm -f "$RUNNER_DIR/runner.tar.gz"
else
  die "no runner in $RUNNER_DIR and no runner_version configured for this pool"
fi
"##;

const LINUX_RUN_SETUP: &str = r##"chmod 700 "$STATE_DIR/setup"
if [[ $(head -c 2 "$STATE_DIR/setup") == '#!' ]]; then
  "$STATE_DIR/setup" || die "the setup script failed with status $?"
else
  bash "$STATE_DIR/setup" || die "the setup script failed with status $?"
fi
log "setup script finished"
"##;

const LINUX_RUN_RUNNER: &str = r##"
chown -R "$RUNNER_USER:" "$RUNNER_DIR"

PARAM="/runfleet/$FLEET/instances/$INSTANCE_ID/jitconfig"
log "waiting for the runner config at $PARAM"
next_note=30
until JIT=$(aws ssm get-parameter --region "$REGION" --name "$PARAM" --with-decryption \
  --query Parameter.Value --output text 2>"$STATE_DIR/ssm.err") && [[ -n $JIT ]]; do
  ((SECONDS < JIT_TIMEOUT_SECS)) ||
    die "no runner config at $PARAM after ${SECONDS}s: $(tail -n 1 "$STATE_DIR/ssm.err")"
  if ((SECONDS >= next_note)); then
    log "still waiting after ${SECONDS}s: $(tail -n 1 "$STATE_DIR/ssm.err")"
    next_note=$((SECONDS + 30))
  fi
  sleep 2
done
log "runner config received; deleting $PARAM"
# The config works once and is in this shell now: it leaves SSM at once. If
# the delete fails (the instance role lacks ssm:DeleteParameter, throttling)
# the runner starts anyway and runfleet deletes the leftover.
if ! aws ssm delete-parameter --region "$REGION" --name "$PARAM" \
  >/dev/null 2>"$STATE_DIR/ssm.err"; then
  log "warning: could not delete $PARAM (runfleet will): $(tail -n 1 "$STATE_DIR/ssm.err")"
fi
log "starting the runner as $RUNNER_USER"

cd "$RUNNER_DIR"
status=0
runuser -u "$RUNNER_USER" -- ./run.sh --jitconfig "$JIT" || status=$?
JIT=""
log "runner exited with status $status"
"##;

const WINDOWS_PREAMBLE: &str = r##"<powershell>
# runfleet boot script (Windows): one ephemeral GitHub Actions runner, then power-off.
# Holds no secret: the runner's just-in-time config is read from SSM at boot and
# is never printed or written to disk.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Started = Get-Date
"##;

const WINDOWS_MAIN: &str = r##"$RunnerDir = 'C:\actions-runner'
$StateDir = Join-Path $env:ProgramData 'runfleet'
$LogFile = Join-Path $StateDir 'boot.log'
$SsmErrFile = Join-Path $StateDir 'ssm.err'
$SsmError = ''

function Write-Log([string]$Message) {
    $line = '{0} runfleet: {1}' -f (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ'), $Message
    Write-Host $line
    Add-Content -LiteralPath $LogFile -Value $line -ErrorAction SilentlyContinue
}

function Invoke-Retry([string]$What, [int]$Attempts, [int]$DelaySecs, [scriptblock]$Action) {
    for ($i = 1; $true; $i++) {
        try {
            return (& $Action)
        } catch {
            if ($i -ge $Attempts) { throw "$What failed after $Attempts attempts: $($_.Exception.Message)" }
            Start-Sleep -Seconds $DelaySecs
        }
    }
}

# Native commands: a non-zero exit code is an error; stderr is not.
function Invoke-Native([string]$What, [scriptblock]$Command) {
    $ErrorActionPreference = 'Continue'
    & $Command
    if ($LASTEXITCODE -ne 0) { throw "$What failed with exit code $LASTEXITCODE" }
}

# The JIT config, or '' while the parameter is not there yet. Never logged.
function Get-JitConfig {
    $ErrorActionPreference = 'Continue'
    if ($AwsCli) {
        $value = & $AwsCli ssm get-parameter --region $Region --name $Param --with-decryption `
            --query Parameter.Value --output text 2> $SsmErrFile
        if ($LASTEXITCODE -eq 0) { return ($value | Out-String).Trim() }
        $script:SsmError = Get-Content -LiteralPath $SsmErrFile -ErrorAction SilentlyContinue | Select-Object -Last 1
        return ''
    }
    try {
        return (Get-SSMParameter -Region $Region -Name $Param -WithDecryption $true).Value
    } catch {
        $script:SsmError = $_.Exception.Message
        return ''
    }
}

# Deletes the parameter once read. A failure is logged (never the value) and
# does not stop the runner: runfleet deletes the leftover.
function Remove-JitConfig {
    $ErrorActionPreference = 'Continue'
    if ($AwsCli) {
        & $AwsCli ssm delete-parameter --region $Region --name $Param 2> $SsmErrFile | Out-Null
        if ($LASTEXITCODE -eq 0) { return }
        $reason = Get-Content -LiteralPath $SsmErrFile -ErrorAction SilentlyContinue | Select-Object -Last 1
    } else {
        try {
            Remove-SSMParameter -Region $Region -Name $Param -Force -ErrorAction Stop | Out-Null
            return
        } catch {
            $reason = $_.Exception.Message
        }
    }
    Write-Log "warning: could not delete $Param (runfleet will): $reason"
}

function Stop-Instance {
    Write-Log 'powering off'
    $ErrorActionPreference = 'Continue'
    & shutdown.exe /s /f /t 0 /d p:0:0 /c 'runfleet: boot script ended'
    if ($LASTEXITCODE -ne 0) { Stop-Computer -Force }
}

New-Item -ItemType Directory -Force -Path $StateDir | Out-Null
try {
    # Hard stop at the max lifetime, counted from boot, whatever happens to
    # this script or to runfleet: a scheduled task running as SYSTEM.
    $deadline = (Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.AddSeconds($MaxLifetimeSecs)
    if ($deadline -le (Get-Date)) { throw "max lifetime of $($MaxLifetimeSecs)s already reached" }
    $action = New-ScheduledTaskAction -Execute 'shutdown.exe' -Argument '/s /f /t 0 /d p:0:0 /c "runfleet: max lifetime reached"'
    $trigger = New-ScheduledTaskTrigger -Once -At $deadline
    Register-ScheduledTask -TaskName 'runfleet-max-lifetime' -Action $action -Trigger $trigger `
        -User 'NT AUTHORITY\SYSTEM' -RunLevel Highest -Force | Out-Null
    Write-Log "power-off scheduled at $($deadline.ToUniversalTime().ToString('u')) (max lifetime)"

    $imds = 'http://169.254.169.254/latest'
    $token = Invoke-Retry 'IMDSv2 token' 30 2 {
        Invoke-RestMethod -Method Put -Uri "$imds/api/token" -TimeoutSec 5 `
            -Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '21600' }
    }
    $headers = @{ 'X-aws-ec2-metadata-token' = $token }
    $InstanceId = Invoke-Retry 'instance id from IMDS' 10 2 {
        Invoke-RestMethod -Uri "$imds/meta-data/instance-id" -Headers $headers -TimeoutSec 5
    }
    $Region = Invoke-Retry 'region from IMDS' 10 2 {
        Invoke-RestMethod -Uri "$imds/meta-data/placement/region" -Headers $headers -TimeoutSec 5
    }
    if ($InstanceId -cnotmatch '^i-[0-9a-f]+$') { throw "unexpected instance id from IMDS: $InstanceId" }
    if ($Region -cnotmatch '^[a-z0-9-]+$') { throw "unexpected region from IMDS: $Region" }
    Write-Log "instance $InstanceId in $Region, fleet $Fleet"

    $AwsCli = (Get-Command -Name 'aws.exe' -ErrorAction SilentlyContinue).Source
    $bundledCli = 'C:\Program Files\Amazon\AWSCLIV2\aws.exe'
    if (-not $AwsCli -and (Test-Path -LiteralPath $bundledCli)) { $AwsCli = $bundledCli }
    if (-not $AwsCli -and -not (Get-Command -Name 'Get-SSMParameter' -ErrorAction SilentlyContinue)) {
        throw 'neither the AWS CLI (aws.exe) nor AWS Tools for PowerShell (Get-SSMParameter) is installed in the image'
    }

    if (Test-Path -LiteralPath (Join-Path $RunnerDir 'run.cmd')) {
        Write-Log "using the runner installed in $RunnerDir"
    } elseif ($RunnerVersion) {
        [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
        $url = "https://github.com/actions/runner/releases/download/v$RunnerVersion/actions-runner-win-x64-$RunnerVersion.zip"
        $zip = Join-Path $StateDir 'actions-runner.zip'
        Write-Log "downloading $url"
        Invoke-Retry 'runner download' 5 5 { Invoke-WebRequest -Uri $url -OutFile $zip -UseBasicParsing }
        Add-Type -AssemblyName System.IO.Compression.FileSystem
        [IO.Compression.ZipFile]::ExtractToDirectory($zip, $RunnerDir)
        Remove-Item -LiteralPath $zip -Force
    } else {
        throw "no runner in $RunnerDir and no runner_version configured for this pool"
    }
"##;

const WINDOWS_RUN_SETUP: &str = r##"    Write-Log 'running the setup script'
    Invoke-Native 'the setup script' {
        & powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File $setup
    }
    Write-Log 'setup script finished'
"##;

const WINDOWS_RUN_RUNNER: &str = r##"
    $Param = "/runfleet/$Fleet/instances/$InstanceId/jitconfig"
    Write-Log "waiting for the runner config at $Param"
    $nextNote = 30
    $jit = Get-JitConfig
    while (-not $jit) {
        $elapsed = [int]((Get-Date) - $Started).TotalSeconds
        if ($elapsed -ge $JitTimeoutSecs) { throw "no runner config at $Param after $($elapsed)s: $SsmError" }
        if ($elapsed -ge $nextNote) {
            Write-Log "still waiting after $($elapsed)s: $SsmError"
            $nextNote = $elapsed + 30
        }
        Start-Sleep -Seconds 2
        $jit = Get-JitConfig
    }
    Write-Log "runner config received; deleting $Param"
    Remove-JitConfig
    Write-Log 'starting the runner as SYSTEM'

    Set-Location -LiteralPath $RunnerDir
    $ErrorActionPreference = 'Continue'
    & (Join-Path $RunnerDir 'run.cmd') --jitconfig $jit
    $status = $LASTEXITCODE
    $ErrorActionPreference = 'Stop'
    $jit = $null
    Write-Log "runner exited with status $status"
} catch {
    Write-Log "error: $($_.Exception.Message)"
} finally {
    $jit = $null
    Stop-Instance
}
</powershell>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    const SETUP: &str = "#!/bin/bash\nset -eu\ndnf install -y git jq\necho 'runner ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/runner\n";

    #[test]
    fn snapshot_linux_x64_preinstalled() {
        let script = render(&params()).unwrap();
        insta::assert_snapshot!("linux_x64_preinstalled", script);
    }

    #[test]
    fn snapshot_linux_arm64_download_with_setup() {
        let p = UserDataParams {
            arch: Arch::Arm64,
            runner_version: Some("2.330.0"),
            setup_script: Some(SETUP),
            ..params()
        };
        insta::assert_snapshot!("linux_arm64_download_setup", render(&p).unwrap());
    }

    #[test]
    fn snapshot_windows_x64_download() {
        let p = UserDataParams {
            os: Os::Windows,
            runner_version: Some("2.330.0"),
            setup_script: Some("choco install -y git\n"),
            ..params()
        };
        insta::assert_snapshot!("windows_x64_download", render(&p).unwrap());
    }

    #[test]
    fn ssm_path_contains_the_fleet() {
        let p = UserDataParams {
            fleet: "blue-7",
            ..params()
        };
        let linux = render(&p).unwrap();
        assert!(linux.contains("FLEET='blue-7'\n"));
        assert!(linux.contains(r#"PARAM="/runfleet/$FLEET/instances/$INSTANCE_ID/jitconfig""#));
        let windows = render(&UserDataParams {
            os: Os::Windows,
            ..p
        })
        .unwrap();
        assert!(windows.contains("$Fleet = 'blue-7'\n"));
        assert!(windows.contains(r#"$Param = "/runfleet/$Fleet/instances/$InstanceId/jitconfig""#));
    }

    #[test]
    fn parameters_reach_the_script() {
        let p = UserDataParams {
            arch: Arch::Arm64,
            runner_version: Some("2.330.0"),
            max_lifetime_secs: 7200,
            jit_poll_timeout_secs: 300,
            ..params()
        };
        let s = render(&p).unwrap();
        for line in [
            "ARCH='arm64'",
            "RUNNER_VERSION='2.330.0'",
            "MAX_LIFETIME_SECS=7200",
            "JIT_TIMEOUT_SECS=300",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line}");
        }
        assert!(s.contains("actions-runner-linux-$ARCH-$RUNNER_VERSION.tar.gz"));
        let w = render(&UserDataParams {
            os: Os::Windows,
            arch: Arch::X64,
            ..p
        })
        .unwrap();
        for line in [
            "$RunnerVersion = '2.330.0'",
            "$MaxLifetimeSecs = 7200",
            "$JitTimeoutSecs = 300",
        ] {
            assert!(w.lines().any(|l| l == line), "missing {line}");
        }
    }

    #[test]
    fn unsafe_fleet_is_rejected_naming_the_field() {
        for fleet in [
            "", "Acme", "acme ci", "a;reboot", "a'b", "a/b", "acme_ci", "é",
        ] {
            for os in [Os::Linux, Os::Windows] {
                let err = render(&UserDataParams {
                    fleet,
                    os,
                    ..params()
                })
                .unwrap_err();
                assert_eq!(err.field(), Some("fleet"), "{fleet:?}");
                assert!(err.to_string().contains("`fleet`"), "{err}");
            }
        }
    }

    #[test]
    fn unsafe_version_is_rejected_naming_the_field() {
        for v in [
            "",
            "v2.330.0",
            "2.330.0;id",
            "2..3",
            ".2",
            "2.",
            "2.330.0-beta",
            "$(id)",
        ] {
            for os in [Os::Linux, Os::Windows] {
                let err = render(&UserDataParams {
                    runner_version: Some(v),
                    os,
                    ..params()
                })
                .unwrap_err();
                assert_eq!(err.field(), Some("runner_version"), "{v:?}");
                assert!(err.to_string().contains("`runner_version`"), "{err}");
            }
        }
        assert!(
            render(&UserDataParams {
                runner_version: Some("2"),
                ..params()
            })
            .is_ok()
        );
    }

    #[test]
    fn durations_are_bounded() {
        for (max, jit, field) in [
            (0, 600, "max_lifetime_secs"),
            (MAX_DURATION_SECS + 1, 600, "max_lifetime_secs"),
            (3600, 0, "jit_poll_timeout_secs"),
            (3600, u64::MAX, "jit_poll_timeout_secs"),
        ] {
            let err = render(&UserDataParams {
                max_lifetime_secs: max,
                jit_poll_timeout_secs: jit,
                ..params()
            })
            .unwrap_err();
            assert_eq!(err.field(), Some(field));
        }
        // The infallible renderer clamps instead of overflowing bash arithmetic.
        let s = render_linux(&UserDataParams {
            max_lifetime_secs: u64::MAX,
            ..params()
        });
        assert!(s.contains(&format!("\nMAX_LIFETIME_SECS={MAX_DURATION_SECS}\n")));
    }

    #[test]
    fn windows_arm64_is_rejected() {
        let p = UserDataParams {
            os: Os::Windows,
            arch: Arch::Arm64,
            ..params()
        };
        for err in [render(&p).unwrap_err(), render_windows(&p).unwrap_err()] {
            assert_eq!(err.field(), Some("arch"));
            assert!(err.to_string().contains("x64"), "{err}");
        }
    }

    #[test]
    fn windows_is_wrapped_for_ec2launch() {
        let s = render(&UserDataParams {
            os: Os::Windows,
            ..params()
        })
        .unwrap();
        assert!(s.starts_with("<powershell>\n"));
        assert!(s.ends_with("</powershell>\n"));
        assert_eq!(s.matches("<powershell>").count(), 1);
        assert!(s.contains("$ErrorActionPreference = 'Stop'"));
        assert!(s.contains("} finally {\n    $jit = $null\n    Stop-Instance\n}"));
    }

    #[test]
    fn windows_setup_with_user_data_tags_is_rejected() {
        for script in [
            "Write-Host '</powershell>'",
            "<PowerShell>",
            "<persist>true</persist>",
            "a\0b",
        ] {
            let err = render(&UserDataParams {
                os: Os::Windows,
                setup_script: Some(script),
                ..params()
            })
            .unwrap_err();
            assert_eq!(err.field(), Some("setup_script"), "{script:?}");
            assert!(
                !err.to_string().contains("Write-Host"),
                "never quote the script"
            );
        }
    }

    #[test]
    fn windows_setup_lines_are_each_quoted() {
        let script = "$x = @'\nit's \u{2019}quoted\u{2019}\n'@\n\nWrite-Host $x\r\n";
        let s = render(&UserDataParams {
            os: Os::Windows,
            setup_script: Some(script),
            ..params()
        })
        .unwrap();
        let expected = "-Value @(\n    '$x = @'''\n    'it''s \u{2019}\u{2019}quoted\u{2019}\u{2019}'\n    '''@'\n    ''\n    'Write-Host $x'\n    )\n";
        assert!(s.contains(expected), "{s}");
    }

    #[test]
    fn linux_setup_is_embedded_verbatim_in_a_quoted_heredoc() {
        let nasty = "echo \"$(id)\" `whoami` $HOME\nRUNFLEET_SETUP_EOF\nexit 0";
        let s = render(&UserDataParams {
            setup_script: Some(nasty),
            ..params()
        })
        .unwrap();
        let open = "cat >\"$STATE_DIR/setup\" <<'RUNFLEET_SETUP_EOF_1'\n";
        let start = s.find(open).expect("heredoc opening") + open.len();
        let end = s[start..]
            .find("\nRUNFLEET_SETUP_EOF_1\n")
            .expect("heredoc end")
            + start;
        assert_eq!(&s[start..end], nasty);
    }

    #[test]
    fn blank_setup_script_counts_as_none() {
        let with_blank = render(&UserDataParams {
            setup_script: Some("  \n"),
            ..params()
        })
        .unwrap();
        assert_eq!(with_blank, render(&params()).unwrap());
        assert!(!with_blank.contains("STATE_DIR/setup"));
    }

    #[test]
    fn linux_nul_in_setup_is_rejected() {
        let err = render(&UserDataParams {
            setup_script: Some("echo a\0b"),
            ..params()
        })
        .unwrap_err();
        assert_eq!(err.field(), Some("setup_script"));
        assert!(!err.to_string().contains("echo"), "never quote the script");
    }

    /// The JIT config is only ever assigned, tested, and handed to the runner.
    #[test]
    fn the_jit_config_is_never_printed() {
        let linux = render(&UserDataParams {
            runner_version: Some("2.330.0"),
            setup_script: Some(SETUP),
            ..params()
        })
        .unwrap();
        assert!(!linux.contains("set -x") && !linux.contains("-o xtrace"));
        let jit_lines: Vec<&str> = linux.lines().filter(|l| l.contains("$JIT")).collect();
        assert_eq!(
            jit_lines,
            [
                "  --query Parameter.Value --output text 2>\"$STATE_DIR/ssm.err\") && [[ -n $JIT ]]; do",
                "runuser -u \"$RUNNER_USER\" -- ./run.sh --jitconfig \"$JIT\" || status=$?",
            ]
        );
        for l in linux.lines().filter(|l| l.contains("JIT")) {
            for printer in ["echo", "printf", "log ", "tee", "die "] {
                assert!(!l.contains(printer) || !l.contains("$JIT"), "{l}");
            }
        }

        let windows = render(&UserDataParams {
            os: Os::Windows,
            runner_version: Some("2.330.0"),
            ..params()
        })
        .unwrap();
        assert!(!windows.contains("Set-PSDebug") && !windows.contains("Start-Transcript"));
        let jit_uses: Vec<&str> = windows
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("$jit"))
            .collect();
        assert_eq!(
            jit_uses,
            [
                "$jit = Get-JitConfig",
                "while (-not $jit) {",
                "$jit = Get-JitConfig",
                "& (Join-Path $RunnerDir 'run.cmd') --jitconfig $jit",
                "$jit = $null",
                "$jit = $null",
            ]
        );
    }

    /// Each script deletes its parameter once it has read it, before the
    /// runner starts, and a failed delete does not stop it.
    #[test]
    fn the_parameter_is_deleted_after_reading_and_before_the_runner() {
        let linux = render(&params()).unwrap();
        let read = linux.find("until JIT=$(aws ssm get-parameter").unwrap();
        let delete = linux
            .find(r#"if ! aws ssm delete-parameter --region "$REGION" --name "$PARAM""#)
            .expect("the Linux script deletes its parameter, guarded by if");
        let runner = linux.find("./run.sh --jitconfig").unwrap();
        assert!(read < delete && delete < runner);
        assert_eq!(linux.matches("delete-parameter").count(), 1);

        let windows = render(&UserDataParams {
            os: Os::Windows,
            ..params()
        })
        .unwrap();
        let body = windows.find("$Param = \"/runfleet/").unwrap();
        let read = body + windows[body..].find("$jit = Get-JitConfig").unwrap();
        let delete = body + windows[body..].find("    Remove-JitConfig\n").unwrap();
        let runner = windows.find("--jitconfig $jit").unwrap();
        assert!(read < delete && delete < runner);
        assert!(windows.contains("& $AwsCli ssm delete-parameter --region $Region --name $Param"));
        assert!(
            windows.contains(
                "Remove-SSMParameter -Region $Region -Name $Param -Force -ErrorAction Stop"
            )
        );
        // Remove-JitConfig catches its own failure: nothing from it reaches
        // the outer catch (which powers off).
        let f = windows.find("function Remove-JitConfig").unwrap();
        let f = &windows[f..f + windows[f..].find("\n}\n").unwrap()];
        assert!(f.contains("$ErrorActionPreference = 'Continue'"));
        assert!(f.contains("} catch {") && !f.contains("throw"));
        assert!(!f.contains("$jit"), "never the value");
    }

    #[test]
    fn power_off_on_every_exit() {
        let s = render(&params()).unwrap();
        assert!(s.contains("trap power_off EXIT\n"));
        assert!(s.contains("shutdown -P now || poweroff || poweroff -f"));
        assert!(s.starts_with("#!/bin/bash\n"));
        // The max-lifetime timer is armed before anything that can wait or fail.
        let timer = s.find("setsid sh -c").unwrap();
        for later in ["imds_token)", "aws ssm get-parameter", "./run.sh"] {
            assert!(timer < s.find(later).unwrap(), "{later}");
        }
    }

    #[test]
    fn size_stays_well_under_the_ec2_limit() {
        let setup_4k: String = "echo 'install something useful here'\n".repeat(4096 / 36 + 1);
        assert!(setup_4k.len() >= 4096);
        for os in [Os::Linux, Os::Windows] {
            let base = render(&UserDataParams {
                os,
                runner_version: Some("2.330.0"),
                ..params()
            })
            .unwrap();
            assert!(base.len() < 8 * 1024, "{os:?}: {} bytes", base.len());
            let with_setup = render(&UserDataParams {
                os,
                runner_version: Some("2.330.0"),
                setup_script: Some(&setup_4k),
                ..params()
            })
            .unwrap();
            // At least 2 KB of headroom left with a 4 KB setup script.
            assert!(
                with_setup.len() < 14 * 1024,
                "{os:?}: {} bytes",
                with_setup.len()
            );
        }
        let setup_16k = "#".repeat(USER_DATA_LIMIT_BYTES);
        for os in [Os::Linux, Os::Windows] {
            let err = render(&UserDataParams {
                os,
                setup_script: Some(&setup_16k),
                ..params()
            })
            .unwrap_err();
            assert!(
                matches!(err, UserDataError::TooLarge { limit, size } if limit == USER_DATA_LIMIT_BYTES && size > limit),
                "{err}"
            );
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("acme-ci"), "'acme-ci'");
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(ps_quote("a'b"), "'a''b'");
        assert_eq!(ps_quote("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
    }

    proptest! {
        /// Any fleet either renders with its exact SSM path or is refused
        /// naming `fleet`; nothing in between.
        #[test]
        fn fleet_is_either_accepted_verbatim_or_refused(fleet in "\\PC{0,12}|[a-z0-9-]{1,12}") {
            match render(&UserDataParams { fleet: &fleet, ..params() }) {
                Ok(s) => {
                    prop_assert!(!fleet.is_empty());
                    prop_assert!(fleet.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                    let line = format!("\nFLEET='{fleet}'\n");
                    prop_assert!(s.contains(&line));
                }
                Err(e) => prop_assert_eq!(e.field(), Some("fleet")),
            }
        }

        /// Whatever the operator writes, it lands verbatim between two
        /// delimiter lines that it does not contain.
        #[test]
        fn any_setup_script_is_embedded_verbatim(
            body in "((RUNFLEET_SETUP_EOF(_[0-9])?|[^\\x00]{0,20})\n){0,6}"
        ) {
            prop_assume!(!body.trim().is_empty());
            let s = render(&UserDataParams { setup_script: Some(&body), ..params() }).unwrap();
            let delim = unique_delimiter(&body);
            prop_assert!(!body.lines().any(|l| l == delim));
            let open = format!("<<'{delim}'\n");
            let start = s.find(&open).unwrap() + open.len();
            let expected_end = format!("{body}{delim}\n");
            prop_assert!(s[start..].starts_with(&expected_end));
        }
    }
}
