//! Label matching with GitHub's semantics: a runner can take a job when it
//! has every label the job asks for, compared case-insensitively.

use crate::config::{Config, PoolConfig};

/// Whether a runner (or pool) labelled `have` satisfies a job asking for `want`.
pub fn satisfies(have: &[String], want: &[String]) -> bool {
    want.iter()
        .all(|w| have.iter().any(|h| h.eq_ignore_ascii_case(w)))
}

/// The first pool whose labels contain all of the job's labels.
pub fn pool_for<'a>(config: &'a Config, job_labels: &[String]) -> Option<&'a PoolConfig> {
    config
        .pools
        .iter()
        .find(|p| satisfies(&p.labels, job_labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_labels_case_insensitive() {
        let pool = v(&["self-hosted", "Linux", "X64"]);
        assert!(satisfies(&pool, &v(&["self-hosted", "linux"])));
        assert!(satisfies(&pool, &v(&["SELF-HOSTED", "linux", "x64"])));
        assert!(!satisfies(&pool, &v(&["self-hosted", "linux", "arm64"])));
        assert!(satisfies(&pool, &v(&[])));
    }

    proptest! {
        #[test]
        fn subset_always_satisfies(labels in proptest::collection::vec("[a-zA-Z0-9-]{1,12}", 0..8), mask in any::<u8>()) {
            let want: Vec<String> = labels.iter().enumerate()
                .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
                .map(|(_, l)| l.to_uppercase()).collect();
            prop_assert!(satisfies(&labels, &want));
        }

        #[test]
        fn extra_label_never_satisfies(labels in proptest::collection::vec("[a-z]{1,8}", 0..8)) {
            let mut want = labels.clone();
            want.push("NOT-A-LABEL-0".into());
            prop_assert!(!satisfies(&labels, &want));
        }
    }
}
