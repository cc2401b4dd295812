//! Go build info, read from a binary without a Go toolchain: what `go version -m` prints and
//! what scanners (syft's Go binary cataloger, trivy's gobinary analyzer, grype) judge a Go
//! binary by.
//!
//! The format (Go's `debug/buildinfo`): a 32-byte header in the `.go.buildinfo` section (or,
//! without it, at a 16-byte aligned offset of the first writable PT_LOAD segment) that starts with the magic
//! `\xff Go buildinf:`, then the pointer size and a flags byte. With flag 0x2 (Go 1.18 and
//! later) two varint-prefixed strings follow the header: the Go version and the module info.
//! Without it, two pointers (in the byte order flag 0x1 gives) name Go string headers elsewhere
//! in the binary, which are read through the ELF sections' addresses. The module info is
//! framed by 16 bytes on each side and holds tab-separated lines (`path`, `mod`, `dep`, `=>`,
//! `build`).
//!
//! ELF parsing is the `object` crate's (both byte orders, 32 and 64 bits); the header, varints,
//! the module lines and Go's quoting are written here: no crate reads them.
//!
//! Rust binaries (migrate) carry no Go build info; built with cargo-auditable they carry their
//! crate list in a `.dep-v0` section (zlib-compressed JSON), which syft's and trivy's Rust
//! catalogers read. [`read_rust`] reads it with `auditable-info`, the format's own reader.

use std::collections::BTreeMap;

use object::{Object, ObjectSection};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER: usize = 32;
const ALIGN: usize = 16;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_INLINE: u8 = 0x2;

#[derive(Debug, thiserror::Error)]
pub enum BuildInfoError {
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("the Go build info is damaged: {0}")]
    Damaged(String),
}

/// One module of a Go binary: the main module or a dependency, and what replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoModule {
    pub path: String,
    /// `(devel)` for a main module built from a tree without a version.
    pub version: String,
    /// The `h1:` sum the go command verified (none for a replacement by a local directory).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<Box<GoModule>>,
}

impl GoModule {
    /// What was really compiled in: the replacement where there is one.
    pub fn effective(&self) -> &GoModule {
        self.replace.as_deref().unwrap_or(self)
    }

    /// A replacement by a local directory (`=> ../api (devel)`, as etcd's own modules are
    /// built): its code is the main tree's. Go's rule: a path that starts with `./`, `../` or
    /// `/`.
    pub fn is_local_replace(&self) -> bool {
        self.replace.as_deref().is_some_and(|r| {
            r.path.starts_with("./") || r.path.starts_with("../") || r.path.starts_with('/')
        })
    }
}

/// The build info of one Go binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoBuildInfo {
    /// `go1.26.10` (with ` X:...` experiments when there were any).
    pub go_version: String,
    /// The main package's import path.
    pub path: String,
    pub main: Option<GoModule>,
    pub deps: Vec<GoModule>,
    /// `GOOS`, `GOARCH`, `CGO_ENABLED`, `-trimpath`, `-ldflags`, `vcs.*`, ...
    pub settings: BTreeMap<String, String>,
}

