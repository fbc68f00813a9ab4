//! AWS errors mapped to runfleet's closed set of [`ErrorKind`]s.
//!
//! The mapping looks at the AWS error code first (EC2 answers
//! `InsufficientInstanceCapacity` with HTTP 500, so the status alone would
//! call it transient), then at the HTTP status, then at how the SDK failed
//! (timeout, connection) when there was no answer at all.
//!
//! Messages name the operation and the AWS code. AWS's own message text is
//! kept (it is what an operator needs), cut to a bounded length, and passed
//! through [`scrub`] by callers that sent a secret, since some services echo
//! parameter values in validation messages.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use runfleet_core::model::ErrorKind;
use runfleet_engine::ports::PortError;

/// The longest piece of an AWS message copied into a [`PortError`].
const MAX_AWS_MESSAGE: usize = 300;

/// Codes that mean "no capacity for this offering, try another one".
const CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacityOnHost",
    "InsufficientFreeAddressesInSubnet",
    "UnfulfillableCapacity",
    "Unsupported",
    "SpotMaxPriceTooLow",
];

const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
];

const QUOTA: &[&str] = &[
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "MaxSpotFleetRequestCountExceeded",
    "InstanceLimitExceeded",
    "ResourceLimitExceeded",
    "ParameterLimitExceeded",
    "ParameterMaxVersionLimitExceeded",
    "HierarchyLevelLimitExceededException",
    "VolumeLimitExceeded",
    "AddressLimitExceeded",
];

const AUTH: &[&str] = &[
    "UnauthorizedOperation",
    "AuthFailure",
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "UnrecognizedClientException",
    "OptInRequired",
    "Blocked",
    "PendingVerification",
    "RegionDisabledException",
    "InvalidAccessKeyId",
    "InvalidToken",
    "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
];

const NOT_FOUND: &[&str] = &[
    "InvalidInstanceID.NotFound",
    "ParameterNotFound",
    "ParameterVersionNotFound",
];

const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServerErrorException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestExpired",
    "IdempotentParameterMismatchInProgress",
];

/// The kind of an AWS error code, if the code is known or has a known shape.
pub fn kind_of_code(code: &str) -> Option<ErrorKind> {
    let is = |set: &[&str]| set.contains(&code);
    if is(CAPACITY) {
        Some(ErrorKind::Capacity)
    } else if is(THROTTLED) {
        Some(ErrorKind::Throttled)
    } else if is(QUOTA) {
        Some(ErrorKind::Quota)
    } else if is(AUTH)
        || code.starts_with("AccessDenied")
        || code.starts_with("UnauthorizedOperation")
    {
        Some(ErrorKind::Auth)
    } else if is(NOT_FOUND) {
        Some(ErrorKind::NotFound)
    } else if is(TRANSIENT) {
        Some(ErrorKind::Transient)
    } else if code.starts_with("Invalid")
        || code.starts_with("Missing")
        || code.starts_with("Validation")
        || code.starts_with("Unknown")
        || code.ends_with(".Malformed")
        || code == "IdempotentParameterMismatch"
        || code == "DryRunOperation"
        || code == "OperationNotPermitted"
        || code == "UnsupportedOperation"
        || code == "ParameterAlreadyExists"
        || code == "HierarchyTypeMismatchException"
    {
        Some(ErrorKind::Invalid)
    } else {
        None
    }
}

/// The kind of an AWS answer: by code, else by HTTP status.
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    if let Some(kind) = code.and_then(kind_of_code) {
        return kind;
    }
    match status {
        Some(429) => ErrorKind::Throttled,
        Some(401 | 403) => ErrorKind::Auth,
        Some(404) => ErrorKind::NotFound,
        Some(s) if s >= 500 => ErrorKind::Transient,
        Some(_) => ErrorKind::Invalid,
        None => ErrorKind::Transient,
    }
}

/// The AWS code of an SDK error, when the service answered with one.
pub fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(_) => err.code(),
        _ => None,
    }
}

/// Maps an SDK error of operation `op` (e.g. `"ec2:RunInstances"`) to a
/// [`PortError`] naming the operation and the AWS code.
pub fn from_sdk<E>(op: &str, err: &SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let code = code_of(err);
            let kind = classify(code, status);
            let msg = err.message().map(short).unwrap_or_default();
            let message = match (code, status) {
                (Some(c), _) if msg.is_empty() => format!("{op}: {c}"),
                (Some(c), _) => format!("{op}: {c}: {msg}"),
                (None, Some(s)) => format!("{op}: HTTP {s} with no AWS error code"),
                (None, None) => format!("{op}: unreadable answer"),
            };
            PortError::new(kind, message)
        }
        SdkError::TimeoutError(_) => {
            PortError::new(ErrorKind::Transient, format!("{op}: timed out"))
        }
        SdkError::DispatchFailure(d) => {
            let what = if d.is_timeout() {
                "timed out"
            } else if d.is_io() {
                "connection failed"
            } else {
                "request not sent"
            };
            PortError::new(ErrorKind::Transient, format!("{op}: {what}"))
        }
        SdkError::ConstructionFailure(_) => PortError::new(
            ErrorKind::Invalid,
            format!("{op}: request could not be built"),
        ),
        _ => PortError::new(ErrorKind::Transient, format!("{op}: failed")),
    }
}

