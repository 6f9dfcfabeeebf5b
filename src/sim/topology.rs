//! The simulator's input files: a topology and an event script.
//!
//! Topology: `#` starts a comment line; the first other line is the number of branches N; then
//! N lines `<name> <balance>`; then any number of `<src> <dst>` lines, each a one-way FIFO link.
//!
//! Events, one per line (`#` comments and blank lines allowed): `send <src> <dst> <amount>`,
//! `snapshot <name>`, `tick [n]`, `cut <src> <dst>` (the link's connection fails: what is in
//! flight on it is lost, and the sender resends what was not acknowledged).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::SimError;

/// Branches, their balances and the one-way links between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Branch names in file order (the order of the output).
    pub names: Vec<String>,
    /// Initial balance per branch.
    pub balances: Vec<u64>,
    /// `(src, dst)` branch indices of every link, in file order.
    pub links: Vec<(usize, usize)>,
}

impl Topology {
    /// Parses a topology file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let error = |line: usize, reason: String| SimError::at(file, line, reason);
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        let (count_line, count) = lines.next().ok_or_else(|| {
            SimError::at(
                file,
                0,
                "empty topology: expected the number of branches".into(),
            )
        })?;
        let count: usize = count.parse().map_err(|_| {
            error(
                count_line,
                format!("expected the number of branches, found {count:?}"),
            )
        })?;
        let mut names = Vec::with_capacity(count);
        let mut balances = Vec::with_capacity(count);
        let mut index: HashMap<String, usize> = HashMap::new();
        for _ in 0..count {
            let (number, line) = lines.next().ok_or_else(|| {
                SimError::at(
                    file,
                    0,
                    format!("expected {count} branches, found {}", names.len()),
                )
            })?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, balance] = fields[..] else {
                return Err(error(
                    number,
                    format!("expected `<name> <balance>`, found {line:?}"),
                ));
            };
            let balance: u64 = balance
                .parse()
                .map_err(|_| error(number, format!("bad balance {balance:?}")))?;
            if index.insert(name.to_string(), names.len()).is_some() {
                return Err(error(number, format!("duplicate branch name {name:?}")));
            }
            names.push(name.to_string());
            balances.push(balance);
        }
        let mut links = Vec::new();
        let mut seen = BTreeSet::new();
        for (number, line) in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [src, dst] = fields[..] else {
                return Err(error(
                    number,
                    format!("expected a link `<src> <dst>`, found {line:?}"),
                ));
            };
            let lookup = |name: &str| {
                index
                    .get(name)
                    .copied()
                    .ok_or_else(|| error(number, format!("unknown branch {name:?}")))
            };
            let (src, dst) = (lookup(src)?, lookup(dst)?);
            if src == dst {
                return Err(error(
                    number,
                    format!("a link from {:?} to itself", names[src]),
                ));
            }
            if !seen.insert((src, dst)) {
                return Err(error(
                    number,
                    format!("duplicate link {} -> {}", names[src], names[dst]),
                ));
            }
            links.push((src, dst));
        }
        Ok(Self {
            names,
            balances,
            links,
        })
    }

    /// The index of branch `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The topology in its file format.
    pub fn to_text(&self) -> String {
        let mut text = format!("{}\n", self.names.len());
        for (name, balance) in self.names.iter().zip(&self.balances) {
            let _ = writeln!(text, "{name} {balance}");
        }
        for &(src, dst) in &self.links {
            let _ = writeln!(text, "{} {}", self.names[src], self.names[dst]);
        }
        text
    }
}

/// One scripted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `src` sends `amount` to `dst` now.
    Send { src: usize, dst: usize, amount: u64 },
    /// `branch` starts the next snapshot now.
    Snapshot { branch: usize },
    /// Advance this many ticks.
    Tick(u64),
    /// The link `src -> dst` fails now and is re-established at once.
    Cut { src: usize, dst: usize },
}

impl Event {
    /// The event as a script line.
    pub fn to_line(self, topology: &Topology) -> String {
        match self {
            Event::Send { src, dst, amount } => format!(
                "send {} {} {amount}",
                topology.names[src], topology.names[dst]
            ),
            Event::Snapshot { branch } => format!("snapshot {}", topology.names[branch]),
            Event::Tick(1) => "tick".to_string(),
            Event::Tick(n) => format!("tick {n}"),
            Event::Cut { src, dst } => {
                format!("cut {} {}", topology.names[src], topology.names[dst])
            }
        }
    }
}