impl GoBuildInfo {
    /// The Go release without `go` and experiments: `1.26.10`.
    pub fn stdlib_version(&self) -> String {
        let first = self.go_version.split_whitespace().next().unwrap_or("");
        first.strip_prefix("go").unwrap_or(first).to_string()
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

/// The Go build info of the binary `bytes`, or None for an ELF file that is not a Go binary
/// (or a Go binary built before Go 1.13, which had none).
pub fn read(bytes: &[u8]) -> Result<Option<GoBuildInfo>, BuildInfoError> {
    let file = object::File::parse(bytes).map_err(|e| BuildInfoError::NotElf(e.to_string()))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(BuildInfoError::NotElf(format!("{:?}", file.format())));
    }
    let header = match file.section_by_name(".go.buildinfo") {
        Some(s) => {
            let data = s.data().map_err(|e| damaged(e.to_string()))?;
            data.starts_with(MAGIC).then_some(data)
        }
        // No such section (a stripped section table): the header is 16-byte aligned in the
        // first writable, non-executable PT_LOAD segment, where Go's debug/buildinfo looks.
        None => data_segment(&file).and_then(find_aligned),
    };
    let Some(header) = header else {
        return Ok(None);
    };
    if header.len() < HEADER {
        return Err(damaged("the header is cut short".into()));
    }
    let (ptr_size, flags) = (header[14] as usize, header[15]);
    let (version, modinfo) = if flags & FLAG_INLINE != 0 {
        let (version, rest) = varint_string(&header[HEADER..])?;
        let (modinfo, _) = varint_string(rest)?;
        (version.to_vec(), modinfo.to_vec())
    } else {
        let big = flags & FLAG_BIG_ENDIAN != 0;
        let mem = Memory {
            file: &file,
            ptr_size,
            big,
        };
        let at = |i: usize| mem.pointer(&header[16 + i * ptr_size..]);
        (mem.string(at(0)?)?, mem.string(at(1)?)?)
    };
    if version.is_empty() {
        return Ok(None);
    }
    let modinfo = unframe(&modinfo);
    let text = String::from_utf8_lossy(modinfo);
    parse(&String::from_utf8_lossy(&version), &text).map(Some)
}

/// Does the ELF file keep its symbol table (`.symtab`)? Go's `-ldflags=-s` drops it, and
/// without it govulncheck cannot tell which functions a binary contains.
pub fn has_symbol_table(bytes: &[u8]) -> bool {
    object::File::parse(bytes).is_ok_and(|f| f.section_by_name(".symtab").is_some())
}

fn damaged(message: String) -> BuildInfoError {
    BuildInfoError::Damaged(message)
}

/// The first loadable segment that is writable and not executable (Go's data segment).
fn data_segment<'d>(file: &object::File<'d>) -> Option<&'d [u8]> {
    use object::{ObjectSegment, SegmentFlags};
    const PF_X: u32 = 0x1;
    const PF_W: u32 = 0x2;
    file.segments().find_map(|seg| match seg.flags() {
        SegmentFlags::Elf { p_flags } if p_flags & (PF_X | PF_W) == PF_W => seg.data().ok(),
        _ => None,
    })
}

fn find_aligned(bytes: &[u8]) -> Option<&[u8]> {
    (0..bytes.len().saturating_sub(HEADER))
        .step_by(ALIGN)
        .find(|&i| bytes[i..].starts_with(MAGIC))
        .map(|i| &bytes[i..])
}

/// A string prefixed by its length as an unsigned LEB128 varint; and what follows it.
fn varint_string(data: &[u8]) -> Result<(&[u8], &[u8]), BuildInfoError> {
    let (mut len, mut shift, mut used) = (0u64, 0u32, 0usize);
    loop {
        let b = *data
            .get(used)
            .ok_or_else(|| damaged("a string length runs past the section".into()))?;
        used += 1;
        if shift > 63 {
            return Err(damaged("a string length overflows".into()));
        }
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| used.checked_add(l))
        .filter(|&e| e <= data.len())
        .ok_or_else(|| damaged(format!("a string of {len} bytes runs past the section")))?;
    Ok((&data[used..end], &data[end..]))
}

/// The module info without the 16 bytes that frame it (Go 1.13 and later).
fn unframe(modinfo: &[u8]) -> &[u8] {
    let n = modinfo.len();
    if n >= 33 && modinfo[n - 17] == b'\n' {
        &modinfo[16..n - 16]
    } else {
        modinfo
    }
}

/// The binary's memory as its sections lay it out, for the pre-1.18 pointer format.
struct Memory<'a, 'f> {
    file: &'f object::File<'a>,
    ptr_size: usize,
    big: bool,
}

impl Memory<'_, '_> {
    fn pointer(&self, raw: &[u8]) -> Result<u64, BuildInfoError> {
        let raw = raw
            .get(..self.ptr_size)
            .ok_or_else(|| damaged("a pointer is cut short".into()))?;
        Ok(match (self.ptr_size, self.big) {
            (4, false) => u64::from(u32::from_le_bytes(raw.try_into().expect("4 bytes"))),
            (4, true) => u64::from(u32::from_be_bytes(raw.try_into().expect("4 bytes"))),
            (8, false) => u64::from_le_bytes(raw.try_into().expect("8 bytes")),
            (8, true) => u64::from_be_bytes(raw.try_into().expect("8 bytes")),
            (n, _) => return Err(damaged(format!("pointer size {n}"))),
        })
    }

    fn bytes(&self, addr: u64, len: u64) -> Result<&[u8], BuildInfoError> {
        for s in self.file.sections() {
            let (start, size) = (s.address(), s.size());
            if addr >= start && addr.checked_add(len).is_some_and(|e| e <= start + size) {
                if let Ok(Some(d)) = s.data_range(addr, len) {
                    return Ok(d);
                }
            }
        }
        Err(damaged(format!(
            "{len} bytes at {addr:#x} are in no section of the file"
        )))
    }

