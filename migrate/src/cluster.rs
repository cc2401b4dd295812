//! The cluster configuration migrate's etcd runs and restores use, checked before anything runs.
//!
//! etcd refuses a member whose `--name` is not in `--initial-cluster`, or whose
//! `--initial-advertise-peer-urls` differ from its `--initial-cluster` entry, but only when it
//! has to use them: a restore does ("couldn't find local name ... in the initial cluster
//! configuration"), a restart on existing data does not. Without this check an upgrade would
//! succeed and the next rollback fail after its snapshot was taken. So every step that runs
//! etcd checks them first, and names where each value came from.

use std::collections::BTreeMap;

use crate::options::Options;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("the member name `{name}` (from {name_source}) is not in the initial cluster `{cluster}` (from {cluster_source}); its members are: {members}")]
    NameNotInCluster {
        name: String,
        name_source: String,
        cluster: String,
        cluster_source: String,
        members: String,
    },
    #[error("`{url}` in {what} is not a peer URL: {why}")]
    BadUrl {
        url: String,
        what: String,
        why: String,
    },
    #[error("`{entry}` in the initial cluster `{cluster}` (from {cluster_source}) is not `<name>=<peer URL>`")]
    BadEntry {
        entry: String,
        cluster: String,
        cluster_source: String,
    },
    #[error("the initial cluster `{cluster}` (from {cluster_source}) gives member `{name}` the peer URLs {listed}, but --initial-advertise-peer-urls is {advertised}")]
    AdvertiseMismatch {
        name: String,
        cluster: String,
        cluster_source: String,
        listed: String,
        advertised: String,
    },
    #[error("port {port} is both a client port ({client}) and a peer port ({peer})")]
    PortClash {
        port: u16,
        client: String,
        peer: String,
    },
}

/// A parsed `scheme://host:port[/]` peer or client URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

/// Parses an etcd peer/client URL: `http` or `https`, a host, an explicit port, no path.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| "expected scheme://host:port".to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme `{scheme}`, expected http or https"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("a peer URL has no path".into());
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| "expected [address]:port".to_string())?;
            (h, p)
        }
        None => rest
            .rsplit_once(':')
            .ok_or_else(|| "no port (etcd needs one)".to_string())?,
    };
    if host.is_empty() || host.contains(':') && !rest.starts_with('[') {
        return Err("no host".into());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port `{port}` is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(Url {
        scheme: scheme.into(),
        host: host.into(),
        port,
    })
}

fn parse_urls(list: &str, what: &str) -> Result<Vec<Url>, ClusterConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            parse_url(u).map_err(|why| ClusterConfigError::BadUrl {
                url: u.into(),
                what: what.into(),
                why,
            })
        })
        .collect()
}

/// `--initial-cluster` as member name -> its peer URLs.
pub fn members(options: &Options) -> Result<BTreeMap<String, Vec<String>>, ClusterConfigError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in options.initial_cluster.split(',').map(str::trim) {
        let Some((name, url)) = entry
            .split_once('=')
            .filter(|(n, u)| !n.is_empty() && !u.is_empty())
        else {
            return Err(ClusterConfigError::BadEntry {
                entry: entry.into(),
                cluster: options.initial_cluster.clone(),
                cluster_source: options.initial_cluster_source.clone(),
            });
        };
        parse_urls(url, "--initial-cluster")?;
        out.entry(name.trim().into())
            .or_default()
            .push(url.trim().into());
    }
    Ok(out)
}