/// An event script: events with the line each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// `(line number, event)`, in order.
    pub events: Vec<(usize, Event)>,
}

impl Script {
    /// Parses an event script's text against `topology`; `file` names it in errors.
    pub fn parse(file: &str, text: &str, topology: &Topology) -> Result<Self, SimError> {
        let mut events = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: String| SimError::at(file, number, reason);
            let lookup = |name: &str| {
                topology
                    .index(name)
                    .ok_or_else(|| error(format!("unknown branch {name:?}")))
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let event = match fields[..] {
                ["send", src, dst, amount] => Event::Send {
                    src: lookup(src)?,
                    dst: lookup(dst)?,
                    amount: amount
                        .parse()
                        .map_err(|_| error(format!("bad amount {amount:?}")))?,
                },
                ["snapshot", name] => Event::Snapshot {
                    branch: lookup(name)?,
                },
                ["cut", src, dst] => {
                    let (src, dst) = (lookup(src)?, lookup(dst)?);
                    if !topology.links.contains(&(src, dst)) {
                        return Err(error(format!(
                            "there is no link {} -> {} to cut",
                            topology.names[src], topology.names[dst]
                        )));
                    }
                    Event::Cut { src, dst }
                }
                ["tick"] => Event::Tick(1),
                ["tick", n] => Event::Tick(
                    n.parse()
                        .map_err(|_| error(format!("bad tick count {n:?}")))?,
                ),
                _ => {
                    return Err(error(format!(
                        "expected `send <src> <dst> <amount>`, `snapshot <name>`, `tick [n]` or `cut <src> <dst>`, found {line:?}"
                    )));
                }
            };
            events.push((number, event));
        }
        Ok(Self { events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topology_with_comments() {
        let text = "# ring\n3\na 10\nb 20\nc 0\n# links\na b\nb c\nc a\n";
        let topology = Topology::parse("t", text).unwrap();
        assert_eq!(topology.names, ["a", "b", "c"]);
        assert_eq!(topology.balances, [10, 20, 0]);
        assert_eq!(topology.links, [(0, 1), (1, 2), (2, 0)]);
        assert_eq!(Topology::parse("t", &topology.to_text()).unwrap(), topology);
    }

    #[test]
    fn topology_errors_name_the_line() {
        let cases = [
            ("x\n", "t:1: expected the number of branches"),
            ("2\na 1\n", "t: expected 2 branches, found 1"),
            ("2\na 1\nb -3\n", "t:3: bad balance"),
            ("2\na 1\na 2\n", "t:3: duplicate branch name"),
            ("2\na 1\nb 2\na c\n", "t:4: unknown branch \"c\""),
            ("2\na 1\nb 2\na a\n", "t:4: a link from \"a\" to itself"),
            ("2\na 1\nb 2\na b\n\na b\n", "t:6: duplicate link a -> b"),
            ("2\na 1\nb 2\na b c\n", "t:4: expected a link"),
        ];
        for (text, expected) in cases {
            let err = Topology::parse("t", text).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn script_errors_name_the_line() {
        let topology = Topology::parse("t", "2\na 1\nb 2\na b\n").unwrap();
        let script =
            Script::parse("e", "send a b 1\n\ntick 3\nsnapshot b\ntick\n", &topology).unwrap();
        assert_eq!(
            script.events,
            [
                (
                    1,
                    Event::Send {
                        src: 0,
                        dst: 1,
                        amount: 1
                    }
                ),
                (3, Event::Tick(3)),
                (4, Event::Snapshot { branch: 1 }),
                (5, Event::Tick(1)),
            ]
        );
        for (text, expected) in [
            ("send a z 1\n", "e:1: unknown branch \"z\""),
            ("tick\nsend a b x\n", "e:2: bad amount"),
            ("tick -1\n", "e:1: bad tick count"),
            ("jump\n", "e:1: expected `send"),
        ] {
            let err = Script::parse("e", text, &topology).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }
}