    /// A Go string header (data pointer, length) at `addr`, and the bytes it names.
    fn string(&self, addr: u64) -> Result<Vec<u8>, BuildInfoError> {
        let header = self.bytes(addr, 2 * self.ptr_size as u64)?;
        let data = self.pointer(header)?;
        let len = self.pointer(&header[self.ptr_size..])?;
        Ok(self.bytes(data, len)?.to_vec())
    }
}

/// Parses the module info lines as Go's `debug.ParseBuildInfo` does.
pub fn parse(go_version: &str, text: &str) -> Result<GoBuildInfo, BuildInfoError> {
    let mut info = GoBuildInfo {
        go_version: go_version.to_string(),
        path: String::new(),
        main: None,
        deps: Vec::new(),
        settings: BTreeMap::new(),
    };
    let module = |fields: &[&str], line: &str| -> Result<GoModule, BuildInfoError> {
        match fields {
            [path, version, rest @ ..] if rest.len() <= 1 => Ok(GoModule {
                path: path.to_string(),
                version: version.to_string(),
                sum: rest.first().map(|s| s.to_string()).unwrap_or_default(),
                replace: None,
            }),
            [path] => Ok(GoModule {
                path: path.to_string(),
                version: String::new(),
                sum: String::new(),
                replace: None,
            }),
            _ => Err(damaged(format!("unexpected module line `{line}`"))),
        }
    };
    // Which module a `=>` line replaces: the last `mod` or `dep`.
    let mut last_is_main = false;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (kind, rest) = line.split_once('\t').unwrap_or((line, ""));
        let fields: Vec<&str> = rest.split('\t').collect();
        match kind {
            "go" => info.go_version = rest.to_string(),
            "path" => info.path = rest.to_string(),
            "mod" => {
                info.main = Some(module(&fields, line)?);
                last_is_main = true;
            }
            "dep" => {
                info.deps.push(module(&fields, line)?);
                last_is_main = false;
            }
            "=>" => {
                let replacement = Some(Box::new(module(&fields, line)?));
                let target = if last_is_main {
                    info.main.as_mut()
                } else {
                    info.deps.last_mut()
                };
                target
                    .ok_or_else(|| damaged(format!("`{line}` replaces nothing")))?
                    .replace = replacement;
            }
            "build" => {
                let (key, value) = split_setting(rest)
                    .ok_or_else(|| damaged(format!("unexpected build line `{line}`")))?;
                info.settings.insert(key, value);
            }
            // Lines a newer Go adds are kept out, not refused.
            _ => {}
        }
    }
    Ok(info)
}

/// `key=value`, either side quoted with Go's strconv.Quote when it holds a space, a tab, a
/// quote, `=` (key) or a newline (value).
fn split_setting(s: &str) -> Option<(String, String)> {
    let (key, rest) = if s.starts_with('"') {
        let (k, used) = unquote_prefix(s)?;
        (k, s[used..].strip_prefix('=')?)
    } else {
        let (k, v) = s.split_once('=')?;
        (k.to_string(), v)
    };
    let value = if rest.starts_with('"') {
        let (v, used) = unquote_prefix(rest)?;
        (used == rest.len()).then_some(v)?
    } else {
        rest.to_string()
    };
    Some((key, value))
}

/// A Go double-quoted string at the start of `s`: its value and how many bytes it took.
fn unquote_prefix(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' | '"' | '\'' => out.push(e),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..n)
                            .map(|_| chars.next().map(|(_, c)| c))
                            .collect::<Option<_>>()?;
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(code)?);
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

/// A Rust crate compiled into a binary, as cargo-auditable recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RustCrate {
    pub name: String,
    pub version: String,
    /// `crates.io`, `local` (a path dependency: the workspace's own crates), `git` or
    /// `registry`.
    pub source: String,
}

impl RustCrate {
    /// `pkg:cargo/<name>@<version>`, as syft and trivy name a crate.
    pub fn purl(&self) -> String {
        format!(
            "pkg:cargo/{}@{}",
            purl_encode(&self.name),
            purl_encode(&self.version)
        )
    }
}

/// What a Rust binary built with cargo-auditable says it holds: the root crate (the binary's
/// own package) and every crate linked into it. Build-time-only crates (proc macros, build
/// scripts' dependencies) are left out, as scanners leave them out: none of their code is in
/// the binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RustBuildInfo {
    pub root: RustCrate,
    pub crates: Vec<RustCrate>,
}

/// The decompressed crate list may be this large (migrate's is under 8 KiB).
const RUST_AUDIT_LIMIT: usize = 8 << 20;

