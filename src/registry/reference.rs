//! Image references, `[host[:port]/]path[:tag][@digest]`, parsed by hand to the grammar of
//! distribution's `reference/regexp.go`, into oci-spec's `Reference` (built with its
//! constructors).
//!
//! Why not `Reference::from_str`: its regex spells the tag with Unicode `\w`, and compiling it
//! costs ~15 ms of CPU once per process, a third of a re-push or a plan. The grammar is small;
//! the tests below check this parser against oci-spec's on a table of valid and invalid
//! references. Deliberate differences, all stricter and all as distribution itself parses:
//! tags are ASCII (`[A-Za-z0-9_]`, as Go's `\w` is, where the Rust regex's `\w` also takes
//! non-ASCII letters); a first component without `.`, `:` or `localhost` is a path, so it must
//! be lowercase (oci-spec takes `Foo/bar`); digest hex is lowercase (go-digest).

use oci_spec::distribution::Reference;

const NAME_TOTAL_LENGTH_MAX: usize = 255;

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn path_component(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty()
        || !is_alnum_lower(bytes[0] as char)
        || !is_alnum_lower(bytes[bytes.len() - 1] as char)
    {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if is_alnum_lower(c) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__`, or any number of `-`.
        let start = i;
        while i < bytes.len() && !is_alnum_lower(bytes[i] as char) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn domain_component(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `component(.component)*(:port)?`
fn domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    host.split('.').all(domain_component)
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}` with ASCII `\w`.
fn tag(s: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = s.chars();
    chars.next().is_some_and(word)
        && s.len() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `algorithm:hex` with a known algorithm and its exact length.
fn digest(s: &str) -> Result<(), String> {
    let (algorithm, hex) = s
        .split_once(':')
        .ok_or_else(|| "invalid checksum digest format".to_string())?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ if algorithm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
            && algorithm.starts_with(|c: char| c.is_ascii_alphabetic()) =>
        {
            return Err("unsupported digest algorithm".into())
        }
        _ => return Err("invalid reference format".into()),
    };
    // Lowercase only, as go-digest (and so every distribution registry) demands.
    if !hex
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err("invalid reference format".into());
    }
    if hex.len() != length {
        return Err("invalid checksum digest length".into());
    }
    Ok(())
}

/// Parses `s` as docker and oci-spec do, normalising Docker Hub names
/// (`busybox` -> `docker.io/library/busybox:latest`).
pub fn parse(s: &str) -> Result<Reference, String> {
    if s.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    let invalid = || "invalid reference format".to_string();
    let (rest, digest_part) = match s.split_once('@') {
        Some((r, d)) => {
            digest(d)?;
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    let (name, tag_part) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => {
            if !tag(t) {
                return Err(invalid());
            }
            (n, Some(t.to_string()))
        }
        _ => (rest, None),
    };
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            if !domain(left) {
                return Err(invalid());
            }
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if !repository.split('/').all(path_component) {
        return Err(invalid());
    }
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name must not be more than 255 characters".into());
    }
    Ok(match (tag_part, digest_part) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t, d),
        (None, Some(d)) => Reference::with_digest(registry, repository, d),
        (t, None) => {
            Reference::with_tag(registry, repository, t.unwrap_or_else(|| "latest".into()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn agrees_with_oci_spec_on_valid_references() {
        let sha = format!("sha256:{}", "ab".repeat(32));
        for s in [
            "busybox".to_string(),
            "busybox:1.36.1".into(),
            "library/busybox".into(),
            "docker.io/library/busybox:1.36.1".into(),
            "index.docker.io/busybox".into(),
            "registry.k8s.io/etcd:3.5.1-0".into(),
            "staging-k8s.gcr.io/etcd-arm64:3.5.1-0".into(),
            "127.0.0.1:5000/k8s/etcd:3.5.1-0-linux-amd64".into(),
            "localhost/foo/bar".into(),
            "localhost:5000/a__b/c-d/e.f/g---h:T_a-g.1".into(),
            format!("127.0.0.1:5000/library/busybox@{sha}"),
            format!("quay.io/coreos/etcd:v3.5.1@{sha}"),
            format!("etcd:sha256-{}", "cd".repeat(32)),
        ] {
            let ours = parse(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            let theirs = Reference::from_str(&s).unwrap();
            assert_eq!(
                (
                    ours.registry(),
                    ours.repository(),
                    ours.tag(),
                    ours.digest()
                ),
                (
                    theirs.registry(),
                    theirs.repository(),
                    theirs.tag(),
                    theirs.digest()
                ),
                "{s}"
            );
            assert_eq!(ours.resolve_registry(), theirs.resolve_registry());
        }
    }

    #[test]
    fn refuses_what_oci_spec_refuses() {
        for s in [
            "",
            "UPPER/Case:x",
            "a/Upper",
            "foo/-bar",
            "foo/bar-",
            "foo/bar..baz",
            "foo/bar___baz",
            "host.example:port/x",
            "-host.example/x",
            "x:-tag",
            "x:a/b",
            "x@sha256:abc",
            "x@md5:0123456789abcdef0123456789abcdef",
            "x@sha256:zz",
            "x:",
            "/x",
            "x//y",
        ] {
            assert!(parse(s).is_err(), "accepted {s:?}");
            assert!(Reference::from_str(s).is_err(), "oci-spec accepts {s:?}");
        }
        // Stricter than oci-spec, as distribution is.
        for s in [
            "Foo/bar".to_string(),
            "LOCALHOST/x".into(),
            "my_org.io/x".into(),
            format!("x@sha256:{}", "AB".repeat(32)),
            "x:t\u{e9}g".into(),
        ] {
            assert!(parse(&s).is_err(), "accepted {s:?}");
            assert!(
                Reference::from_str(&s).is_ok(),
                "oci-spec refuses {s:?} too"
            );
        }
        let long = format!("x/{}", "a".repeat(255));
        assert!(parse(&long).is_err());
        let long_tag = format!("x:{}", "t".repeat(129));
        assert!(parse(&long_tag).is_err());
    }
}