/// `text` cut to a bounded length on a character boundary, one line.
fn short(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.len() <= MAX_AWS_MESSAGE {
        return one_line;
    }
    let mut end = MAX_AWS_MESSAGE;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &one_line[..end])
}

/// `err` with every occurrence of `secret` (and of any long piece of it)
/// removed from its message. Used by calls that sent a secret.
pub fn scrub(mut err: PortError, secret: &str) -> PortError {
    err.message = scrub_text(&err.message, secret);
    err
}

fn scrub_text(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(secret, "***");
    // A service may quote a truncated value: drop any 12-character window of
    // the secret that still appears.
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() > 12 {
        for w in chars.windows(12) {
            let piece: String = w.iter().collect();
            if out.contains(&piece) {
                out = out.replace(&piece, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let cases = [
            ("InsufficientInstanceCapacity", ErrorKind::Capacity),
            ("InsufficientCapacity", ErrorKind::Capacity),
            ("UnfulfillableCapacity", ErrorKind::Capacity),
            ("Unsupported", ErrorKind::Capacity),
            ("InsufficientHostCapacity", ErrorKind::Capacity),
            ("SpotMaxPriceTooLow", ErrorKind::Capacity),
            ("RequestLimitExceeded", ErrorKind::Throttled),
            ("Throttling", ErrorKind::Throttled),
            ("ThrottlingException", ErrorKind::Throttled),
            ("VcpuLimitExceeded", ErrorKind::Quota),
            ("MaxSpotInstanceCountExceeded", ErrorKind::Quota),
            ("InstanceLimitExceeded", ErrorKind::Quota),
            ("UnauthorizedOperation", ErrorKind::Auth),
            ("AuthFailure", ErrorKind::Auth),
            ("AccessDenied", ErrorKind::Auth),
            ("AccessDeniedException", ErrorKind::Auth),
            ("ExpiredToken", ErrorKind::Auth),
            ("InvalidClientTokenId", ErrorKind::Auth),
            ("InvalidParameterValue", ErrorKind::Invalid),
            ("InvalidParameterCombination", ErrorKind::Invalid),
            ("InvalidLaunchTemplateId.NotFound", ErrorKind::Invalid),
            (
                "InvalidLaunchTemplateName.NotFoundException",
                ErrorKind::Invalid,
            ),
            ("InvalidSubnetID.NotFound", ErrorKind::Invalid),
            ("InvalidAMIID.Malformed", ErrorKind::Invalid),
            ("IdempotentParameterMismatch", ErrorKind::Invalid),
            ("ValidationException", ErrorKind::Invalid),
            ("InvalidInstanceID.NotFound", ErrorKind::NotFound),
            ("ParameterNotFound", ErrorKind::NotFound),
            ("InternalError", ErrorKind::Transient),
            ("ServiceUnavailable", ErrorKind::Transient),
        ];
        for (code, kind) in cases {
            assert_eq!(classify(Some(code), Some(400)), kind, "{code}");
        }
    }

    #[test]
    fn status_decides_when_the_code_is_unknown() {
        // ICE comes with HTTP 500: the code wins over the status.
        assert_eq!(
            classify(Some("InsufficientInstanceCapacity"), Some(500)),
            ErrorKind::Capacity
        );
        assert_eq!(
            classify(Some("SomethingNew"), Some(503)),
            ErrorKind::Transient
        );
        assert_eq!(
            classify(Some("SomethingNew"), Some(400)),
            ErrorKind::Invalid
        );
        assert_eq!(classify(None, Some(429)), ErrorKind::Throttled);
        assert_eq!(classify(None, Some(403)), ErrorKind::Auth);
        assert_eq!(classify(None, Some(502)), ErrorKind::Transient);
        assert_eq!(classify(None, None), ErrorKind::Transient);
    }

    #[test]
    fn scrub_removes_the_secret_and_pieces_of_it() {
        let secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXJ1bm5lci1jb25maWc";
        let e = PortError::new(
            ErrorKind::Invalid,
            format!("ssm:PutParameter: ValidationException: Value '{secret}' is bad"),
        );
        let s = scrub(e, secret);
        assert!(!s.message.contains(secret), "{}", s.message);
        assert!(s.message.contains("ValidationException"));
        let e = PortError::new(
            ErrorKind::Invalid,
            format!("value '{}...' too long", &secret[..20]),
        );
        let s = scrub(e, secret);
        assert!(!s.message.contains(&secret[..13]), "{}", s.message);
    }

    #[test]
    fn long_messages_are_cut() {
        let s = short(&"é".repeat(400));
        assert!(s.len() <= MAX_AWS_MESSAGE + "…".len());
        assert_eq!(short("a\nb"), "a b");
    }
}