/// The cargo-auditable crate list of the binary `bytes`, or None when it has none (a Go
/// binary, or a Rust one built with plain `cargo build`).
pub fn read_rust(bytes: &[u8]) -> Result<Option<RustBuildInfo>, BuildInfoError> {
    use auditable_info::Error;
    let info = match auditable_info::audit_info_from_slice(bytes, RUST_AUDIT_LIMIT) {
        Ok(info) => info,
        Err(Error::NoAuditData) => return Ok(None),
        Err(e) => return Err(damaged(format!("the cargo-auditable crate list: {e}"))),
    };
    let mut root = None;
    let mut crates = Vec::new();
    for p in info.packages {
        let c = RustCrate {
            name: p.name,
            version: p.version.to_string(),
            // The format's own spelling (`crates.io`, `local`, `git`, `registry`, ...).
            source: p.source.into(),
        };
        if p.root {
            root = Some(c);
        } else if p.kind == auditable_serde::DependencyKind::Runtime {
            crates.push(c);
        }
    }
    let root = root.ok_or_else(|| damaged("the cargo-auditable crate list has no root".into()))?;
    Ok(Some(RustBuildInfo { root, crates }))
}

/// A package URL for a Go module (`pkg:golang/<path>@<version>`), as the purl spec's golang
/// type and syft write it: path segments and version percent-encoded where they need it.
pub fn purl(path: &str, version: &str) -> String {
    let segments: Vec<String> = path.split('/').map(purl_encode).collect();
    if version.is_empty() {
        format!("pkg:golang/{}", segments.join("/"))
    } else {
        format!("pkg:golang/{}@{}", segments.join("/"), purl_encode(version))
    }
}

/// The Go standard library's purl: `pkg:golang/stdlib@1.26.10`.
pub fn stdlib_purl(info: &GoBuildInfo) -> String {
    purl("stdlib", &info.stdlib_version())
}

fn purl_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b".-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODINFO: &str = "path\tgo.etcd.io/etcd/server/v3\nmod\tgo.etcd.io/etcd/server/v3\t(devel)\t\ndep\tgithub.com/beorn7/perks\tv1.0.1\th1:VlbKKnNfV8bJzeqoa4cOKqO6bYr3WgKZxO8Z16+hsOM=\ndep\tgo.etcd.io/etcd/api/v3\tv3.6.17\t\n=>\t../api\t(devel)\t\nbuild\t-buildmode=exe\nbuild\t-ldflags=\"-X go.etcd.io/etcd/api/v3/version.GitSHA=abc\"\nbuild\tCGO_ENABLED=0\nbuild\tGOARCH=s390x\n";

    #[test]
    fn parses_modules_replacements_and_quoted_settings() {
        let info = parse("go1.26.10", MODINFO).unwrap();
        assert_eq!(info.path, "go.etcd.io/etcd/server/v3");
        assert_eq!(info.main.as_ref().unwrap().version, "(devel)");
        assert_eq!(info.deps.len(), 2);
        assert_eq!(
            info.deps[0].sum,
            "h1:VlbKKnNfV8bJzeqoa4cOKqO6bYr3WgKZxO8Z16+hsOM="
        );
        assert!(info.deps[1].is_local_replace());
        assert_eq!(info.deps[1].effective().path, "../api");
        assert!(!info.deps[0].is_local_replace());
        assert_eq!(
            info.setting("-ldflags"),
            Some("-X go.etcd.io/etcd/api/v3/version.GitSHA=abc")
        );
        assert_eq!(info.setting("GOARCH"), Some("s390x"));
        assert_eq!(info.stdlib_version(), "1.26.10");
    }

    #[test]
    fn go_quoting_round_trips() {
        assert_eq!(
            split_setting(r#""a=b"="x\ty\"\u00e9""#),
            Some(("a=b".into(), "x\ty\"é".into()))
        );
        assert_eq!(split_setting(r#"k="unterminated"#), None);
    }

    #[test]
    fn damaged_varints_are_refused_not_followed() {
        assert!(varint_string(&[0xff; 12]).is_err());
        assert!(varint_string(&[5, b'a']).is_err());
        assert_eq!(
            varint_string(&[1, b'a', 9]).unwrap(),
            (&b"a"[..], &[9u8][..])
        );
    }

    #[test]
    fn purls_encode_what_the_spec_asks() {
        assert_eq!(
            purl("github.com/Azure/go-ansiterm", "v0.0.0+incompatible"),
            "pkg:golang/github.com/Azure/go-ansiterm@v0.0.0%2Bincompatible"
        );
        assert_eq!(purl("stdlib", "1.26.10"), "pkg:golang/stdlib@1.26.10");
    }
}