/// Every check, for a step that runs etcd or restores a snapshot.
pub fn check(options: &Options) -> Result<(), ClusterConfigError> {
    let members = members(options)?;
    let Some(listed) = members.get(&options.name) else {
        return Err(ClusterConfigError::NameNotInCluster {
            name: options.name.clone(),
            name_source: options.name_source.clone(),
            cluster: options.initial_cluster.clone(),
            cluster_source: options.initial_cluster_source.clone(),
            members: members.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    let advertised = parse_urls(
        &options.initial_advertise_peer_urls,
        "--initial-advertise-peer-urls",
    )?;
    let listen_peer = parse_urls(&options.listen_peer_urls, "--listen-peer-urls")?;
    let listen_client = parse_urls(&options.listen_client_urls, "--listen-client-urls")?;
    let mut want: Vec<String> = listed
        .iter()
        .map(|u| u.trim_end_matches('/').into())
        .collect();
    let mut have: Vec<String> = options
        .initial_advertise_peer_urls
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    want.sort();
    have.sort();
    if want != have && !advertised.is_empty() {
        return Err(ClusterConfigError::AdvertiseMismatch {
            name: options.name.clone(),
            cluster: options.initial_cluster.clone(),
            cluster_source: options.initial_cluster_source.clone(),
            listed: listed.join(","),
            advertised: options.initial_advertise_peer_urls.clone(),
        });
    }
    let client_ports: Vec<u16> = listen_client
        .iter()
        .map(|u| u.port)
        .chain([options.port])
        .collect();
    for peer in listen_peer
        .iter()
        .map(|u| u.port)
        .chain([options.peer_port])
    {
        if client_ports.contains(&peer) {
            return Err(ClusterConfigError::PortClash {
                port: peer,
                client: format!(
                    "--port {} / --listen-client-urls {}",
                    options.port, options.listen_client_urls
                ),
                peer: format!(
                    "--peer-port {} / --listen-peer-urls {}",
                    options.peer_port, options.listen_peer_urls
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(name: &str, cluster: &str, advertise: &str) -> Options {
        let flags = crate::options::Flags {
            name: Some(name.into()),
            data_dir: Some("/var/etcd/data".into()),
            initial_cluster: Some(cluster.into()),
            initial_advertise_peer_urls: Some(advertise.into()),
            target_version: Some("3.5.1".into()),
            target_storage: Some("etcd3".into()),
            bundled_versions: Some("3.4.23,3.5.1".into()),
            ..Default::default()
        };
        flags.resolve(&|_| None).unwrap()
    }

    #[test]
    fn urls() {
        for (text, ok) in [
            ("http://localhost:2380", true),
            ("https://10.0.0.1:2380/", true),
            ("https://[::1]:2380", true),
            ("http://localhost", false),
            ("localhost:2380", false),
            ("ftp://a:1", false),
            ("http://a:99999", false),
            ("http://a:2380/path", false),
            ("http://:2380", false),
        ] {
            assert_eq!(parse_url(text).is_ok(), ok, "{text}");
        }
    }

    #[test]
    fn the_name_must_be_a_member_and_advertise_its_urls() {
        let ok = options(
            "etcd-a",
            "etcd-a=http://localhost:2380",
            "http://localhost:2380",
        );
        assert_eq!(check(&ok), Ok(()));
        let ha = options(
            "b",
            "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380,c=https://10.0.0.3:2380",
            "https://10.0.0.2:2380",
        );
        assert_eq!(check(&ha), Ok(()));
        let err = check(&options(
            "etcd-node",
            "etcd-other=http://localhost:2380",
            "http://localhost:2380",
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ClusterConfigError::NameNotInCluster { .. }),
            "{text}"
        );
        assert!(text.contains("`etcd-node` (from --name)"), "{text}");
        assert!(text.contains("(from --initial-cluster)"), "{text}");
        assert!(text.contains("etcd-other"), "{text}");
        assert!(matches!(
            check(&options("a", "a=http://x:2380", "http://y:2380")),
            Err(ClusterConfigError::AdvertiseMismatch { .. })
        ));
        assert!(matches!(
            check(&options("a", "a=http://x", "http://x")),
            Err(ClusterConfigError::BadUrl { .. })
        ));
        assert!(matches!(
            check(&options("a", "a", "http://x:1")),
            Err(ClusterConfigError::BadEntry { .. })
        ));
        let mut clash = options("a", "a=http://x:2380", "http://x:2380");
        clash.listen_client_urls = "http://127.0.0.1:2380".into();
        assert!(matches!(
            check(&clash),
            Err(ClusterConfigError::PortClash { port: 2380, .. })
        ));
    }
}
