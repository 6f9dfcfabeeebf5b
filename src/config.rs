//! The branches file: `<name> <ip> <port>` per line, blank lines and `#` comments allowed.
//!
//! Parsing is pure and strict: every problem is reported as one [`ConfigError`] naming the file
//! and line, so the controller can print it and exit 2 without starting anything.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Longest branch name, in bytes, everywhere a name enters the bank: the branches file, the
/// `branch` command line, `InitBranch` and the peer handshake all apply this one limit, so a
/// name accepted at one door is never refused at another.
pub const MAX_NAME_BYTES: usize = 255;

/// Why `name` cannot be a branch name, if it cannot: empty, longer than [`MAX_NAME_BYTES`], or
/// holding whitespace or control characters (the branches file separates fields by
/// whitespace).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a branch name cannot be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "branch name of {} bytes is longer than the {MAX_NAME_BYTES}-byte limit",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "branch name {name:?} holds whitespace or control characters"
        ));
    }
    Ok(())
}

/// Why `ip` cannot be a branch's address, if it cannot: an unspecified address (`0.0.0.0`,
/// `::`) or a multicast or broadcast one names no single host that peers could dial and check.
pub fn check_address(ip: IpAddr) -> Result<(), String> {
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() {
        Err(format!(
            "{ip} is the unspecified address (listen-on-all), not one peers can dial: give the branch's own address"
        ))
    } else if ip.is_multicast() || broadcast {
        Err(format!(
            "{ip} is a multicast or broadcast address, not one branch's address"
        ))
    } else {
        Ok(())
    }
}

/// One branch as the controller knows it: where to reach it and what to call it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchEntry {
    /// The branch's unique name; also how peers identify each other on the wire.
    pub name: String,
    /// The address the controller and the other branches dial.
    pub addr: SocketAddr,
}

/// A problem with the branches file, located so that a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line number, when the problem belongs to one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// Reads and validates a branches file.
pub fn load_branches(path: &Path) -> Result<Vec<BranchEntry>, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: file.clone(),
        line: None,
        reason: format!("cannot read file: {err}"),
    })?;
    parse_branches(&file, &text)
}

/// Parses the text of a branches file named `file` (the name only appears in errors).
pub fn parse_branches(file: &str, text: &str) -> Result<Vec<BranchEntry>, ConfigError> {
    let error = |line: Option<usize>, reason: String| ConfigError {
        file: file.to_string(),
        line,
        reason,
    };
    let mut branches: Vec<BranchEntry> = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let [name, ip, port] = fields[..] else {
            return Err(error(
                Some(number),
                format!(
                    "expected `<name> <ip> <port>`, found {} field(s): {content:?}",
                    fields.len()
                ),
            ));
        };
        check_name(name).map_err(|reason| error(Some(number), reason))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| error(Some(number), format!("{ip:?} is not an IP address")))?;
        check_address(ip).map_err(|reason| error(Some(number), reason))?;
        let port: u16 = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(error(
                    Some(number),
                    format!("bad port {port:?}: expected a number from 1 to 65535"),
                ));
            }
        };
        let addr = SocketAddr::new(ip, port);
        if !names.insert(name.to_string()) {
            return Err(error(
                Some(number),
                format!("duplicate branch name {name:?}"),
            ));
        }
        // 127.0.0.1 and ::ffff:127.0.0.1 are one address.
        if !addrs.insert(SocketAddr::new(ip.to_canonical(), port)) {
            return Err(error(Some(number), format!("duplicate address {addr}")));
        }
        branches.push(BranchEntry {
            name: name.to_string(),
            addr,
        });
    }
    if branches.len() < 2 {
        return Err(error(
            None,
            format!(
                "a bank needs at least two branches, found {}",
                branches.len()
            ),
        ));
    }
    Ok(branches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_at(text: &str) -> (Option<usize>, String) {
        let err = parse_branches("b.txt", text).unwrap_err();
        (err.line, err.to_string())
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let text = "# bank\n\nb1 127.0.0.1 9090\n  b2 127.0.0.1 9091  # second\n";
        let branches = parse_branches("b.txt", text).unwrap();
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[1].name, "b2");
        assert_eq!(branches[1].addr, "127.0.0.1:9091".parse().unwrap());
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let (line, msg) = reason_at("b1 127.0.0.1 9090\nb2 127.0.0.1\n");
        assert_eq!(line, Some(2));
        assert!(msg.starts_with("b.txt:2: expected"), "{msg}");
    }

    #[test]
    fn bad_ip_and_bad_ports_are_rejected() {
        assert_eq!(reason_at("b1 nowhere 9090\nb2 127.0.0.1 1\n").0, Some(1));
        for port in ["0", "65536", "-1", "http"] {
            let (line, msg) = reason_at(&format!("b1 127.0.0.1 9090\nb2 127.0.0.1 {port}\n"));
            assert_eq!(line, Some(2));
            assert!(msg.contains("bad port"), "{msg}");
        }
    }

    #[test]
    fn duplicate_names_and_addresses_are_rejected() {
        let (line, msg) = reason_at("b1 127.0.0.1 9090\nb1 127.0.0.1 9091\n");
        assert_eq!(line, Some(2));
        assert!(msg.contains("duplicate branch name"), "{msg}");
        let (line, msg) = reason_at("b1 127.0.0.1 9090\nb2 127.0.0.1 9090\n");
        assert_eq!(line, Some(2));
        assert!(msg.contains("duplicate address"), "{msg}");
    }

    #[test]
    fn fewer_than_two_branches_is_an_error() {
        let (line, msg) = reason_at("# only one\nb1 127.0.0.1 9090\n");
        assert_eq!(line, None);
        assert!(msg.contains("at least two branches"), "{msg}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = load_branches(Path::new("/nonexistent/branches.txt")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/branches.txt: cannot read")
        );
    }

    #[test]
    fn names_over_the_limit_or_with_blanks_are_refused() {
        let long = "b".repeat(MAX_NAME_BYTES + 1);
        let text = format!("{long} 127.0.0.1 1\nb 127.0.0.1 2\n");
        let (line, reason) = reason_at(&text);
        assert_eq!(line, Some(1));
        assert!(reason.contains("256 bytes"), "{reason}");
        assert!(check_name(&"b".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(check_name("a\u{7}b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_address() {
        let (line, reason) = reason_at("a 127.0.0.1 9000\nb ::ffff:127.0.0.1 9000\n");
        assert_eq!(line, Some(2));
        assert!(reason.contains("duplicate address"), "{reason}");
    }

    #[test]
    fn unspecified_multicast_and_broadcast_addresses_are_refused() {
        for ip in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"] {
            let (line, reason) = reason_at(&format!("a {ip} 9000\nb 127.0.0.1 9001\n"));
            assert_eq!(line, Some(1), "{ip}");
            assert!(
                reason.contains("unspecified") || reason.contains("multicast"),
                "{ip}: {reason}"
            );
        }
    }
}
